"""The run directory (randopt_verl.core.rundir): manifest identity, the crash-safe ledger, atomic JSON."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from randopt_verl.core.rundir import (
    BASE,
    Ledger,
    LedgerBusy,
    ManifestMismatch,
    RunDir,
    TestSetChanged,
    append_jsonl,
    atomic_write_json,
    base_sample_index,
    candidate_row,
    fingerprint_files,
    hash_rows,
    keep_until,
    model_files,
    read_jsonl,
    verify_rows,
)
from randopt_verl.core.vote import normalise_reward

REPO = Path(__file__).resolve().parents[2]

SEARCH = {"population_seed": 0, "sigmas": [0.001, 0.002], "param_filter": ".*",
          "generation": {"temperature": 0.0, "max_tokens": 256}}


TEST = {"test_set_hash": "sha256:test", "controls": {"temperature": 0.7}}


def _open(path, **over):
    kw = dict(model_fingerprint="sha256:aaa", noise_spec_version=1, selection_set_hash="sha256:sel",
              search=SEARCH, n_candidates=10, config={"trainer": {"n_replicas": 1}}, test=TEST)
    kw.update(over)
    n, config, test = kw.pop("n_candidates"), kw.pop("config"), kw.pop("test")
    return RunDir.open(path, identity=kw, test_identity=test, n_candidates=n, config=config)


def _row(i, score=0.5, **kw):
    return {"index": i, "seed": 1000 + i, "sigma": 0.001, "score": score, **kw}


# ------------------------------------------------------------------------------------------ manifest


def test_manifest_written_once_and_resume_sees_finished_rows(tmp_path):
    rd = _open(tmp_path / "run")
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["identity"]["search"]["sigmas"] == [0.001, 0.002]
    assert m["config"] == {"trainer": {"n_replicas": 1}}
    for i in (0, 1, 2):
        rd.ledger.append(_row(i))
    rd.close()
    # a resume with a different informational config is fine and sees the rows
    rd2 = _open(tmp_path / "run", config={"trainer": {"n_replicas": 2}})
    assert sorted(rd2.finished()) == [0, 1, 2]
    assert json.loads((tmp_path / "run" / "manifest.json").read_text()) == m  # not rewritten
    rd2.close()


def test_manifest_mismatch_names_each_key_and_the_fix(tmp_path):
    _open(tmp_path / "run").close()
    search = dict(SEARCH, sigmas=[0.003], generation={"temperature": 0.0, "max_tokens": 512})
    with pytest.raises(ManifestMismatch) as ei:
        _open(tmp_path / "run", model_fingerprint="sha256:bbb", search=search)
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert "model_fingerprint: old \"sha256:aaa\" -> new \"sha256:bbb\"" in msg
    assert "search.sigmas: old [0.001,0.002] -> new [0.003]" in msg
    assert "search.generation.max_tokens: old 256 -> new 512" in msg
    assert "noise_spec_version" not in msg and "population_seed" not in msg  # only what differs
    assert "new (or empty) run directory" in msg and "restore the old values" in msg
    assert [d[0] for d in ei.value.diffs] == ["model_fingerprint", "search.generation.max_tokens", "search.sigmas"]


def test_manifest_mismatch_on_added_key_and_noise_spec(tmp_path):
    _open(tmp_path / "run").close()
    with pytest.raises(ManifestMismatch, match=r"search.reward: old <absent> -> new \"countdown\""):
        _open(tmp_path / "run", search=dict(SEARCH, reward="countdown"))
    with pytest.raises(ManifestMismatch, match=r"noise_spec_version: old 1 -> new 2"):
        _open(tmp_path / "run", noise_spec_version=2)
    # tuples and lists are the same identity (stored as JSON)
    _open(tmp_path / "run", search=dict(SEARCH, sigmas=(0.001, 0.002))).close()


def test_n_is_not_identity_grow_and_shrink(tmp_path):
    rd = _open(tmp_path / "run", n_candidates=4)
    for i in range(4):
        rd.ledger.append(_row(i))
    rd.close()
    rd = _open(tmp_path / "run", n_candidates=8)
    assert rd.n_candidates == 8 and sorted(rd.finished()) == [0, 1, 2, 3]
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [h["n_candidates"] for h in m["n_candidates_history"]] == [4, 8]
    rd.close()
    rd = _open(tmp_path / "run", n_candidates=2)
    assert sorted(rd.finished()) == [0, 1]  # rows beyond N stay in the ledger but are not counted
    assert len(rd.ledger.read().rows) == 4
    rd.close()


def test_changed_test_set_is_refused_with_the_fix_then_recomputed(tmp_path):
    rd = _open(tmp_path / "run")
    rd.ledger.append(_row(0))
    rd.test_ledger.append(_row(BASE))
    rd.close()
    new_test = {"test_set_hash": "sha256:other", "controls": {"temperature": 0.7}}
    with pytest.raises(TestSetChanged) as ei:
        _open(tmp_path / "run", test=new_test)
    msg = str(ei.value)
    assert 'test_set_hash: old "sha256:test" -> new "sha256:other"' in msg
    assert f"delete {tmp_path / 'run' / 'test_ledger.jsonl'}" in msg and "is kept" in msg
    with pytest.raises(TestSetChanged, match=r"controls.temperature: old 0.7 -> new 1.0"):
        _open(tmp_path / "run", test={"test_set_hash": "sha256:test", "controls": {"temperature": 1.0}})
    # the fix: the old test answers go, the search's ledger stays and the manifest takes the new test identity
    (tmp_path / "run" / "test_ledger.jsonl").unlink()
    rd = _open(tmp_path / "run", test=new_test)
    assert sorted(rd.finished()) == [0] and rd.manifest["test_identity"] == new_test
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["test_identity"] == new_test
    rd.close()


def test_search_identity_still_refused_before_any_row(tmp_path):
    _open(tmp_path / "run").close()
    with pytest.raises(ManifestMismatch) as ei:
        _open(tmp_path / "run", rollout={"name": "vllm", "dtype": "bfloat16", "tensor_model_parallel_size": 2})
    assert not isinstance(ei.value, TestSetChanged) and "rollout.name: old <absent>" in str(ei.value)


def test_index_conventions_and_file_names(tmp_path):
    assert BASE == -1 and [base_sample_index(s) for s in range(3)] == [-2, -3, -4]
    run = RunDir(tmp_path)
    assert run.ledger.path.name == "ledger.jsonl" and run.test_ledger.path.name == "test_ledger.jsonl"
    assert run.metrics_path == tmp_path / "metrics.jsonl" and run.results() is None
    rd = _open(tmp_path / "run", n_candidates=2)
    for i in (BASE, 0, 1, 2):
        rd.ledger.append(_row(i))
    assert sorted(rd.finished()) == [0, 1]  # the base row and rows beyond N are not candidates of this run
    rd.close()


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


def test_ledger_without_manifest_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    Ledger(tmp_path / "run" / "ledger.jsonl").append(_row(0))
    with pytest.raises(ValueError, match="no manifest.json"):
        _open(tmp_path / "run")


def test_verify_rows_against_population():
    rows = [_row(0), _row(1)]
    verify_rows(rows, [(1000, 0.001), (1001, 0.001)])
    verify_rows(rows, [(1000, 0.001)])  # index 1 outside the population: not checked
    with pytest.raises(ValueError, match=r"candidate 1: ledger \(seed=1001, sigma=0.001\) vs population"):
        verify_rows(rows, [(1000, 0.001), (1001, 0.002)])


# ------------------------------------------------------------------------------------------- ledger


def test_torn_last_line_is_ignored_and_next_append_is_intact(tmp_path):
    path = tmp_path / "ledger.jsonl"
    led = Ledger(path)
    led.append(_row(0))
    led.append(_row(1))
    led.close()
    with open(path, "ab") as f:
        f.write(b'{"index": 2, "seed": 10')  # a writer killed mid-row
    c = Ledger(path).read()
    assert [r["index"] for r in c.rows] == [0, 1] and c.torn_tail and not c.bad_lines
    led = Ledger(path)
    led.append(_row(2, score=0.9))
    led.close()
    c = Ledger(path).read()
    assert [r["index"] for r in c.rows] == [0, 1, 2] and not c.torn_tail and not c.bad_lines
    assert c.by_index[2]["score"] == 0.9
    assert path.read_bytes().count(b"\n") == 3


def test_torn_only_line(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b'{"ind')
    assert Ledger(path).read().rows == []
    with Ledger(path) as led:
        led.append(_row(0))
    assert path.read_bytes() == (json.dumps(_row(0), separators=(",", ":")) + "\n").encode()


def test_duplicates_first_wins_and_are_reported(tmp_path):
    with Ledger(tmp_path / "l.jsonl") as led:
        led.append(_row(0, score=0.1))
        led.append(_row(1, score=0.2))
        led.append(_row(0, score=0.9))
    c = Ledger(tmp_path / "l.jsonl").read()
    assert [(r["index"], r["score"]) for r in c.rows] == [(0, 0.1), (1, 0.2)]
    assert [(r["index"], r["score"]) for r in c.duplicates] == [(0, 0.9)]


def test_unreadable_middle_line_is_skipped_and_reported(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps(_row(0)) + "\n" + "garbage\n" + '{"no_index": 1}\n' + json.dumps(_row(1)) + "\n")
    c = Ledger(path).read()
    assert [r["index"] for r in c.rows] == [0, 1] and c.bad_lines == [2, 3]


def test_missing_ledger_reads_empty(tmp_path):
    c = Ledger(tmp_path / "none.jsonl").read()
    assert c.rows == [] and not c.torn_tail


def test_append_validates_row(tmp_path):
    led = Ledger(tmp_path / "l.jsonl")
    with pytest.raises(ValueError, match="integer 'index'"):
        led.append({"seed": 1})
    with pytest.raises(ValueError):
        led.append(_row(0, score=float("nan")))  # strict JSON: a NaN is a bug upstream, not a row
    led.append(_row(0, extra=np.float32(0.25), arr=np.arange(3)))  # numpy values are written as JSON
    led.close()
    r = Ledger(tmp_path / "l.jsonl").read().rows[0]
    assert r["extra"] == 0.25 and r["arr"] == [0, 1, 2]


def test_second_writer_is_refused(tmp_path):
    a, b = Ledger(tmp_path / "l.jsonl"), Ledger(tmp_path / "l.jsonl")
    a.append(_row(0))
    with pytest.raises(LedgerBusy):
        b.append(_row(1))
    a.close()
    b.append(_row(1))
    b.close()
    assert [r["index"] for r in Ledger(tmp_path / "l.jsonl").read().rows] == [0, 1]


_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    from randopt_verl.core.rundir import Ledger
    led = Ledger(sys.argv[1])
    i = max(led.read().by_index, default=-1) + 1   # resume after the last finished row
    pad = "x" * 20000                              # rows big enough that a kill can land mid-write
    print("ready", flush=True)
    while True:
        led.append({"index": i, "seed": i, "sigma": 0.001, "score": i / 7, "pad": pad})
        i += 1
    """
)


