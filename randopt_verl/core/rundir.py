"""The run directory: every file a run writes, their names, and the run's identity (create or resume).

Plain data, no Ray, no verl. This module is the only place that knows a file name of a run directory; the
trainers write through `RunDir`, and the tools (compare, plots, export, demo) read through it. One directory per
run::

    manifest.json      identity of the run + the full resolved config (RandOpt and ES; see "Identity")
    ledger.jsonl       RandOpt: one row per finished selection-set evaluation (index -1: the base model)
    test_ledger.jsonl  RandOpt: one row per finished test-set evaluation (base, experts, control population,
                       base self-consistency samples)
    selection_blocks.jsonl  RandOpt with randopt.selection.strategy=halving: one row per (candidate, block of the
                       selection set) answered (index: `randopt_verl.core.halving.block_row_index`); the race is
                       replayed from it, and only survivors' joined rows enter ledger.jsonl
    dev_ledger.jsonl   RandOpt with randopt.sigma_choice=dev: each sigma's top-K answers to the dev split (the last
                       randopt.dev_size selection rows, held out of the search), by candidate index
    topk.json          RandOpt: the selected top-K (atomic rewrite)
    results.json       RandOpt: the final results (atomic rewrite; schema in `randopt_verl.core.results_schema`)
    metrics.jsonl      every method: one {"step", "data"} row per logged step (verl's file-logger format), with
                       the cumulative cost counters (ES and RandOpt append it themselves; GRPO's verl file logger
                       is pointed here by the GRPO trainer)
    es_iterations.jsonl ES: one row per update (seeds, rewards, z, alpha), enough to recompute it
    global_step_N/     verl's checkpoints (ES, GRPO); GRPO adds cost.json there: the cost counters as of step N
    density.png, maj_at_k.png   RandOpt's plots (randopt_verl.core.plots)
    accuracy_vs_n.png  RandOpt with randopt.accuracy_vs_n: the top-k votes against N, from prefixes of the ledger
    consolidated.json  RandOpt with randopt.consolidate: the consolidation's plan and choice (members, weights,
                       every merged model's terms, the chosen scales): enough to rebuild the merged model
                       (randopt_verl.core.merge; `randopt-verl export --consolidated`)
    consolidation_ledger.jsonl       the merged models' selection-set evaluations (index: the model's number in
                                     consolidated.json)
    consolidation_test_ledger.jsonl  the chosen merged models' test-set answers (same indices)
    config.json        GRPO: the full resolved config (RandOpt and ES keep it in manifest.json); `compare` reads it
    console.log        with console.quiet=true: Ray's and verl's output (randopt_verl.console)
    progress.jsonl     with console.quiet=true: the progress bars' events, from the trainer to the driver's terminal
                       (emptied at each start: only this run's progress)

Identity
--------
``RunDir.open(path, identity=..., test_identity=..., n_candidates=..., config=...)`` creates the directory and
writes ``manifest.json`` on the first call. ``identity`` is whatever defines the candidates and their scores (model
fingerprint, noise spec, selection-set hash, search settings, rollout backend, dtype and TP, reward); on every later
call it is compared with the stored one and a difference raises `ManifestMismatch` (a ``ValueError``) naming each
differing key (nested keys dotted, e.g. ``search.sigmas``) with its old and new value, and the two ways out: a new
run directory, or the old settings back.

``test_identity`` is what defines the test answers (test-set hash, their generation settings, the base samples'
temperature). It is kept apart so that a changed test set never silently reuses the old test answers and never
costs the search: when it differs and ``test_ledger.jsonl`` holds answers, `open` raises `TestSetChanged` naming
the keys, whose fix is to delete ``test_ledger.jsonl`` (the test answers are recomputed for the new test set; the
search's ledger is kept) or to restore the old values; when no test answer exists yet, the manifest simply takes
the new test identity.

**N is not identity.** The population is prefix-stable (candidate ``i``'s ``(seed, sigma)`` does not depend
on N), so a run may be resumed with a larger N (extend the search) or a smaller one (rows with
``index >= N`` stay in the ledger and are ignored by `RunDir.finished`). Pass N as ``n_candidates``, never
inside ``identity``. A change of N is the one thing that rewrites the manifest (``n_candidates`` and an entry
in ``n_candidates_history``). Because that argument rests on another module's promise, each ledger row also
carries its ``seed`` and ``sigma``, and `randopt_verl.core.ledger.verify_rows` checks them against the population
being resumed: a population whose candidate ``i`` moved is refused instead of silently mixed.

The ``config`` part (the full resolved config) is informational: it is written at creation and never
compared, so changing e.g. logging or the number of rollout replicas does not block a resume.

What else lives beside it: the ledgers and their index conventions (`BASE`, `base_sample_index`) in
`randopt_verl.core.ledger`, the identity comparison and its errors in `randopt_verl.core.manifest`, JSON and JSONL
file I/O in `randopt_verl.core.jsonio`, model and prompt-set fingerprints in `randopt_verl.core.fingerprint`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

from .jsonio import atomic_write_json, plain, read_json
from .ledger import Ledger
from .manifest import ManifestMismatch, TestSetChanged, diff_identity

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "randopt_verl.core.rundir/2"
MANIFEST = "manifest.json"
LEDGER = "ledger.jsonl"
SELECTION_BLOCKS = "selection_blocks.jsonl"
DEV_LEDGER = "dev_ledger.jsonl"
TEST_LEDGER = "test_ledger.jsonl"
TOPK = "topk.json"
RESULTS = "results.json"
METRICS = "metrics.jsonl"
ES_ITERATIONS = "es_iterations.jsonl"
CHECKPOINT_COST = "cost.json"  # GRPO: the cost counters in verl's global_step_N checkpoint folder
CONSOLIDATED = "consolidated.json"
CONSOLIDATION_LEDGER = "consolidation_ledger.jsonl"
CONSOLIDATION_TEST_LEDGER = "consolidation_test_ledger.jsonl"
CONFIG = "config.json"
DENSITY_PNG = "density.png"
MAJ_AT_K_PNG = "maj_at_k.png"
ACCURACY_VS_N_PNG = "accuracy_vs_n.png"
CONSOLE_LOG = "console.log"  # console.quiet=true
PROGRESS = "progress.jsonl"  # console.quiet=true


class _File:
    """A run-directory file as a read-only attribute of RunDir: its path under that run's directory."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, run: "RunDir | None", owner: type | None = None):
        return self if run is None else run.path / self.name  # on the class: the descriptor (its .name)


