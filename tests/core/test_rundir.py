"""The run directory (randopt_verl.core.rundir): file names, manifest identity and test identity on resume."""

import json

import pytest

from randopt_verl.core.ledger import BASE, Ledger
from randopt_verl.core.manifest import ManifestMismatch, TestSetChanged
from randopt_verl.core.rundir import RunDir

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


def test_file_names_and_finished_rows(tmp_path):
    run = RunDir(tmp_path)
    assert run.ledger.path.name == "ledger.jsonl" and run.test_ledger.path.name == "test_ledger.jsonl"
    assert run.metrics_path == tmp_path / "metrics.jsonl" and run.results() is None
    assert run.console_log_path == tmp_path / "console.log" and run.progress_path == tmp_path / "progress.jsonl"
    rd = _open(tmp_path / "run", n_candidates=2)
    for i in (BASE, 0, 1, 2):
        rd.ledger.append(_row(i))
    assert sorted(rd.finished()) == [0, 1]  # the base row and rows beyond N are not candidates of this run
    rd.close()


def test_ledger_without_manifest_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    Ledger(tmp_path / "run" / "ledger.jsonl").append(_row(0))
    with pytest.raises(ValueError, match="no manifest.json"):
        _open(tmp_path / "run")


def test_write_topk_and_results(tmp_path):
    rd = _open(tmp_path / "run")
    rd.write_topk([{"index": 3}])
    rd.write_results({"base": {"test_acc": 0.5}})
    assert json.loads((tmp_path / "run" / "topk.json").read_text()) == [{"index": 3}]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["base"]["test_acc"] == 0.5
