"""Export one expert of a finished RandOpt search as a plain Hugging Face checkpoint.

    randopt-verl export RUN_DIR --rank 1 --out DIR [--model-path P] [--force]     # any CPU

An expert is (seed, sigma) on top of the base model; nothing else is stored. `export_expert` rebuilds its weights
the way the rollout does: the base checkpoint loaded in fp32, then ``perturb_module_`` (randopt_verl.core.population)
with the run's parameter filter, so every selected parameter becomes ``base + sigma * noise(seed, name)`` computed
in fp32, a tied weight perturbed once under its canonical name. The result is written with ``save_pretrained``
(fp32 safetensors, config, generation_config) plus the tokenizer, so ``AutoModelForCausalLM.from_pretrained(DIR)``
and vLLM load it like any other model, and ``randopt_expert.json`` beside it records where it came from.

Precision: the checkpoint is fp32, bit for bit the weights the CPU (hf) rollout scored. Loading it with
``dtype=torch.bfloat16`` gives bit for bit the weights a bf16 rollout (vLLM) scored, because a bf16 base widens to
fp32 exactly and the sum is rounded to bf16 once in both cases.

Refused, with the reason: no ``topk.json`` yet (the search has not finished), a rank outside 1..K, an output
directory that exists and is not empty (unless ``force``), a run whose noise definition differs from the installed
``noise.NOISE_SPEC`` (the expert cannot be rebuilt exactly), and a base checkpoint whose fingerprint differs from
the one the search ran on (the expert would be a different model).

Memory: the fp32 model plus one parameter (4 bytes per parameter: ~28 GB for 7B). Instead of a full pristine
snapshot, the pristine copy handed to ``perturb_module_`` is a view of each parameter as loaded; every parameter is
read once, just before it is overwritten with a new tensor, so the result is the same as with
``snapshot_parameters(model)`` at half the memory.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from randopt_verl.core import noise
from randopt_verl.core.population import Candidate, ParamFilter, perturb_module_
from randopt_verl.core.rundir import RunDir, atomic_write_json, fingerprint_files, model_files, read_json

log = logging.getLogger(__name__)

EXPERT_RECORD = "randopt_expert.json"
EXPERT_FORMAT = "randopt_verl.expert/1"
# weight files of an HF checkpoint: removed from an existing output directory (force) so that a stale shard or
# shard index from an earlier export can never be loaded together with the new weights
_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json")


class _ParametersAsLoaded(Mapping):
    """The pristine weights for ``perturb_module_`` without a copy: each selected parameter as it is now.

    Valid because ``perturb_module_`` visits every (deduplicated) parameter once and replaces it with a newly
    computed tensor after reading it, so each value read here is still the loaded base value.
    """

    def __init__(self, module: torch.nn.Module, param_filter: ParamFilter):
        self._params = {n: p for n, p in module.named_parameters() if param_filter.selects(n, p)}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._params[name].detach()

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)


def _read_run(run_dir: Path) -> tuple[dict, dict]:
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    run = RunDir(run_dir)
    mpath, tpath = run.manifest_path, run.topk_path
    if not mpath.exists():
        raise FileNotFoundError(f"{mpath} not found: {run_dir} is not a RandOpt run directory")
    if not tpath.exists():
        raise FileNotFoundError(
            f"{tpath} not found: the search in {run_dir} has not finished yet (topk.json is written once every "
            "candidate is scored). Resume the run to finish it, then export."
        )
    return read_json(mpath), read_json(tpath)


def _expert(topk: Mapping[str, Any], rank: int, tpath: Path) -> dict:
    experts = list(topk.get("experts") or [])
    if not experts:
        raise ValueError(f"{tpath} lists no experts")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= len(experts):
        raise ValueError(f"rank {rank!r} is out of range: {tpath} has {len(experts)} experts, ranks 1..{len(experts)}")
    by_rank = {int(e.get("rank", i + 1)): e for i, e in enumerate(experts)}
    if rank not in by_rank:
        raise ValueError(f"{tpath} has no expert with rank {rank} (ranks listed: {sorted(by_rank)})")
    return dict(by_rank[rank])


def _check_out_dir(out_dir: Path, force: bool, protected: list[Path]) -> None:
    resolved = out_dir.resolve()
    for p in protected:
        rp = p.resolve()
        if resolved == rp or rp.is_relative_to(resolved):
            raise ValueError(f"output directory {out_dir} is (or contains) {p}; pick another output directory")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"output path {out_dir} exists and is not a directory; pick another")
        if any(out_dir.iterdir()) and not force:
            raise ValueError(
                f"output directory {out_dir} exists and is not empty; pick another one, or pass --force "
                "(force=True) to write into it (its weight files are replaced)"
            )


def export_expert(
    run_dir: str | os.PathLike,
    rank: int,
    out_dir: str | os.PathLike,
    *,
    model_path: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Write the rank-``rank`` expert (1-based, as in topk.json) of the run in ``run_dir`` to ``out_dir``.

    ``model_path`` overrides the base model path recorded in the manifest (a run moved to another machine); the
    base checkpoint found there must have the fingerprint the search recorded. Returns ``out_dir``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = RunDir(run_dir)
    manifest, topk = _read_run(run_dir)
    expert = _expert(topk, rank, run.topk_path)

    identity = manifest.get("identity") or {}
    spec = identity.get("noise_spec_version")
    if spec != noise.NOISE_SPEC:
        raise ValueError(
            f"{run.manifest_path} records noise spec {spec!r}, but the installed randopt_verl defines "
            f"{noise.NOISE_SPEC!r}: the expert cannot be rebuilt exactly with this version. Install the "
            "randopt_verl version the search ran with."
        )

    config = manifest.get("config") or {}
    if model_path is None:
        try:
            model_path = config["actor_rollout_ref"]["model"]["path"]
        except (KeyError, TypeError):
            raise ValueError(
                f"{run.manifest_path} does not record the base model path (config.actor_rollout_ref.model.path); "
                "pass it with --model-path"
            ) from None
    model_path = Path(os.path.expanduser(str(model_path)))
    if not model_path.is_dir():
        raise FileNotFoundError(f"base model directory {model_path} does not exist; pass the base checkpoint "
                                "with --model-path")
    pf = (config.get("randopt") or {}).get("param_filter")
    if pf is None:  # the same filter is part of the search identity
        pf = (identity.get("search") or {}).get("param_filter")
    if pf is None:
        raise ValueError(f"{run.manifest_path} records no parameter filter (config.randopt.param_filter): "
                         "cannot tell which parameters the expert perturbs")
    param_filter = ParamFilter.from_config(pf)

    _check_out_dir(out_dir, force, [model_path, run_dir])

    recorded = identity.get("model_fingerprint")
    if recorded:
        found = fingerprint_files(model_files(model_path))
        if found != recorded:
            raise ValueError(
                f"the base model at {model_path} is not the one the search ran on (fingerprint {found}, the run "
                f"recorded {recorded}): its expert would be a different model. Pass the exact base checkpoint "
                "with --model-path."
            )
    else:
        log.warning("%s records no model fingerprint; cannot check that %s is the searched base model",
                    run.manifest_path, model_path)

    candidate = Candidate(index=int(expert["index"]), seed=int(expert["seed"]), sigma=float(expert["sigma"]))
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    perturb_module_(model, candidate, param_filter, _ParametersAsLoaded(model, param_filter))
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))

    test_acc = None
    if run.results_path.exists():
        for e in read_json(run.results_path).get("experts") or []:
            if int(e.get("rank", -1)) == rank and int(e.get("index", -1)) == candidate.index:
                test_acc = e.get("test_acc")
    record = {
        "format": EXPERT_FORMAT,
        "created": time.time(),
        "run_dir": str(run_dir.resolve()),
        "rank": rank,
        "index": candidate.index,
        "seed": candidate.seed,
        "sigma": candidate.sigma,
        "noise_spec": noise.NOISE_SPEC,
        "param_filter": param_filter.to_dict(),
        "base_model_path": str(model_path.resolve()),
        "base_model_fingerprint": recorded,
        "dtype": "float32",
        "selection_score": expert.get("selection_score"),
        "selection_acc": expert.get("selection_acc"),
        "test_acc": test_acc,
        "topk_entry": expert,
    }

    def write(target: Path) -> None:
        model.save_pretrained(target)  # weights, config.json, generation_config.json
        tokenizer.save_pretrained(target)
        atomic_write_json(target / EXPERT_RECORD, record)  # last: its presence marks a complete export

    if out_dir.exists():  # force, or an empty directory
        for pattern in _WEIGHT_PATTERNS:
            for stale in out_dir.glob(pattern):
                stale.unlink()
        (out_dir / EXPERT_RECORD).unlink(missing_ok=True)
        write(out_dir)
    else:  # build beside it and rename, so an interrupted export never leaves a checkpoint that looks whole
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
        if tmp.exists():  # left by an earlier export of this process id that was killed
            shutil.rmtree(tmp)
        tmp.mkdir()  # honours the umask, unlike mkdtemp's 0700
        try:
            write(tmp)
            os.replace(tmp, out_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return out_dir