def test_sigkill_at_random_points_leaves_a_clean_prefix(tmp_path):
    path = tmp_path / "ledger.jsonl"
    rng = random.Random(1234)
    total_kills = 5
    for _ in range(total_kills):
        p = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(REPO)], stdout=subprocess.PIPE)
        assert p.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.02, 0.3))
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        c = Ledger(path).read()
        assert [r["index"] for r in c.rows] == list(range(len(c.rows)))  # a clean prefix, nothing lost between
        assert not c.bad_lines and not c.duplicates
        assert all(r["score"] == r["index"] / 7 and len(r["pad"]) == 20000 for r in c.rows)
    n = len(Ledger(path).read().rows)
    assert n > total_kills  # the children made progress across kills
    with Ledger(path) as led:  # the parent resumes writing after the last kill
        led.append({"index": n, "seed": n, "sigma": 0.001, "score": 0.0})
    c = Ledger(path).read()
    assert [r["index"] for r in c.rows] == list(range(n + 1)) and not c.torn_tail


# ------------------------------------------------------------------------------------ atomic write


def test_atomic_write_json(tmp_path):
    path = tmp_path / "topk.json"
    atomic_write_json(path, {"a": 1, "x": float("nan"), "arr": np.arange(2)})
    assert json.loads(path.read_text()) == {"a": 1, "x": None, "arr": [0, 1]}
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})  # serialising fails before anything is written
    assert json.loads(path.read_text())["a"] == 1  # old content intact
    assert sorted(os.listdir(tmp_path)) == ["topk.json"]  # no temporary left behind
    rd = _open(tmp_path / "run")
    rd.write_topk([{"index": 3}])
    rd.write_results({"base": {"test_acc": 0.5}})
    assert json.loads((tmp_path / "run" / "topk.json").read_text()) == [{"index": 3}]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["base"]["test_acc"] == 0.5


