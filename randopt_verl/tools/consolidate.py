"""`randopt-verl consolidate RUN_DIR`: merge a finished RandOpt run's experts into one model, after the fact.

    randopt-verl consolidate RUN_DIR [--out DIR] [--dtype fp32|bf16] [randopt.consolidate.KEY=VALUE ...]   # any CPU

The run's own resolved config (its manifest) is run again through the same trainer, in this process, with
``randopt.consolidate.enabled=true`` (plus the given ``randopt.consolidate.*`` settings): the search resumes with
nothing left to score (every candidate, test answer and control is in the ledgers), so only the consolidation phase
(the RandOpt trainer's `_consolidate`, over randopt_verl.core.merge) runs, and results.json is rewritten with the consolidated model, its shuffled
control, the intervals and the diagnostics. Hardware: what the run used (the manifest's config names it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from randopt_verl.core.rundir import RunDir

PREFIX = "randopt.consolidate."


def consolidation_config(run_dir: str | os.PathLike, overrides: Sequence[str] = ()):
    """The run's config with the consolidation enabled and ``overrides`` (``randopt.consolidate.KEY=VALUE``) applied,
    pointed at ``run_dir`` wherever it now lives; checked before anything starts."""
    import yaml
    from omegaconf import OmegaConf

    from randopt_verl.config.schema import typed

    run = RunDir(run_dir)
    if not run.manifest_path.exists():
        raise FileNotFoundError(f"{run.manifest_path} not found: {run_dir} is not a RandOpt run directory")
    if not run.topk_path.exists():
        raise FileNotFoundError(f"{run.topk_path} not found: the search in {run_dir} has not finished; resume it "
                                "first (or run it with randopt.consolidate.enabled=true)")
    config = run.config() or {}
    if (config.get("trainer", {}).get("v1", {}) or {}).get("trainer_mode") != "randopt":
        raise ValueError(f"{run_dir} is not a RandOpt run (its config's trainer.v1.trainer_mode is not randopt)")
    cfg = OmegaConf.create(config)
    OmegaConf.update(cfg, PREFIX + "enabled", True, force_add=True)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith(PREFIX):
            raise ValueError(f"{item!r}: only {PREFIX}KEY=VALUE settings can change here (the search is fixed by "
                             "its manifest)")
        OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)
    OmegaConf.update(cfg, "randopt.run_dir", str(Path(run_dir).resolve()), force_add=True)
    typed(cfg, "randopt")  # a bad setting: one line (ConfigError), before Ray starts
    return cfg


def consolidate(run_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the consolidation phase on a finished run directory; returns its new results.json."""
    from randopt_verl import preflight
    from randopt_verl.inprocess import trainer_session

    cfg = consolidation_config(run_dir, overrides)
    preflight.prepare(cfg)  # the checks randopt_verl.main runs before Ray starts
    os.environ.setdefault("RAY_ADDRESS", "local")  # a Ray cluster of its own, never another one on the machine
    with trainer_session(cfg) as trainer:
        trainer.fit(None)
    return RunDir(run_dir).results()
