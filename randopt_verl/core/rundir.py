"""The run directory: every file a run writes, their names, the index conventions and the run's identity.

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
    results.json       RandOpt: the final results (atomic rewrite; schema in `randopt_verl.core.vote`)
    metrics.jsonl      every method: one {"step", "data"} row per logged step (verl's file-logger format), with
                       the cumulative cost counters (ES and RandOpt append it themselves; GRPO's verl file logger
                       is pointed here by the GRPO trainer)
    es_iterations.jsonl ES: one row per update (seeds, rewards, z, alpha), enough to recompute it
    global_step_N/     verl's checkpoints (ES, GRPO); GRPO adds cost.json there: the cost counters as of step N
    density.png, maj_at_k.png   RandOpt's plots (randopt_verl.tools.plots)
    accuracy_vs_n.png  RandOpt with randopt.accuracy_vs_n: the top-k votes against N, from prefixes of the ledger
    consolidated.json  RandOpt with randopt.consolidate: the consolidation's plan and choice (members, weights,
                       every merged model's terms, the chosen scales): enough to rebuild the merged model
                       (randopt_verl.trainers.consolidate; `randopt-verl export --consolidated`)
    consolidation_ledger.jsonl       the merged models' selection-set evaluations (index: the model's number in
                                     consolidated.json)
    consolidation_test_ledger.jsonl  the chosen merged models' test-set answers (same indices)
    config.json        GRPO: the full resolved config (RandOpt and ES keep it in manifest.json); `compare` reads it

Index conventions (ledger and test ledger)
------------------------------------------
Candidate ``i`` of the population has index ``i >= 0``. `BASE` (-1) is the base model's greedy evaluation;
`base_sample_index(s)` (-2 - s) is the base model's s-th sampled answer set (base self-consistency). A row with
index ``i >= n_candidates`` belongs to a larger population of an earlier start and is ignored by `finished`.

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
carries its ``seed`` and ``sigma``, and `verify_rows` checks them against the population being resumed:
a population whose candidate ``i`` moved is refused instead of silently mixed.

The ``config`` part (the full resolved config) is informational: it is written at creation and never
compared, so changing e.g. logging or the number of rollout replicas does not block a resume.

Fingerprints
------------
`fingerprint_files` hashes the *full bytes* of every file (sha256, streamed in 8 MiB blocks), plus each
file's name and size. Measured on this project's 2-core CPU machine (SHA-NI, file in page cache): 0.43-0.55 s
per 500 MB with a bare hashlib loop, 0.7-1.3 s per 500 MB through `fingerprint_files`, i.e. roughly 20-40 s
for a 7B bf16 checkpoint (15 GB), paid once per start or resume of a search that runs for hours.
A cheaper "config + safetensors header + sizes" fingerprint was rejected: a fine-tuned checkpoint of the
same architecture has exactly the same header and sizes, and telling it apart from its base model is the
point of the fingerprint. `model_files` lists the files of an HF model directory that can change results
(weights, configs, tokenizer and chat template).

`hash_rows` hashes a list of JSON-serialisable rows (the selection or test set) in order, canonically (sorted
keys, numpy scalars/arrays converted), so the same parquet rows give the same hash on any machine.

JSONL files
-----------
One reader and one writer for every JSONL file here. `append_jsonl` writes one line with a single ``write`` on an
``O_APPEND`` descriptor and ``fsync``s it before returning: a row counts only once it is on disk. `read_jsonl` is
tolerant: it ignores a torn final line (a writer killed mid-write) and skips, reporting them, complete lines that
are not JSON objects. `keep_until` rewrites a file atomically keeping the rows up to a step (a resume from a
checkpoint drops the rows of the steps that will run again).

`Ledger` adds to that: its first append of a process takes an exclusive ``flock`` (a second trainer on the same
run directory fails with `LedgerBusy`) and cuts off a torn final line, so the next row never glues onto it;
`Ledger.read` also skips rows without an integer ``index`` and de-duplicates by index, first row wins. A skipped
or dropped row only means that candidate is evaluated again, which is safe.

Ledger row (built by `candidate_row`)::

    {"index": int, "seed": int, "sigma": float,
     "score": float,      # mean reward over the n prompts (errored samples count 0)
     "acc": float,        # mean acc over the n prompts (errored samples count 0)
     "n": int, "n_errors": int,
     "errors": [{"prompt": int, "error": str}, ...],   # first MAX_ERRORS_KEPT
     "tokens": int, "wall_s": float, "time": float (unix),
     # optional, keep_per_prompt=True:
     "scores": [float], "accs": [float], "preds": [str | null],
     ... caller's extra fields}

A sample's score, acc, pred and error come from `randopt_verl.core.vote.normalise_reward`. ``wall_s`` is the row's
share of the cost definition's wall time (see `randopt_verl.trainers.harness`), so the ledger replays the cost of
a resumed run.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

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

BASE = -1  # ledger index of the base model's greedy evaluation


def base_sample_index(s: int) -> int:
    """Test-ledger index of the base model's s-th sampled answer set (base self-consistency)."""
    return -2 - int(s)


