"""JSON and JSONL files on disk: the one JSONL reader, the durable append, the atomic rewrites, canonical JSON.

Plain data, no Ray, no verl. Every JSON or JSONL file of a run directory is read and written through here (the
crash-safe ledger, `randopt_verl.core.ledger`, builds on the same line format and parser).

* `append_jsonl` writes one line with a single ``write`` on an ``O_APPEND`` descriptor and ``fsync``s it before
  returning: a row counts only once it is on disk.
* `read_jsonl` is tolerant: it ignores a torn final line (a writer killed mid-write) and skips, reporting them,
  complete lines that are not JSON objects (`parse_jsonl` is the parser under it).
* `write_jsonl` replaces a JSONL file atomically; `keep_until` uses it to keep the rows up to a step (a resume from
  a checkpoint drops the rows of the steps that will run again).
* `atomic_write_json` / `read_json`: a whole JSON document (manifest, results, top-K), replaced atomically.
* Canonical JSON: `canonical_json` (sorted keys, compact: hashes and messages), `plain` (round-trip through JSON,
  so values compare as they are stored), `finite` (NaN and infinities to null), `json_default` (numpy, paths, sets).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- canonical JSON


def json_default(obj: Any) -> Any:
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


def canonical_json(obj: Any) -> str:
    """One compact line with sorted keys: the same value gives the same text on any machine."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=json_default)


def finite(obj: Any) -> Any:
    """NaN and infinities to None (JSON has no such numbers), recursively through dicts and lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def plain(obj: Any) -> Any:
    """Round-trip through JSON so tuples/lists and numpy/python numbers compare as they are stored."""
    return json.loads(json.dumps(obj, default=json_default))


# ------------------------------------------------------------------------------------------ durable writes


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a file created or renamed in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def json_line(row: Any) -> bytes:
    """One compact strict-JSON line (a NaN raises ValueError: JSON has no such number)."""
    return (json.dumps(row, separators=(",", ":"), ensure_ascii=False, default=json_default, allow_nan=False)
            + "\n").encode()


def write_all(fd: int, data: bytes) -> None:
    """Write every byte to ``fd`` (``os.write`` may write fewer) and fsync it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


# ------------------------------------------------------------------------------------------------- JSON


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so that readers see the old file or the new one, never a part.

    Serialises first (a TypeError leaves the old file untouched), writes a temporary file in the same
    directory, fsyncs it, ``os.replace``s it over ``path`` and fsyncs the directory. Non-finite floats
    are written as ``null`` (strict JSON has no NaN).
    """
    path = Path(path)
    text = json.dumps(finite(plain(obj)), indent=2, ensure_ascii=False, default=json_default, allow_nan=False) + "\n"
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
    fsync_dir(path.parent)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------ JSONL


def append_jsonl(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append one row as a line and fsync it before returning (non-finite floats are written as null)."""
    data = json_line(finite(row))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


@dataclass
class JsonlContents:
    rows: list[dict]  # the JSON objects, in file order
    linenos: list[int] = field(default_factory=list)  # the 1-based line number of each row
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of complete lines that are not objects
    torn_tail: bool = False  # bytes after the last newline were ignored


def parse_jsonl(data: bytes, first_lineno: int = 1) -> JsonlContents:
    """The complete lines of ``data`` parsed; bytes after the last newline are a torn tail, not a row.

    ``first_lineno`` is the number of ``data``'s first line: a reader that parses a file piece by piece (the
    incremental `randopt_verl.core.ledger.Ledger.read`) passes the lines before the piece plus one, so line numbers
    stay the file's."""
    lines = data.split(b"\n")
    out = JsonlContents(rows=[], torn_tail=bool(lines[-1].strip()))
    for lineno, raw in enumerate(lines[:-1], start=first_lineno):
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
        contents = parse_jsonl(Path(path).read_bytes())
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
        f.write(b"".join(json_line(finite(r)) for r in rows))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def keep_until(path: str | os.PathLike, key: str, last: int) -> list[dict]:
    """Atomically rewrite a JSONL file keeping the rows with ``row[key] <= last`` (a resume from the checkpoint of
    step ``last`` drops the rows of the steps that run again); returns the kept rows."""
    if not Path(path).exists():
        return []
    kept = [r for r in read_jsonl(path) if isinstance(r.get(key), int) and r[key] <= last]
    write_jsonl(path, kept)
    return kept
