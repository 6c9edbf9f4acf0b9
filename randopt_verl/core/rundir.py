"""The run directory: what a RandOpt search has written down (DESIGN decision 4).

Plain data, no Ray, no verl. One directory per search::

    manifest.json   identity of the search + the full resolved config (written once; see below)
    ledger.jsonl    one JSON line per *finished* candidate evaluation, append-only
    topk.json       the current top-K (atomic rewrite)
    results.json    the final results (atomic rewrite; schema in `randopt_verl.core.vote`)

Manifest and resume
-------------------
``RunDir.open(path, model_fingerprint=..., noise_spec_version=..., selection_set_hash=..., search=...,
n_candidates=..., config=...)`` creates the directory and writes ``manifest.json`` on the first call. On
every later call it compares the *identity* part

    {"model_fingerprint", "noise_spec_version", "selection_set_hash", "search": {...}}

with the stored one and raises `ManifestMismatch` (a ``ValueError``) naming each differing key (nested
keys dotted, e.g. ``search.sigmas``) with its old and new value, and the two ways out: a new run directory,
or the old settings back. ``search`` is whatever the caller says defines the candidates and their scores
(population seed, sigmas, parameter filter, generation settings, reward, prompt template...).

**N is not identity.** The population is prefix-stable (candidate ``i``'s ``(seed, sigma)`` does not depend
on N), so a run may be resumed with a larger N (extend the search) or a smaller one (rows with
``index >= N`` stay in the ledger and are ignored by `RunDir.finished`). Pass N as ``n_candidates``, never
inside ``search``. A change of N is the one thing that rewrites the manifest (``n_candidates`` and an entry
in ``n_candidates_history``). Because that argument rests on another module's promise, each ledger row also
carries its ``seed`` and ``sigma``, and `verify_rows` checks them against the population being resumed:
a population whose candidate ``i`` moved is refused instead of silently mixed.

The ``config`` part (the full resolved config) is informational: it is written at creation and never
compared, so changing e.g. logging or the number of rollout replicas does not block a resume. Anything
that changes which candidates exist or how they score belongs in ``search``.

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

`hash_rows` hashes a list of JSON-serialisable rows (the selection set) in order, canonically (sorted keys,
numpy scalars/arrays converted), so the same parquet rows give the same hash on any machine.

Ledger
------
`Ledger.append(row)` writes one line with a single ``write`` on an ``O_APPEND`` descriptor, then
``fsync``s, before returning: a candidate counts as evaluated only once its row is on disk. The first
append of a process takes an exclusive ``flock`` on the ledger (a second trainer on the same run directory
fails with `LedgerBusy`) and cuts off a torn final line (bytes after the last newline, left by a writer
killed mid-write), so the next row never glues onto it. `Ledger.read` is read-only and tolerant: it ignores
a torn final line, skips (and reports) any complete line that is not a JSON object with an integer
``index``, and de-duplicates by candidate index, first row wins, reporting the later ones. A skipped or
dropped row only means that candidate is evaluated again, which is safe.

Ledger row (built by `candidate_row`)::

    {"index": int, "seed": int, "sigma": float,
     "score": float,      # mean reward over the n selection prompts (errored samples count 0)
     "acc": float,        # mean acc over the n prompts (errored samples count 0)
     "n": int, "n_errors": int,
     "errors": [{"prompt": int, "error": str}, ...],   # first MAX_ERRORS_KEPT, text capped
     "tokens": int, "wall_s": float, "time": float (unix),
     # optional, keep_per_prompt=True:
     "scores": [float], "accs": [float], "preds": [str | null],
     ... caller's extra fields}

Rewards that fail (DESIGN decision 5 meets decision 4): a reward function that raised on a sample, or
returned a non-finite score, does not stop the search. `normalise_reward` turns that sample into
``score = 0, acc = 0, pred = None`` (abstain) with the error text, and the row carries the error; the
mean is still over all n prompts, so a candidate that breaks the reward is ranked as if it answered wrong.
A finite score with a non-finite ``acc`` keeps the score, sets acc 0 and records the error. A reward that
returns a plain number has ``acc = score`` (verl's convention when no ``acc`` is given) and no ``pred``;
the fallback extractor `randopt_verl.core.vote.fallback_pred` is applied when the response text is given.
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

from randopt_verl.core.vote import fallback_pred

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "randopt_verl.core.rundir/1"
MANIFEST = "manifest.json"
LEDGER = "ledger.jsonl"
TOPK = "topk.json"
RESULTS = "results.json"

MAX_ERRORS_KEPT = 20
MAX_ERROR_CHARS = 500
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
        data = (json.dumps(row, separators=(",", ":"), ensure_ascii=False, default=_json_default,
                           allow_nan=False) + "\n").encode()
        fd = self._open_for_append()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)

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
        out = LedgerContents(rows=[])
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return out
        lines = data.split(b"\n")
        if lines[-1]:
            out.torn_tail = True
        seen: set[int] = set()
        for lineno, raw in enumerate(lines[:-1], start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                out.bad_lines.append(lineno)
                continue
            idx = row.get("index") if isinstance(row, dict) else None
            if not isinstance(idx, int) or isinstance(idx, bool):
                out.bad_lines.append(lineno)
                continue
            if idx in seen:
                out.duplicates.append(row)
                continue
            seen.add(idx)
            out.rows.append(row)
        if out.torn_tail or out.bad_lines or out.duplicates:
            log.warning(
                "ledger %s: torn tail ignored=%s, unreadable lines=%s, duplicate rows dropped=%s (first wins)",
                self.path, out.torn_tail, out.bad_lines, [r["index"] for r in out.duplicates],
            )
        return out


# ------------------------------------------------------------------------------------ reward samples


def _error_text(err: Any) -> str:
    text = f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else str(err)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def normalise_reward(result: Any, response: str | None = None) -> dict:
    """One sample's reward outcome as ``{"score", "acc", "pred", "error"}`` (see module docstring).

    ``result`` is what the verl reward function returned (a number or a dict with ``score`` and optionally
    ``acc`` and ``pred``), or the exception it raised. ``response`` (the decoded response text) enables the
    fallback vote key when the reward gives no ``pred``.
    """
    if isinstance(result, BaseException):
        return {"score": 0.0, "acc": 0.0, "pred": None, "error": _error_text(result)}
    pred: Any = None
    try:
        if isinstance(result, Mapping):
            if "score" not in result:
                raise KeyError(f"reward dict has no 'score' (keys: {sorted(result)})")
            score = float(result["score"])
            acc = float(result["acc"]) if result.get("acc") is not None else score
            pred = result.get("pred")
        else:
            score = float(result)
            acc = score
    except (TypeError, ValueError, KeyError) as e:
        return {"score": 0.0, "acc": 0.0, "pred": None, "error": _error_text(e)}
    if not math.isfinite(score):
        return {"score": 0.0, "acc": 0.0, "pred": None, "error": f"reward returned a non-finite score ({score})"}
    error = None
    if not math.isfinite(acc):
        error, acc = f"reward returned a non-finite acc ({acc})", 0.0
    if pred is None and response is not None:
        pred = fallback_pred(response)
    if pred is not None and not isinstance(pred, str):
        pred = str(pred)
    return {"score": score, "acc": acc, "pred": pred, "error": error}


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
    """A run directory opened for a search (see the module docstring). Use `RunDir.open`."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.ledger = Ledger(path / LEDGER)

    @property
    def n_candidates(self) -> int:
        return self.manifest["n_candidates"]

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        model_fingerprint: str,
        noise_spec_version: str | int,
        selection_set_hash: str,
        search: Mapping[str, Any],
        n_candidates: int,
        config: Mapping[str, Any] | None = None,
    ) -> "RunDir":
        """Create the run directory, or resume it if its identity matches (else `ManifestMismatch`)."""
        path = Path(path)
        identity = _plain({
            "model_fingerprint": model_fingerprint,
            "noise_spec_version": noise_spec_version,
            "selection_set_hash": selection_set_hash,
            "search": dict(search),
        })
        if not isinstance(n_candidates, int) or n_candidates < 1:
            raise ValueError(f"n_candidates must be a positive integer, got {n_candidates!r}")
        path.mkdir(parents=True, exist_ok=True)
        mpath = path / MANIFEST
        if not mpath.exists():
            if (path / LEDGER).exists() and (path / LEDGER).stat().st_size > 0:
                raise ValueError(
                    f"{path} has a ledger but no {MANIFEST}: cannot tell what search it belongs to. "
                    "Fix: use a new run directory, or restore the manifest."
                )
            manifest = {
                "format": MANIFEST_FORMAT,
                "created": time.time(),
                "identity": identity,
                "n_candidates": n_candidates,
                "n_candidates_history": [{"time": time.time(), "n_candidates": n_candidates}],
                "config": _plain(dict(config or {})),
            }
            atomic_write_json(mpath, manifest)
            return cls(path, manifest)
        try:
            manifest = read_json(mpath)
        except json.JSONDecodeError as e:
            raise ValueError(f"{mpath} is not valid JSON ({e}); restore it or use a new run directory") from e
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{mpath} has format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}; "
                             "use a new run directory")
        diffs = _diff(manifest["identity"], identity)
        if diffs:
            raise ManifestMismatch(path, diffs)
        if manifest["n_candidates"] != n_candidates:
            log.info("run %s: N %d -> %d (population is prefix-stable)", path, manifest["n_candidates"], n_candidates)
            manifest["n_candidates"] = n_candidates
            manifest["n_candidates_history"].append({"time": time.time(), "n_candidates": n_candidates})
            atomic_write_json(mpath, manifest)
        return cls(path, manifest)

    def finished(self) -> dict[int, dict]:
        """Finished rows of candidates ``0 .. n_candidates-1`` by index (the ledger read, de-duplicated)."""
        return {i: r for i, r in self.ledger.read().by_index.items() if 0 <= i < self.n_candidates}

    def write_topk(self, obj: Any) -> None:
        atomic_write_json(self.path / TOPK, obj)

    def write_results(self, obj: Any) -> None:
        atomic_write_json(self.path / RESULTS, obj)

    def close(self) -> None:
        self.ledger.close()
