"""The crash-safe ledger (randopt_verl.core.ledger): torn tails, duplicates, the write lock, SIGKILL, row format."""

import json
import os
import math
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from randopt_verl.core.ledger import BASE, Ledger, LedgerBusy, base_sample_index, candidate_row, verify_rows
from randopt_verl.core.vote import normalise_reward

REPO = Path(__file__).resolve().parents[2]


def _row(i, score=0.5, **kw):
    return {"index": i, "seed": 1000 + i, "sigma": 0.001, "score": score, **kw}


def test_index_conventions():
    assert BASE == -1 and [base_sample_index(s) for s in range(3)] == [-2, -3, -4]


def test_verify_rows_against_population():
    rows = [_row(0), _row(1)]
    verify_rows(rows, [(1000, 0.001), (1001, 0.001)])
    verify_rows(rows, [(1000, 0.001)])  # index 1 outside the population: not checked
    with pytest.raises(ValueError, match=r"candidate 1: ledger \(seed=1001, sigma=0.001\) vs population"):
        verify_rows(rows, [(1000, 0.001), (1001, 0.002)])


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
    from randopt_verl.core.ledger import Ledger
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


# ------------------------------------------------------------------------------------------- incremental reads


def _same_as_a_full_read(led):
    """led.read() (incremental) equals a fresh Ledger's read of the same file, field for field."""
    inc, full = led.read(), Ledger(led.path).read()
    assert inc.rows == full.rows and inc.by_index == full.by_index
    assert inc.duplicates == full.duplicates and inc.bad_lines == full.bad_lines and inc.torn_tail == full.torn_tail
    return inc


def test_incremental_read_equals_a_full_read_across_appends_torn_tails_and_bad_lines(tmp_path):
    path = tmp_path / "l.jsonl"
    reader = Ledger(path)
    assert _same_as_a_full_read(reader).rows == []
    rng = random.Random(7)
    with Ledger(path) as writer:
        for i in range(40):
            writer.append(_row(rng.randrange(30), score=i / 40, pad="x" * rng.randrange(200)))  # some duplicates
            if i % 7 == 3:
                with open(path, "ab") as f:  # a foreign line: not JSON, or JSON without an integer index
                    f.write(b"garbage\n" if i % 2 else b'{"index": "3"}\n\n')
            if i % 3 == 0:
                _same_as_a_full_read(reader)
    c = _same_as_a_full_read(reader)
    assert c.duplicates and c.bad_lines and not c.torn_tail
    with open(path, "ab") as f:
        f.write(b'{"index": 99, "seed": 1')  # a writer killed mid-row
    assert _same_as_a_full_read(reader).torn_tail
    with open(path, "ab") as f:
        f.write(b"\n")  # another line glued onto the torn one: a bad line, as a full read sees it
    c = _same_as_a_full_read(reader)
    assert not c.torn_tail and c.bad_lines[-1] == path.read_bytes().count(b"\n")
    with open(path, "ab") as f:
        f.write(b'{"index": 98, "seed": 1')
    _same_as_a_full_read(reader)
    with Ledger(path) as writer:  # the next writer cuts the torn line off, then appends
        writer.append(_row(98))
    assert 98 in _same_as_a_full_read(reader).by_index


@pytest.mark.parametrize("change", ["atomic_rewrite", "truncate", "delete_and_recreate", "same_size_in_place"])
def test_incremental_read_after_the_file_was_rewritten(tmp_path, change):
    from randopt_verl.core.jsonio import write_jsonl
    path = tmp_path / "l.jsonl"
    with Ledger(path) as writer:
        for i in range(5):
            writer.append(_row(i))
    reader = Ledger(path)
    assert len(reader.read().rows) == 5
    if change == "atomic_rewrite":  # keep_until's way: a new file renamed over the old one
        write_jsonl(path, [_row(0), _row(7), _row(8), _row(9), _row(10), _row(11)])
    elif change == "truncate":
        os.truncate(path, len(path.read_bytes().split(b"\n", 2)[0]) + 1)
    elif change == "delete_and_recreate":  # reset_consolidation's way; the inode number may come back
        path.unlink()
        with Ledger(path) as writer:
            for i in range(10, 17):
                writer.append(_row(i))
    else:  # same length, other rows: only the last line's check can tell
        data = path.read_bytes()
        path.write_bytes(data.replace(b'"index":4', b'"index":6').replace(b'"seed":1004', b'"seed":1006'))
    c = _same_as_a_full_read(reader)
    assert [r["index"] for r in c.rows] == [r["index"] for r in Ledger(path).read().rows]


def test_a_second_read_parses_only_the_appended_bytes(tmp_path, monkeypatch):
    import randopt_verl.core.ledger as ledger_mod
    path = tmp_path / "l.jsonl"
    with Ledger(path) as writer:
        for i in range(50):
            writer.append(_row(i, pad="y" * 100))
    reader = Ledger(path)
    parsed = []
    real = ledger_mod.parse_jsonl
    monkeypatch.setattr(ledger_mod, "parse_jsonl", lambda data, **kw: parsed.append(len(data)) or real(data, **kw))
    assert len(reader.read().rows) == 50 and parsed == [path.stat().st_size]
    size, k = path.stat().st_size, 3
    with Ledger(path) as writer:
        for i in range(50, 50 + k):
            writer.append(_row(i, pad="y" * 100))
    parsed.clear()
    assert len(reader.read().rows) == 50 + k
    assert parsed == [path.stat().st_size - size]  # the k new rows' bytes, nothing before them
    parsed.clear()
    assert len(reader.read().rows) == 50 + k and parsed == []  # nothing appended: nothing parsed


def test_read_results_do_not_alias_the_ledgers_state(tmp_path):
    path = tmp_path / "l.jsonl"
    with Ledger(path) as led:
        led.append(_row(0))
        led.append(_row(0, score=0.9))
        first = led.read()
        first.rows.clear()
        first.duplicates.append(_row(5))
        first.by_index[7] = _row(7)
        led.append(_row(1))
        c = led.read()
    assert [r["index"] for r in c.rows] == [0, 1] and [r["score"] for r in c.duplicates] == [0.9]


def test_delete_forgets_the_rows(tmp_path):
    path = tmp_path / "l.jsonl"
    led = Ledger(path)
    led.append(_row(0))
    assert len(led.read().rows) == 1
    led.delete()
    assert not path.exists() and led.read().rows == []
    led.append(_row(3))
    assert [r["index"] for r in led.read().rows] == [3]
    led.close()
