"""The crash-safe ledger: one row per finished evaluation, its index conventions and its row format.

Plain data, no Ray, no verl. A ledger is a JSONL file of a run directory (`randopt_verl.core.rundir.RunDir` names
them: the search's ledger.jsonl, the test answers' test_ledger.jsonl, and the others); lines are written and
parsed as in `randopt_verl.core.jsonio`.

Index conventions (ledger and test ledger)
------------------------------------------
Candidate ``i`` of the population has index ``i >= 0``. `BASE` (-1) is the base model's greedy evaluation;
`base_sample_index(s)` (-2 - s) is the base model's s-th sampled answer set (base self-consistency). A row with
index ``i >= n_candidates`` belongs to a larger population of an earlier start and is ignored by
`RunDir.finished`.

Writing and reading
-------------------
`Ledger.append` writes one row with a single ``write`` on an ``O_APPEND`` descriptor and ``fsync``s it: a row counts
only once it is on disk. Its first append of a process takes an exclusive ``flock`` (a second trainer on the same
run directory fails with `LedgerBusy`) and cuts off a torn final line, so the next row never glues onto it.
`Ledger.read` ignores a torn final line, skips (reporting them) complete lines that are not JSON objects and rows
without an integer ``index``, and de-duplicates by index, first row wins. A skipped or dropped row only means that
candidate is evaluated again, which is safe.

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
a resumed run. Each row also carries its ``seed`` and ``sigma`` because a resume with a different N rests on the
population being prefix-stable: `verify_rows` checks them against the population being resumed, so a population
whose candidate ``i`` moved is refused instead of silently mixed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .jsonio import fsync_dir, json_line, parse_jsonl, write_all

log = logging.getLogger(__name__)

BASE = -1  # ledger index of the base model's greedy evaluation
MAX_ERRORS_KEPT = 20  # a row keeps its first errors only (n_errors counts all): a reward failing on every prompt
#                       would otherwise bloat every row


def base_sample_index(s: int) -> int:
    """Test-ledger index of the base model's s-th sampled answer set (base self-consistency)."""
    return -2 - int(s)


def base_sample_number(index: int) -> int:
    """The sample number s of test-ledger index ``base_sample_index(s)``."""
    return -2 - int(index)


# ------------------------------------------------------------------------------------------------ ledger


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
    """Append-only JSONL of finished evaluations, one row per index. See the module docstring."""

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
        fsync_dir(self.path.parent)
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
        data = json_line(row)  # strict: a NaN in a ledger row is a bug upstream, not a row
        write_all(self._open_for_append(), data)

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
            parsed = parse_jsonl(self.path.read_bytes())
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


# ------------------------------------------------------------------------------------------- ledger rows


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