class RunDir:
    """A run directory: its file names, and (through `RunDir.open`) its identity. See the module docstring.

    ``RunDir(path)`` only names the files (the tools read finished runs that way); ``RunDir.open`` is how a trainer
    starts or resumes a run.
    """

    def __init__(self, path: str | os.PathLike, manifest: dict | None = None):
        self.path = Path(path)
        self.manifest = manifest
        self.ledger = Ledger(self.path / LEDGER)
        self.selection_blocks = Ledger(self.path / SELECTION_BLOCKS)
        self.dev_ledger = Ledger(self.path / DEV_LEDGER)
        self.test_ledger = Ledger(self.path / TEST_LEDGER)
        self.consolidation_ledger = Ledger(self.path / CONSOLIDATION_LEDGER)
        self.consolidation_test_ledger = Ledger(self.path / CONSOLIDATION_TEST_LEDGER)

    # -- file names: each a path under the run directory (`run.results_path` is `run.path / RESULTS`)
    manifest_path = _File(MANIFEST)
    topk_path = _File(TOPK)
    results_path = _File(RESULTS)
    consolidated_path = _File(CONSOLIDATED)
    config_path = _File(CONFIG)
    metrics_path = _File(METRICS)
    es_iterations_path = _File(ES_ITERATIONS)
    accuracy_vs_n_plot_path = _File(ACCURACY_VS_N_PNG)
    console_log_path = _File(CONSOLE_LOG)
    progress_path = _File(PROGRESS)

    def checkpoint_cost_path(self, step: int) -> Path:
        """cost.json in verl's checkpoint folder of ``step`` (verl names it global_step_N)."""
        return self.path / f"global_step_{int(step)}" / CHECKPOINT_COST

    @property
    def plot_paths(self) -> tuple[Path, Path]:
        return self.path / DENSITY_PNG, self.path / MAJ_AT_K_PNG

    @property
    def n_candidates(self) -> int | None:
        return None if self.manifest is None else self.manifest.get("n_candidates")

    # -- identity
    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        identity: Mapping[str, Any],
        test_identity: Mapping[str, Any] | None = None,
        n_candidates: int | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> "RunDir":
        """Create the run directory, or resume it if its identity matches (else `ManifestMismatch`, or
        `TestSetChanged` when only the test identity changed and test answers exist)."""
        path = Path(path)
        identity, test_identity = plain(dict(identity)), plain(dict(test_identity or {}))
        if n_candidates is not None and (not isinstance(n_candidates, int) or n_candidates < 1):
            raise ValueError(f"n_candidates must be a positive integer, got {n_candidates!r}")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        if not run.manifest_path.exists():
            if any(p.exists() and p.stat().st_size > 0 for p in (run.ledger.path, run.test_ledger.path,
                                                                   run.selection_blocks.path, run.dev_ledger.path,
                                                                   run.es_iterations_path)):
                raise ValueError(
                    f"{path} has a ledger but no {MANIFEST}: cannot tell what run it belongs to. "
                    "Fix: use a new run directory, or restore the manifest."
                )
            run.manifest = {
                "format": MANIFEST_FORMAT,
                "created": time.time(),
                "identity": identity,
                "test_identity": test_identity,
                "n_candidates": n_candidates,
                "n_candidates_history": [{"time": time.time(), "n_candidates": n_candidates}],
                "config": plain(dict(config or {})),
            }
            atomic_write_json(run.manifest_path, run.manifest)
            return run
        try:
            manifest = read_json(run.manifest_path)
        except json.JSONDecodeError as e:
            raise ValueError(f"{run.manifest_path} is not valid JSON ({e}); restore it or use a new run "
                             "directory") from e
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{run.manifest_path} has format {manifest.get('format')!r}, expected "
                             f"{MANIFEST_FORMAT!r} (written by another version of randopt_verl); use a new run "
                             "directory")
        diffs = diff_identity(manifest["identity"], identity)
        if diffs:
            raise ManifestMismatch(path, diffs)
        changed = False
        test_diffs = diff_identity(manifest.get("test_identity") or {}, test_identity)
        if test_diffs:
            if run.test_ledger.read().rows:
                raise TestSetChanged(path, test_diffs, test_ledger=run.test_ledger.path, ledger_name=LEDGER)
            log.info("run %s: no test answers yet; the manifest takes the new test identity", path)
            manifest["test_identity"] = test_identity
            changed = True
        if manifest["n_candidates"] != n_candidates:
            log.info("run %s: N %s -> %s (population is prefix-stable)", path, manifest["n_candidates"], n_candidates)
            manifest["n_candidates"] = n_candidates
            manifest["n_candidates_history"].append({"time": time.time(), "n_candidates": n_candidates})
            changed = True
        if changed:
            atomic_write_json(run.manifest_path, manifest)
        run.manifest = manifest
        return run

    # -- rows and results
    def finished(self) -> dict[int, dict]:
        """Finished candidate rows ``0 .. n_candidates-1`` by index (the ledger read, de-duplicated)."""
        n = self.n_candidates
        return {i: r for i, r in self.ledger.read().by_index.items() if i >= 0 and (n is None or i < n)}

    def write_topk(self, obj: Any) -> None:
        atomic_write_json(self.topk_path, obj)

    def write_results(self, obj: Any) -> None:
        atomic_write_json(self.results_path, obj)

    def results(self) -> dict | None:
        """results.json, or None before the run has finished."""
        return read_json(self.results_path) if self.results_path.exists() else None

    def write_consolidated(self, obj: Any) -> None:
        atomic_write_json(self.consolidated_path, obj)

    def consolidated(self) -> dict | None:
        """consolidated.json, or None when no consolidation ran."""
        return read_json(self.consolidated_path) if self.consolidated_path.exists() else None

    def reset_consolidation(self) -> None:
        """Drop the merged models' evaluations (their plan changed: they are computed again; the search is kept)."""
        for ledger in (self.consolidation_ledger, self.consolidation_test_ledger):
            ledger.delete()

    def write_config(self, config: Mapping[str, Any]) -> None:
        """config.json: the resolved config of a run that has no manifest (GRPO)."""
        atomic_write_json(self.config_path, config)

    def config(self) -> dict | None:
        """The run's resolved config: the manifest's (RandOpt, ES) or config.json's (GRPO); None if neither."""
        if self.manifest_path.exists():
            return (read_json(self.manifest_path) or {}).get("config")
        return read_json(self.config_path) if self.config_path.exists() else None

    def close(self) -> None:
        for ledger in (self.ledger, self.selection_blocks, self.dev_ledger, self.test_ledger,
                       self.consolidation_ledger, self.consolidation_test_ledger):
            ledger.close()
