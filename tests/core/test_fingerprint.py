"""Model and prompt-set fingerprints (randopt_verl.core.fingerprint)."""

import os

import numpy as np

from randopt_verl.core.fingerprint import fingerprint_files, hash_rows, model_files


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