def base_sample_number(index: int) -> int:
    """The sample number s of test-ledger index ``base_sample_index(s)``."""
    return -2 - int(index)


MAX_ERRORS_KEPT = 20
_HASH_BLOCK = 8 << 20


# --------------------------------------------------------------------------------------------- JSON


def _json_default(obj: Any) -> Any:
    """numpy scalars/arrays, paths, sets and tuples to plain JSON; anything else is a TypeError."""
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finite(obj: Any) -> Any:
    """NaN and infinities to None (JSON has no such numbers), recursively through dicts and lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so that readers see the old file or the new one, never a part.

    Serialises first (a TypeError leaves the old file untouched), writes a temporary file in the same
    directory, fsyncs it, ``os.replace``s it over ``path`` and fsyncs the directory. Non-finite floats
    are written as ``null`` (strict JSON has no NaN).
    """
    path = Path(path)
    text = json.dumps(_finite(_plain(obj)), indent=2, ensure_ascii=False, default=_json_default, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# -------------------------------------------------------------------------------------------- JSONL


def _line(row: Any) -> bytes:
    """One compact strict-JSON line (a NaN raises ValueError: JSON has no such number)."""
    return (json.dumps(row, separators=(",", ":"), ensure_ascii=False, default=_json_default, allow_nan=False)
            + "\n").encode()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def append_jsonl(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append one row as a line and fsync it before returning (non-finite floats are written as null)."""
    data = _line(_finite(row))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


@dataclass
class JsonlContents:
    rows: list[dict]  # the JSON objects, in file order
    linenos: list[int] = field(default_factory=list)  # the 1-based line number of each row
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of complete lines that are not objects
    torn_tail: bool = False  # bytes after the last newline were ignored


def _parse_jsonl(data: bytes) -> JsonlContents:
    lines = data.split(b"\n")
    out = JsonlContents(rows=[], torn_tail=bool(lines[-1].strip()))
    for lineno, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = None
        if isinstance(row, dict):
            out.rows.append(row)
            out.linenos.append(lineno)
        else:
            out.bad_lines.append(lineno)
    return out


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON-object rows of a JSONL file ([] if it does not exist); a torn final line is ignored, other
    unreadable lines are skipped with a warning."""
    try:
        contents = _parse_jsonl(Path(path).read_bytes())
    except FileNotFoundError:
        return []
    if contents.bad_lines:
        log.warning("%s: lines %s are not JSON objects; skipped", path, contents.bad_lines)
    return contents.rows


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """Replace a JSONL file by ``rows`` atomically (readers see the old file or the new one) and durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(b"".join(_line(_finite(r)) for r in rows))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def keep_until(path: str | os.PathLike, key: str, last: int) -> list[dict]:
    """Atomically rewrite a JSONL file keeping the rows with ``row[key] <= last`` (a resume from the checkpoint of
    step ``last`` drops the rows of the steps that run again); returns the kept rows."""
    if not Path(path).exists():
        return []
    kept = [r for r in read_jsonl(path) if isinstance(r.get(key), int) and r[key] <= last]
    write_jsonl(path, kept)
    return kept


# ------------------------------------------------------------------------------------- fingerprints

_MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".jinja", ".tiktoken", ".gguf")
_MODEL_SKIP = {"readme.md", "license", "license.txt", ".gitattributes"}


def model_files(model_dir: str | os.PathLike) -> list[Path]:
    """The files of an HF model directory that can change results: weights, configs, tokenizer, template.

    Top level only (HF layout), sorted; skips README/LICENSE and hidden files.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    out = [
        p
        for p in sorted(model_dir.iterdir())
        if p.is_file()
        and not p.name.startswith(".")
        and p.name.lower() not in _MODEL_SKIP
        and p.name.lower().endswith(_MODEL_SUFFIXES)
    ]
    if not out:
        raise FileNotFoundError(f"no model files (weights, config, tokenizer) in {model_dir}")
    return out


def fingerprint_files(paths: Iterable[str | os.PathLike]) -> str:
    """``"sha256:<hex>"`` over every file's name, size and full bytes (streamed), sorted by name.

    Names are base names, so the same checkpoint copied to another directory has the same fingerprint.
    Two files with the same base name are an error (ambiguous order). See the module docstring for why
    the full bytes are hashed.
    """
    files = sorted((Path(p) for p in paths), key=lambda p: p.name)
    names = [p.name for p in files]
    if len(set(names)) != len(names):
        raise ValueError(f"fingerprint_files: duplicate file names in {names}")
    if not files:
        raise ValueError("fingerprint_files: no files given")
    total = hashlib.sha256()
    for p in files:
        h = hashlib.sha256()
        size = 0
        with open(p, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                h.update(block)
                size += len(block)
        total.update(f"{p.name}\0{size}\0{h.hexdigest()}\n".encode())
    return "sha256:" + total.hexdigest()


def hash_rows(rows: Iterable[Any]) -> str:
    """``"sha256:<hex>"`` of the rows in order, each as canonical JSON (sorted keys) on its own line."""
    h = hashlib.sha256()
    n = 0
    for row in rows:
        h.update(_canonical(row).encode())
        h.update(b"\n")
        n += 1
    h.update(f"#rows={n}".encode())
    return "sha256:" + h.hexdigest()


# ----------------------------------------------------------------------------------------- manifest


class ManifestMismatch(ValueError):
    """The run directory was created for a different search; resuming would mix incomparable rows."""

    def __init__(self, run_dir: Path, diffs: list[tuple[str, Any, Any]]):
        self.run_dir = run_dir
        self.diffs = diffs
        lines = [
            f"run directory {run_dir} was created for a different search; refusing to resume "
            f"(its ledger rows would be mixed with rows scored under other settings). Differences:"
        ]
        for key, old, new in diffs:
            lines.append(f"  {key}: old {_show(old)} -> new {_show(new)}")
        lines.append(
            "Fix: point the run at a new (or empty) run directory to start a new search, or restore the "
            "old values above to resume this one."
        )
        super().__init__("\n".join(lines))


class TestSetChanged(ManifestMismatch):
    """The test set or its generation settings changed while the run directory holds test answers for the old one."""

    __test__ = False  # not a pytest test class

    def __init__(self, run_dir: Path, diffs: list[tuple[str, Any, Any]]):
        self.run_dir = run_dir
        self.diffs = diffs
        lines = [f"run directory {run_dir} holds test answers for another test set or test settings; refusing to "
                 f"reuse them. Differences:"]
        lines += [f"  {key}: old {_show(old)} -> new {_show(new)}" for key, old, new in diffs]
        lines.append(f"Fix: delete {run_dir / TEST_LEDGER} to answer the new test set (the search's {LEDGER} is kept "
                     "and not re-run), or restore the old values above.")
        ValueError.__init__(self, "\n".join(lines))


_ABSENT = object()


def _show(v: Any) -> str:
    if v is _ABSENT:
        return "<absent>"
    s = _canonical(v)
    return s if len(s) <= 200 else s[:197] + "..."


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    fo, fn = _flatten(old), _flatten(new)
    return [
        (k, fo.get(k, _ABSENT), fn.get(k, _ABSENT))
        for k in sorted(set(fo) | set(fn))
        if fo.get(k, _ABSENT) != fn.get(k, _ABSENT)
    ]


def _plain(obj: Any) -> Any:
    """Round-trip through JSON so tuples/lists and numpy/python numbers compare as they are stored."""
    return json.loads(json.dumps(obj, default=_json_default))


# ------------------------------------------------------------------------------------------- ledger


class LedgerBusy(RuntimeError):
    """Another process holds the ledger's write lock (a second trainer on the same run directory)."""


@dataclass
class LedgerContents:
    rows: list[dict]  # de-duplicated, in file order
    duplicates: list[dict] = field(default_factory=list)  # later rows whose index was already seen
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of unparseable complete lines
    torn_tail: bool = False  # bytes after the last newline were ignored

    @property
    def by_index(self) -> dict[int, dict]:
        return {r["index"]: r for r in self.rows}


class Ledger:
    """Append-only JSONL of finished candidate evaluations. See the module docstring."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    # -- writing
    def _open_for_append(self) -> int:
        if self._fd is not None:
            return self._fd
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise LedgerBusy(
                    f"{self.path} is locked by another process: is a second run using this run directory?"
                ) from e
            raise
        self._repair_tail(fd)
        _fsync_dir(self.path.parent)
        self._fd = fd
        return fd

    def _repair_tail(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            # find the last newline, scanning back in blocks
            pos, keep = size, 0
            while pos > 0:
                start = max(0, pos - 65536)
                f.seek(start)
                block = f.read(pos - start)
                i = block.rfind(b"\n")
                if i >= 0:
                    keep = start + i + 1
                    break
                pos = start
        log.warning("ledger %s: cutting off a torn final line (%d bytes) left by an interrupted write",
                    self.path, size - keep)
        os.ftruncate(fd, keep)
        os.fsync(fd)

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row and fsync it; the row counts only once this returns."""
        if not isinstance(row.get("index"), int) or isinstance(row.get("index"), bool):
            raise ValueError(f"ledger row needs an integer 'index', got {row.get('index')!r}")
        data = _line(row)  # strict: a NaN in a ledger row is a bug upstream, not a row
        _write_all(self._open_for_append(), data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also releases the flock
            self._fd = None

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- reading
    def read(self) -> LedgerContents:
        """All finished rows, tolerant of a torn tail and duplicates (see the module docstring)."""
        try:
            parsed = _parse_jsonl(self.path.read_bytes())
        except FileNotFoundError:
            return LedgerContents(rows=[])
        out = LedgerContents(rows=[], bad_lines=parsed.bad_lines, torn_tail=parsed.torn_tail)
        seen: set[int] = set()
        for lineno, row in zip(parsed.linenos, parsed.rows):
            idx = row.get("index")
            if not isinstance(idx, int) or isinstance(idx, bool):
                out.bad_lines.append(lineno)  # a JSON object without an integer index
                continue
            if idx in seen:
                out.duplicates.append(row)
                continue
            seen.add(idx)
            out.rows.append(row)
        out.bad_lines.sort()
        if out.torn_tail or out.bad_lines or out.duplicates:
            log.warning(
                "ledger %s: torn tail ignored=%s, unreadable lines=%s, duplicate rows dropped=%s (first wins)",
                self.path, out.torn_tail, out.bad_lines, [r["index"] for r in out.duplicates],
            )
        return out


# ------------------------------------------------------------------------------------ ledger rows


def candidate_row(
    index: int,
    seed: int,
    sigma: float,
    samples: Sequence[Mapping[str, Any]],
    *,
    tokens: int,
    wall_s: float,
    keep_per_prompt: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """The ledger row of one candidate from its per-prompt `normalise_reward` outcomes (prompt order)."""
    n = len(samples)
    if n == 0:
        raise ValueError("candidate_row: no samples")
    errors = [{"prompt": i, "error": s["error"]} for i, s in enumerate(samples) if s.get("error")]
    row = {
        "index": int(index),
        "seed": int(seed),
        "sigma": float(sigma),
        "score": math.fsum(s["score"] for s in samples) / n,
        "acc": math.fsum(s["acc"] for s in samples) / n,
        "n": n,
        "n_errors": len(errors),
        "errors": errors[:MAX_ERRORS_KEPT],
        "tokens": int(tokens),
        "wall_s": float(wall_s),
        "time": time.time(),
    }
    if keep_per_prompt:
        row["scores"] = [s["score"] for s in samples]
        row["accs"] = [s["acc"] for s in samples]
        row["preds"] = [s.get("pred") for s in samples]
    if extra:
        clash = set(extra) & set(row)
        if clash:
            raise ValueError(f"candidate_row: extra fields {sorted(clash)} clash with the row's own")
        row.update(extra)
    return row


def verify_rows(rows: Iterable[Mapping[str, Any]], candidates: Any) -> None:
    """Check ledger rows against the population being resumed: ``candidates[index] -> (seed, sigma)``.

    Raises ``ValueError`` listing the rows whose (seed, sigma) differ (the population changed under the
    run: a new population seed, a new sampler, or one that is not prefix-stable). Rows whose index is
    outside ``candidates`` are not checked.
    """
    bad = []
    for r in rows:
        i = r["index"]
        try:
            seed, sigma = candidates[i]
        except (IndexError, KeyError):
            continue
        if int(seed) != r["seed"] or float(sigma) != r["sigma"]:
            bad.append(f"  candidate {i}: ledger (seed={r['seed']}, sigma={r['sigma']}) vs population "
                       f"(seed={int(seed)}, sigma={float(sigma)})")
    if bad:
        raise ValueError(
            "the ledger's candidates differ from the population being resumed:\n" + "\n".join(bad[:10])
            + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
            + "\nFix: use a new run directory, or restore the population settings this run was started with."
        )


# ------------------------------------------------------------------------------------------ run dir


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

    # -- file names
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def topk_path(self) -> Path:
        return self.path / TOPK

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    @property
    def consolidated_path(self) -> Path:
        return self.path / CONSOLIDATED

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def es_iterations_path(self) -> Path:
        return self.path / ES_ITERATIONS

    def checkpoint_cost_path(self, step: int) -> Path:
        """cost.json in verl's checkpoint folder of ``step`` (verl names it global_step_N)."""
        return self.path / f"global_step_{int(step)}" / CHECKPOINT_COST

    @property
    def plot_paths(self) -> tuple[Path, Path]:
        return self.path / DENSITY_PNG, self.path / MAJ_AT_K_PNG

    @property
    def accuracy_vs_n_plot_path(self) -> Path:
        return self.path / ACCURACY_VS_N_PNG

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
        identity, test_identity = _plain(dict(identity)), _plain(dict(test_identity or {}))
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
                "config": _plain(dict(config or {})),
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
        diffs = _diff(manifest["identity"], identity)
        if diffs:
            raise ManifestMismatch(path, diffs)
        changed = False
        test_diffs = _diff(manifest.get("test_identity") or {}, test_identity)
        if test_diffs:
            if run.test_ledger.read().rows:
                raise TestSetChanged(path, test_diffs)
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
            ledger.close()
            ledger.path.unlink(missing_ok=True)

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
