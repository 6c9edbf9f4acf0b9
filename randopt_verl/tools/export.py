"""Export one expert, or the consolidated model, of a finished RandOpt search as a plain Hugging Face checkpoint.

    randopt-verl export RUN_DIR --rank 1 --out DIR [--model-path P] [--force] [--dtype fp32|bf16]     # any CPU
    randopt-verl export RUN_DIR --consolidated --out DIR [--dtype fp32|bf16]

An expert is (seed, sigma) on top of the base model, a consolidated model a list of terms (seed, coeff) recorded in
consolidated.json (randopt_verl.core.merge); nothing else is stored. `export_expert` and
`export_consolidated` rebuild the weights the way the rollout does: the base checkpoint loaded in fp32, then
``perturb_module_`` (randopt_verl.core.population) with the run's parameter filter, so every selected parameter
becomes ``combined(base, terms)`` = ``base + sum coeff * noise(seed, name)`` computed in fp32, a tied weight
perturbed once under its canonical name; ``--dtype bf16`` then rounds the fp32 result once. The result is written with ``save_pretrained``
(fp32 safetensors, config, generation_config) plus the tokenizer, so ``AutoModelForCausalLM.from_pretrained(DIR)``
and vLLM load it like any other model, and ``randopt_expert.json`` beside it records where it came from.

Precision: the default checkpoint is fp32, bit for bit the weights an fp32 rollout scored. ``--dtype bf16`` (or
loading the fp32 one with ``dtype=torch.bfloat16``) gives bit for bit the weights a bf16 rollout (vLLM, the bf16 hf
engine) scored, because a bf16 base widens to fp32 exactly and the sum is rounded to bf16 once in every case.

Refused, with the reason: no ``topk.json`` yet (the search has not finished), a rank outside 1..K, an output
directory that exists and is not empty (unless ``force``), a run whose noise definition differs from the installed
``noise.NOISE_SPEC`` (the expert cannot be rebuilt exactly), and a base checkpoint whose fingerprint differs from
the one the search ran on (the expert would be a different model).

Memory: the fp32 model plus one parameter (4 bytes per parameter: ~28 GB for 7B). Instead of a full pristine
snapshot, the pristine copy handed to ``perturb_module_`` is a view of each parameter as loaded; every parameter is
read once, just before it is overwritten with a new tensor, so the result is the same as with a detached clone of
every parameter (the hf server's pristine copy) at half the memory.
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
from randopt_verl.core.population import Candidate, Merged, ParamFilter, perturb_module_
from randopt_verl.core.fingerprint import fingerprint_files, model_files
from randopt_verl.core.jsonio import atomic_write_json, read_json
from randopt_verl.core.rundir import RunDir

log = logging.getLogger(__name__)

EXPERT_RECORD = "randopt_expert.json"
EXPERT_FORMAT = "randopt_verl.expert/1"
CONSOLIDATED_RECORD = "randopt_consolidated.json"
CONSOLIDATED_FORMAT = "randopt_verl.consolidated_model/1"
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


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def _dtype(name: str) -> torch.dtype:
    if str(name) not in _DTYPES:
        raise ValueError(f"--dtype {name!r}: use fp32 or bf16")
    return _DTYPES[str(name)]


def _base_model(run: RunDir, manifest: Mapping[str, Any], model_path) -> tuple[Path, ParamFilter, Any]:
    """The checked base checkpoint, the run's parameter filter and its recorded fingerprint."""
    identity = manifest.get("identity") or {}
    spec = identity.get("noise_spec_version")
    if spec != noise.NOISE_SPEC:
        raise ValueError(
            f"{run.manifest_path} records noise spec {spec!r}, but the installed randopt_verl defines "
            f"{noise.NOISE_SPEC!r}: the model cannot be rebuilt exactly with this version. Install the "
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
                         "cannot tell which parameters the model perturbs")
    return model_path, ParamFilter.from_config(pf), identity.get("model_fingerprint")


def _check_fingerprint(run: RunDir, model_path: Path, recorded) -> None:
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


def _provenance(run_dir: Path, holder: Candidate | Merged, param_filter: ParamFilter, model_path: Path,
                fingerprint: Any, dtype: torch.dtype) -> dict[str, Any]:
    """The fields every export record carries: what rebuilds the weights anywhere (base, terms, noise spec, filter,
    dtype) and where they came from."""
    return {
        "created": time.time(),
        "run_dir": str(run_dir.resolve()),
        "terms": [list(t) for t in holder.terms()],
        "noise_spec": noise.NOISE_SPEC,
        "param_filter": param_filter.to_dict(),
        "base_model_path": str(model_path.resolve()),
        "base_model_fingerprint": fingerprint,
        "dtype": str(dtype).replace("torch.", ""),
    }


