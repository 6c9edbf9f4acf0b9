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

A `Ledger` object remembers what it has read: the next `read` parses only the bytes appended since (the RandOpt
trainer reads after every chunk of candidates; re-parsing the whole file each time made a search's reads quadratic
in N). The result is the same as a full read of the file as it is now; a file replaced, truncated or rewritten in
the meantime is detected (inode, size, the last parsed line) and parsed again from the start. `Ledger.delete` drops
the file and what was read of it.

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
from typing import Any, BinaryIO, Iterable, Mapping, Sequence

from .jsonio import JsonlContents, fsync_dir, json_line, parse_jsonl, write_all

log = logging.getLogger(__name__)

BASE = -1  # ledger index of the base model's greedy evaluation
MAX_ERRORS_KEPT = 20  # a row keeps its first errors only (n_errors counts all): a reward failing on every prompt
#                       would otherwise bloat every row


_CHECK_BYTES = 4096  # how much of the last parsed line `Ledger.read` checks is still in place


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
        self._forget()

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
    def _forget(self) -> None:
        """Drop what `read` has parsed so far; the next read parses the file from its first byte."""
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file parsed so far
        self._offset = 0  # bytes parsed: the file up to and including its last newline, as of the last read
        self._n_lines = 0  # complete lines in those bytes (the next line's number is this plus one)
        self._last_line = b""  # the end (<= _CHECK_BYTES) of the last complete line parsed, where it should still be
        self._rows: list[dict] = []
        self._duplicates: list[dict] = []
        self._bad_lines: list[int] = []
        self._seen: set[int] = set()

    def _continues(self, f: BinaryIO, st: os.stat_result) -> bool:
        """Whether the open file is the one parsed so far with bytes appended (else it was replaced or rewritten).

        Same device and inode, no shorter than what was parsed, and the last parsed line still where it was: an
        atomic rewrite (a new inode) or a truncation is caught by the first two; the third catches a file deleted
        and created again that got the freed inode number back."""
        if self._file != (st.st_dev, st.st_ino) or st.st_size < self._offset:
            return False
        if not self._last_line:
            return True
        f.seek(self._offset - len(self._last_line))
        return f.read(len(self._last_line)) == self._last_line

    def read(self) -> LedgerContents:
        """All finished rows, tolerant of a torn tail and duplicates (see the module docstring).

        Incremental: only the bytes appended since the previous read are parsed (the trainer reads after every chunk
        of candidates, so a full parse each time would cost O(N^2) over a search). The result equals a full read of
        the file as it is now; a file replaced, truncated or rewritten since is parsed again from the start. The
        returned lists are fresh (appending to or sorting them changes nothing here), but their row dicts are the
        ledger's own, shared with later reads: treat them as read-only."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            self._forget()
            return LedgerContents(rows=[])
        with f:
            st = os.fstat(f.fileno())
            if not self._continues(f, st):
                self._forget()
                self._file = (st.st_dev, st.st_ino)
            f.seek(self._offset)
            data = f.read()
        # parse only complete lines; bytes after the last newline (a torn tail, or a row being written) are looked
        # at again by the next read, exactly as a full read would see them then
        end = data.rfind(b"\n") + 1
        torn_tail = bool(data[end:].strip())
        if end:
            self._take(parse_jsonl(data[:end], first_lineno=self._n_lines + 1))
            self._n_lines += data.count(b"\n", 0, end)
            self._offset += end
            self._last_line = data[max(data.rfind(b"\n", 0, end - 1) + 1, end - _CHECK_BYTES):end]
        out = LedgerContents(rows=list(self._rows), duplicates=list(self._duplicates),
                             bad_lines=list(self._bad_lines), torn_tail=torn_tail)
        if out.torn_tail or out.bad_lines or out.duplicates:
            log.warning(
                "ledger %s: torn tail ignored=%s, unreadable lines=%s, duplicate rows dropped=%s (first wins)",
                self.path, out.torn_tail, out.bad_lines, [r["index"] for r in out.duplicates],
            )
        return out

    def _take(self, parsed: JsonlContents) -> None:
        """Add newly parsed complete lines: rows without an integer index are bad lines, a seen index a duplicate."""
        bad = list(parsed.bad_lines)
        for lineno, row in zip(parsed.linenos, parsed.rows):
            idx = row.get("index")
            if not isinstance(idx, int) or isinstance(idx, bool):
                bad.append(lineno)  # a JSON object without an integer index
                continue
            if idx in self._seen:
                self._duplicates.append(row)
                continue
            self._seen.add(idx)
            self._rows.append(row)
        # every line here comes after every line already read, so the whole list stays sorted
        self._bad_lines.extend(sorted(bad))

    def delete(self) -> None:
        """Close the ledger, delete its file and forget what was read (its rows are to be computed again)."""
        self.close()
        self.path.unlink(missing_ok=True)
        self._forget()


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