# ------------------------------------------------------------------------------------ fingerprints


def test_fingerprint_files(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(os.urandom(3 << 20))
    (d / "README.md").write_text("hi")
    files = model_files(d)
    assert [p.name for p in files] == ["config.json", "model.safetensors"]
    fp = fingerprint_files(files)
    assert fp.startswith("sha256:") and fp == fingerprint_files(reversed(files))
    # copy elsewhere: same fingerprint; flip one byte in the middle: different
    e = tmp_path / "copy"
    e.mkdir()
    for p in files:
        (e / p.name).write_bytes(p.read_bytes())
    assert fingerprint_files(model_files(e)) == fp
    data = bytearray((e / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 1
    (e / "model.safetensors").write_bytes(bytes(data))
    assert fingerprint_files(model_files(e)) != fp


def test_hash_rows():
    rows = [{"prompt": "a", "gt": 1}, {"prompt": "b", "gt": np.int64(2)}]
    h = hash_rows(rows)
    assert h == hash_rows([{"gt": 1, "prompt": "a"}, {"gt": 2, "prompt": "b"}])  # key order, numpy ints
    assert h != hash_rows(rows[::-1])
    assert h != hash_rows(rows[:1])
    assert hash_rows([]) != hash_rows([{}])


# ------------------------------------------------------------------------------------ reward rows


def test_normalise_reward_and_candidate_row_count_errors_as_zero():
    samples = [
        normalise_reward({"score": 1.1, "acc": 1.0, "pred": "24"}),
        normalise_reward(ZeroDivisionError("division by zero")),
        normalise_reward(float("nan")),
        normalise_reward({"score": 0.1, "acc": float("nan"), "pred": 7}),
        normalise_reward(0.5, response="so it is 21.0"),
        normalise_reward({"acc": 1.0}),
    ]
    assert samples[0] == {"score": 1.1, "acc": 1.0, "pred": "24", "error": None}
    assert samples[1] == {"score": 0.0, "acc": 0.0, "pred": None, "error": "ZeroDivisionError: division by zero"}
    assert samples[2]["score"] == 0.0 and "non-finite score" in samples[2]["error"]
    assert samples[3] == {"score": 0.1, "acc": 0.0, "pred": "7", "error": "reward returned a non-finite acc (nan)"}
    assert samples[4] == {"score": 0.5, "acc": 0.5, "pred": "21", "error": None}  # float: acc = score, fallback
    assert samples[5]["score"] == 0.0 and "no 'score'" in samples[5]["error"]
    row = candidate_row(3, 1003, 0.002, samples, tokens=120, wall_s=1.5, extra={"replica": 0})
    assert row["index"] == 3 and row["n"] == 6 and row["n_errors"] == 4
    assert math.isclose(row["score"], (1.1 + 0.1 + 0.5) / 6) and math.isclose(row["acc"], 1.5 / 6)
    assert [e["prompt"] for e in row["errors"]] == [1, 2, 3, 5]
    assert row["preds"] == ["24", None, None, "7", "21", None] and row["replica"] == 0
    json.dumps(row, allow_nan=False)  # a valid strict-JSON ledger row
    slim = candidate_row(3, 1003, 0.002, samples, tokens=120, wall_s=1.5, keep_per_prompt=False)
    assert "scores" not in slim and "preds" not in slim
    with pytest.raises(ValueError, match="clash"):
        candidate_row(3, 1003, 0.002, samples, tokens=1, wall_s=1, extra={"score": 1})
