"""The entry points: `default_env` (the plugin, main, inprocess, the CLI), `trainer_init` (the trainers, in verl's
TaskRunner), `prepare` (main, inprocess, consolidate), `doctor` (`randopt-verl doctor`), `run_dir`, and the exit
statuses (see the package's doc)."""

from __future__ import annotations

import os
import sys
from typing import Sequence

from randopt_verl.config.errors import ConfigError
from randopt_verl.preflight.composition import compose, with_hardware_default
from randopt_verl.preflight.config_checks import config_report
from randopt_verl.preflight.install_checks import install_report
from randopt_verl.preflight.machine_checks import machine_report
from randopt_verl.preflight.report import Result

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_MACHINE = 3


def default_env() -> None:
    """Environment every entry point runs with: set by randopt_verl.main and inprocess before Ray starts, and by the
    plugin in every process verl starts (so verl's own entry point has it before its ray.init too). Ray's token
    auth and wandb both want the network; tokenizers' thread pool fights Ray's fork. (The metrics path is the
    trainers' own: GRPOTrainer.fit points verl's file logger at the run directory, randopt/es write theirs.)"""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_dir(config) -> str:
    """Where the run's files go: randopt.run_dir / es.run_dir, else trainer.default_local_dir."""
    mode = config.trainer.v1.trainer_mode
    node = config.get(mode) if mode in ("randopt", "es") else None
    return str(node.run_dir) if node is not None and node.get("run_dir") else str(config.trainer.default_local_dir)


def trainer_init(config) -> None:
    """The trainers' hook (their __init__, in verl's TaskRunner): the checks and runtime defaults, whatever entry
    point composed the config."""
    from randopt_verl import validate

    validate.check(config)
    default_env()


def prepare(config) -> None:
    """What randopt_verl.main and inprocess run before Ray starts: the config and install checks of doctor,
    raising the first failure as one ConfigError line."""
    for result in config_report(config, call_reward=False) + install_report(config):
        if result.status == "fail":
            raise ConfigError(f"{result.name}: {result.detail}")


def doctor(overrides: Sequence[str], *, config_only: bool = False, out=sys.stdout) -> int:
    """Print the checklist for `python -m randopt_verl.main OVERRIDES`; returns the exit status (see the package's doc)."""
    overrides = with_hardware_default(overrides)
    print(f"randopt-verl doctor: python -m randopt_verl.main {' '.join(overrides)}", file=out)
    try:
        config = compose(overrides)
    except ConfigError as exc:
        print(Result("compose the config", "fail", str(exc)).line(), file=out)
        return EXIT_CONFIG
    results = config_report(config)
    install = [] if config_only else install_report(config) + machine_report(config)
    for r in results + install:
        print(r.line(), file=out)
    if any(r.status == "fail" for r in results):
        print("randopt-verl doctor: config errors above; the run would stop before Ray starts", file=out)
        return EXIT_CONFIG
    if any(r.status == "fail" for r in install):
        print("randopt-verl doctor: the config is fine; this machine is not ready (see the fixes above)", file=out)
        return EXIT_MACHINE
    what = "the config checks pass" if config_only else "the run would start"
    print(f"randopt-verl doctor: {what} (trainer={config.trainer.v1.trainer_mode}, "
          f"rollout={config.actor_rollout_ref.rollout.name}, {run_dir(config)})", file=out)
    return EXIT_OK
