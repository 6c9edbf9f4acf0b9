"""How a resume is refused: the identity comparison and the two errors that name what changed.

Plain data, no Ray, no verl. `randopt_verl.core.rundir.RunDir.open` stores a run's identity in manifest.json and, on
every resume, compares it with the new one through `diff_identity`: nested keys are flattened to dotted names
(``search.sigmas``), and each differing key is reported with its old and new value (``<absent>`` when one side lacks
it). `ManifestMismatch` (a ``ValueError``) is the search's identity changing; `TestSetChanged` (a subclass) is only
the test identity changing while test answers exist. Both messages name the ways out. The file names they mention
are passed in by `RunDir`, which owns every run-directory name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .jsonio import canonical_json

Diff = tuple[str, Any, Any]  # (dotted key, old value or ABSENT, new value or ABSENT)


class ManifestMismatch(ValueError):
    """The run directory was created for a different search; resuming would mix incomparable rows."""

    def __init__(self, run_dir: Path, diffs: list[Diff]):
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
    """The test set or its generation settings changed while the run directory holds test answers for the old one.

    ``test_ledger`` is the path of the test answers to delete, ``ledger_name`` the search's ledger that is kept."""

    __test__ = False  # not a pytest test class

    def __init__(self, run_dir: Path, diffs: list[Diff], *, test_ledger: Path, ledger_name: str):
        self.run_dir = run_dir
        self.diffs = diffs
        lines = [f"run directory {run_dir} holds test answers for another test set or test settings; refusing to "
                 f"reuse them. Differences:"]
        lines += [f"  {key}: old {_show(old)} -> new {_show(new)}" for key, old, new in diffs]
        lines.append(f"Fix: delete {test_ledger} to answer the new test set (the search's {ledger_name} is kept "
                     "and not re-run), or restore the old values above.")
        ValueError.__init__(self, "\n".join(lines))


ABSENT = object()  # a key one side of a diff lacks


def _show(v: Any) -> str:
    if v is ABSENT:
        return "<absent>"
    s = canonical_json(v)
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


def diff_identity(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Diff]:
    """The dotted keys whose values differ between two identities, sorted, each with its old and new value."""
    fo, fn = _flatten(old), _flatten(new)
    return [
        (k, fo.get(k, ABSENT), fn.get(k, ABSENT))
        for k in sorted(set(fo) | set(fn))
        if fo.get(k, ABSENT) != fn.get(k, ABSENT)
    ]