def _write_checkpoint(model_path: Path, holder: Candidate | Merged, param_filter: ParamFilter, dtype: torch.dtype,
                      out_dir: Path, force: bool, record_name: str, record: dict) -> Path:
    """Base (fp32) + the holder's terms (`population.combined`, via perturb_module_), then one cast to ``dtype``; saved
    with the tokenizer and the record (written last: its presence marks a complete export)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    perturb_module_(model, holder, param_filter, _ParametersAsLoaded(model, param_filter))
    if dtype != torch.float32:  # one rounding of the fp32 sum, as the bf16 rollouts round it
        model = model.to(dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))

    def write(target: Path) -> None:
        model.save_pretrained(target)  # weights, config.json, generation_config.json
        tokenizer.save_pretrained(target)
        atomic_write_json(target / record_name, record)

    if out_dir.exists():  # force, or an empty directory
        for pattern in _WEIGHT_PATTERNS:
            for stale in out_dir.glob(pattern):
                stale.unlink()
        (out_dir / record_name).unlink(missing_ok=True)
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


def export_expert(
    run_dir: str | os.PathLike,
    rank: int,
    out_dir: str | os.PathLike,
    *,
    model_path: str | os.PathLike | None = None,
    force: bool = False,
    dtype: str = "fp32",
) -> Path:
    """Write the rank-``rank`` expert (1-based, as in topk.json) of the run in ``run_dir`` to ``out_dir``.

    ``model_path`` overrides the base model path recorded in the manifest (a run moved to another machine); the
    base checkpoint found there must have the fingerprint the search recorded. ``dtype``: fp32 (the weights the fp32
    rollout scored) or bf16 (the fp32 sum rounded once: what a bf16 rollout scored). Returns ``out_dir``.
    """
    torch_dtype = _dtype(dtype)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = RunDir(run_dir)
    manifest, topk = _read_run(run_dir)
    expert = _expert(topk, rank, run.topk_path)
    model_path, param_filter, recorded = _base_model(run, manifest, model_path)
    _check_out_dir(out_dir, force, [model_path, run_dir])
    _check_fingerprint(run, model_path, recorded)

    candidate = Candidate(index=int(expert["index"]), seed=int(expert["seed"]), sigma=float(expert["sigma"]))
    test_acc = None
    if run.results_path.exists():
        for e in read_json(run.results_path).get("experts") or []:
            if int(e.get("rank", -1)) == rank and int(e.get("index", -1)) == candidate.index:
                test_acc = e.get("test_acc")
    record = {
        "format": EXPERT_FORMAT,
        **_provenance(run_dir, candidate, param_filter, model_path, recorded, torch_dtype),
        "rank": rank,
        "index": candidate.index,
        "seed": candidate.seed,
        "sigma": candidate.sigma,
        "selection_score": expert.get("selection_score"),
        "selection_acc": expert.get("selection_acc"),
        "test_acc": test_acc,
        "topk_entry": expert,
    }
    return _write_checkpoint(model_path, candidate, param_filter, torch_dtype, out_dir, force, EXPERT_RECORD, record)


def export_consolidated(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model_path: str | os.PathLike | None = None,
    force: bool = False,
    dtype: str = "fp32",
    variant: str = "weighted",
) -> Path:
    """Write the consolidated model of the run in ``run_dir`` (consolidated.json: the chosen merged model's terms) to
    ``out_dir``; ``variant="shuffled"`` writes its shuffled control instead. Same checks, precision and layout as
    `export_expert`, with a randopt_consolidated.json record."""
    torch_dtype = _dtype(dtype)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = RunDir(run_dir)
    if not run.manifest_path.exists():
        raise FileNotFoundError(f"{run.manifest_path} not found: {run_dir} is not a RandOpt run directory")
    rec = run.consolidated()
    if rec is None or variant not in (rec.get("chosen") or {}):
        raise FileNotFoundError(
            f"{run.consolidated_path} has no chosen {variant} model: the run has not been consolidated. Run "
            f"`randopt-verl consolidate {run_dir}` (or the search with randopt.consolidate.enabled=true) first.")
    if rec.get("noise_spec") != noise.NOISE_SPEC:
        raise ValueError(f"{run.consolidated_path} was built with noise spec {rec.get('noise_spec')!r}, the installed "
                         f"randopt_verl defines {noise.NOISE_SPEC!r}; install the version the run used")
    model = {m["index"]: m for m in rec["models"]}[rec["chosen"][variant]]
    holder = Merged.from_dict(model)
    model_path, param_filter, recorded = _base_model(run, read_json(run.manifest_path), model_path)
    _check_out_dir(out_dir, force, [model_path, run_dir])
    _check_fingerprint(run, model_path, recorded)
    results = run.results() or {}
    record = {
        "format": CONSOLIDATED_FORMAT,
        **_provenance(run_dir, holder, param_filter, model_path, recorded, torch_dtype),
        "variant": variant,
        "model_index": holder.index,
        "scale": model["scale"],
        "weighting": rec["weighting"],
        "over": rec["over"],
        "members": rec["members"],
        "results": results.get("consolidated"),
    }
    return _write_checkpoint(model_path, holder, param_filter, torch_dtype, out_dir, force, CONSOLIDATED_RECORD,
                             record)
