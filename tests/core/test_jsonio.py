"""JSON and JSONL files (randopt_verl.core.jsonio): the tolerant reader, durable append, atomic rewrites."""

import json
import os

import numpy as np
import pytest

from randopt_verl.core.jsonio import append_jsonl, atomic_write_json, keep_until, read_jsonl


def test_jsonl_append_read_keep_until(tmp_path):
    path = tmp_path / "m.jsonl"
    assert read_jsonl(path) == [] and keep_until(path, "step", 3) == []
    for step in (1, 2, 3):
        append_jsonl(path, {"step": step, "data": {"x": float("nan") if step == 2 else step}})
    with open(path, "a") as f:
        f.write('"not an object"\n{"step": 4, "da')  # a bad line, then a torn tail
    rows = read_jsonl(path)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[1]["data"]["x"] is None  # NaN is written as null
    assert [r["step"] for r in keep_until(path, "step", 2)] == [1, 2]
    assert path.read_text().count("\n") == 2 and [r["step"] for r in read_jsonl(path)] == [1, 2]


def test_atomic_write_json(tmp_path):
    path = tmp_path / "topk.json"
    atomic_write_json(path, {"a": 1, "x": float("nan"), "arr": np.arange(2)})
    assert json.loads(path.read_text()) == {"a": 1, "x": None, "arr": [0, 1]}
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})  # serialising fails before anything is written
    assert json.loads(path.read_text())["a"] == 1  # old content intact
    assert sorted(os.listdir(tmp_path)) == ["topk.json"]  # no temporary left behind
