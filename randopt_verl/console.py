"""The quiet console (`console.quiet=true`, which `randopt-verl demo` sets): Ray's and verl's output goes to
`<run dir>/console.log`; the terminal shows one progress line per phase; an error still reaches the terminal, with
its message (which names the fix) and the log's path.

    python -m randopt_verl.main trainer=randopt console.quiet=true ...     # any hardware

How, narrowly: Ray forwards every worker's stdout/stderr to the driver process (its log monitor; verl 0.9.1's
main_ppo leaves `log_to_driver` at Ray's default, true), and Ray's own processes inherit the driver's file
descriptors. So the driver's descriptors 1 and 2 are pointed at the log file before `ray.init`: the forwarded worker
lines, verl's and Ray's lines and the driver's own all land in the file, in order, and no Ray or verl option changes
(`log_to_driver=False` would instead leave the worker lines in Ray's session directory under /tmp, out of the run
directory). The terminal keeps a duplicate of the original descriptor.

Progress crosses from the trainer (a Ray actor) to the terminal through a file: `phase_bar` is a tqdm whose
events are also appended as JSON lines to the file named by RANDOPT_VERL_PROGRESS (set by the driver for every Ray
worker); the driver's `Quiet` thread tails it and draws one line per phase (redrawn in place on a terminal; on a
pipe or file, one line when the phase ends).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any, Optional

from tqdm import tqdm

from randopt_verl.core.rundir import RunDir  # owns the names console.log and progress.jsonl

PROGRESS_ENV = "RANDOPT_VERL_PROGRESS"


# --------------------------------------------------------------------------------------------- trainer side
class phase_bar(tqdm):
    """tqdm that also records its events for the quiet console (when RANDOPT_VERL_PROGRESS names a file)."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._record_path = os.environ.get(PROGRESS_ENV) or None
        self._closed_record = False
        super().__init__(*args, **kwargs)
        self._record("start")

    def _record(self, event: str) -> None:
        if not self._record_path:
            return
        line = json.dumps({"event": event, "desc": self.desc, "n": int(self.n), "total": self.total,
                           "initial": int(self.initial or 0), "t": time.time()})
        try:
            with open(self._record_path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:  # the display is a convenience; the run never fails for it
            self._record_path = None

    def update(self, n: float = 1) -> Optional[bool]:
        out = super().update(n)
        self._record("update")
        return out

    def close(self) -> None:
        if not self._closed_record:
            self._closed_record = True
            self._record("close")
        super().close()


# --------------------------------------------------------------------------------------------- driver side
def _clock(s: float) -> str:
    m, sec = divmod(int(round(max(s, 0.0))), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


class ProgressView:
    """Turns progress events into terminal output: on a tty one line per phase redrawn in place, else one line
    per phase when it ends (so a log of the console has as many lines as phases)."""

    def __init__(self, out: IO[str], tty: bool):
        self.out, self.tty = out, tty
        self.live: Optional[str] = None  # the phase whose line is drawn without its newline (tty)
        self.started: dict[str, float] = {}

    def event(self, e: dict) -> None:
        desc, n, total, t = e.get("desc") or "progress", e.get("n", 0), e.get("total"), e.get("t", time.time())
        if total == 0:  # a phase with nothing to do (e.g. no base samples asked for) is no progress to show
            return
        if e.get("event") == "start":
            self.started[desc] = t
        t0 = self.started.get(desc, t)
        done = n - e.get("initial", 0)
        text = f"{desc}: {n}/{total if total is not None else '?'}"
        if e.get("event") == "close":
            resumed = f", {e.get('initial')} from the ledger" if e.get("initial") else ""
            self._draw(f"{text} in {_clock(t - t0)}{resumed}", final=True, desc=desc)
        elif self.tty:
            rate = done / (t - t0) if t > t0 and done > 0 else None
            eta = f", about {_clock((total - n) / rate)} left" if rate and total else ""
            self._draw(f"{text} ({_clock(t - t0)}{eta})", final=False, desc=desc)

    def _draw(self, text: str, final: bool, desc: str) -> None:
        if self.tty:
            self.out.write("\r\x1b[K" + text + ("\n" if final else ""))
            self.live = None if final else desc
        elif final:
            self.out.write(text + "\n")
        self.out.flush()

    def finish(self) -> None:
        if self.tty and self.live is not None:
            self.out.write("\n")
            self.out.flush()
            self.live = None


class Quiet:
    """Context manager for the driver: logs to `<run_dir>/console.log`, progress to the terminal.

    The terminal is a duplicate of descriptor 1 taken on entry. On exit the descriptors are restored; an exception
    is reported on the terminal as one line (its message) plus the log's path, and re-raised."""

    def __init__(self, run_dir: os.PathLike | str, poll_s: float = 0.5):
        self.dir = Path(run_dir).resolve()
        self.log_path = RunDir(self.dir).console_log_path
        self.progress_path = RunDir(self.dir).progress_path
        self.poll_s = poll_s
        self._stop = threading.Event()

    # the terminal: what the user sees
    def say(self, text: str) -> None:
        self.view.finish()
        self.term.write(text + "\n")
        self.term.flush()

    def __enter__(self) -> "Quiet":
        self.dir.mkdir(parents=True, exist_ok=True)
        self.progress_path.write_text("")  # a resumed run's old events are not this run's progress
        os.environ[PROGRESS_ENV] = str(self.progress_path)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.term = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
        self.view = ProgressView(self.term, self.term.isatty())
        self._log = open(self.log_path, "a", buffering=1, encoding="utf-8")
        os.dup2(self._log.fileno(), 1)
        os.dup2(self._log.fileno(), 2)
        self.say(f"randopt_verl: quiet console: starting Ray and verl; their output goes to {self.log_path}")
        self._thread = threading.Thread(target=self._follow, name="randopt-progress", daemon=True)
        self._thread.start()
        return self

    def _follow(self) -> None:
        offset = 0
        while True:
            stopping = self._stop.is_set()
            try:
                with open(self.progress_path, encoding="utf-8") as f:
                    f.seek(offset)
                    chunk = f.read()
            except OSError:
                chunk = ""
            complete, _, _ = chunk.rpartition("\n")  # a line being written is read on the next poll
            if complete:
                offset += len((complete + "\n").encode("utf-8"))
                for line in complete.splitlines():
                    try:
                        self.view.event(json.loads(line))
                    except (ValueError, AttributeError):
                        continue
            if stopping:
                return
            self._stop.wait(self.poll_s)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None:
            traceback.print_exception(exc_type, exc, tb, file=self._log)  # the whole story stays in the log
        self._stop.set()
        self._thread.join(timeout=10)
        self.view.finish()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._log.close()
        os.environ.pop(PROGRESS_ENV, None)
        if exc is not None and not isinstance(exc, SystemExit):
            what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {error_line(exc)}"
            self.term.write(f"randopt_verl: the run {what}\nrandopt_verl: full log: {self.log_path}\n")
        self.term.close()
        return False


def error_line(exc: BaseException) -> str:
    """The message a user acts on: the original exception of a Ray task error (its type and message, which in this
    package names the fix), not the remote traceback Ray wraps it in."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError keeps the worker's exception here
        if isinstance(cause, BaseException):
            exc = cause
            continue
        break
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
