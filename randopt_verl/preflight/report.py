"""The checklist: `Result` (one line of it) and `run_check`, which runs one check and turns what it returns or raises
into that line (`Skip` and `Warn` are raised by a check that does not apply or passes with a caveat)."""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

from randopt_verl.config.errors import ConfigError


@dataclass
class Result:
    """One checklist line: the check's name, its status and a detail (the fix, for a failure)."""

    name: str
    status: str  # ok | fail | warn | skip
    detail: str = ""

    def line(self) -> str:
        mark = {"ok": "[ok]  ", "fail": "[FAIL]", "warn": "[warn]", "skip": "[skip]"}[self.status]
        return f"{mark} {self.name}" + (f": {self.detail}" if self.detail else "")


def run_check(name: str, fn: Callable[[], Optional[str]]) -> Result:
    """One checklist line: fn returns a detail (ok), raises ConfigError (fail, its message is the fix)."""
    try:
        # verl's checks print progress lines and warn about keys this package sets on purpose (no critic)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            detail = fn()
        return Result(name, "ok", detail or "")
    except Skip as s:
        return Result(name, "skip", str(s))
    except Warn as w:
        return Result(name, "warn", str(w))
    except ConfigError as exc:
        return Result(name, "fail", str(exc))
    except (AssertionError, ValueError, TypeError, KeyError, AttributeError, ImportError, OSError) as exc:
        # verl's own checks raise these with the offending key in the message
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Result(name, "fail", f"{type(exc).__name__}: {first}")


class Skip(Exception):
    """The check does not apply to this config or machine; the message says why."""


class Warn(Exception):
    """The check passes with a caveat; the message is the caveat."""
