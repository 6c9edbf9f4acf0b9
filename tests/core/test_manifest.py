"""The identity comparison (randopt_verl.core.manifest): dotted keys, absent sides, and the messages' fixes.

The refusals through `RunDir.open` are in test_rundir.py; this is the comparison on its own."""

from pathlib import Path

from randopt_verl.core.manifest import ABSENT, ManifestMismatch, TestSetChanged, diff_identity


def test_diff_identity_flattens_and_marks_absent_keys():
    old = {"a": 1, "search": {"sigmas": [0.001], "seed": 0}, "gone": True}
    new = {"a": 1, "search": {"sigmas": [0.002], "seed": 0}, "rollout": {"name": "vllm"}}
    assert diff_identity(old, new) == [("gone", True, ABSENT), ("rollout.name", ABSENT, "vllm"),
                                       ("search.sigmas", [0.001], [0.002])]
    assert diff_identity(old, old) == []


def test_messages_name_the_keys_and_the_fix():
    diffs = [("search.sigmas", [0.001], [0.002]), ("rollout.name", ABSENT, "vllm")]
    msg = str(ManifestMismatch(Path("/r"), diffs))
    assert "search.sigmas: old [0.001] -> new [0.002]" in msg and "rollout.name: old <absent>" in msg
    assert "new (or empty) run directory" in msg
    e = TestSetChanged(Path("/r"), diffs[:1], test_ledger=Path("/r/test_ledger.jsonl"), ledger_name="ledger.jsonl")
    assert isinstance(e, ManifestMismatch) and isinstance(e, ValueError)
    assert "delete /r/test_ledger.jsonl" in str(e) and "the search's ledger.jsonl is kept" in str(e)
