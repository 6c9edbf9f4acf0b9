"""compare: the three trainers' run directories read into one shape, tabled and plotted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from randopt_verl.tools.compare import load_run, plot, report


def randopt_run(root: Path) -> Path:
    root.mkdir(parents=True)
    results = {
        "schema_version": 1, "n_candidates": 100, "n_selection": 20, "n_test": 40,
        "base": {"test_acc": 0.25, "selection_score": 0.2},
        "experts": [{"rank": 1, "index": 4, "seed": 11, "sigma": 0.001, "selection_score": 0.5,
                     "selection_acc": 0.5, "test_acc": 0.4}],
        "maj_at_k": {"1": 0.4, "8": 0.525, "4": 0.45},
        "base_maj_at_k": {"1": 0.2, "4": 0.3, "8": 0.3},
        "cost": {"rollouts": 2360, "tokens": 150000, "wall_s": 3725.5},
    }
    (root / "results.json").write_text(json.dumps(results))
    # the search's own progress log sits beside it; results.json is what counts
    (root / "metrics.jsonl").write_text(json.dumps({"step": 100, "data": {"meta/method": "randopt"}}) + "\n")
    return root


def jsonl(root: Path, rows: list[dict], torn: str = "") -> Path:
    root.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in rows) + torn
    (root / "metrics.jsonl").write_text(text)
    return root


def cost(r: int, t: int, w: float) -> dict:
    return {"cost/rollouts": r, "cost/tokens": t, "cost/wall_s": w}


def es_run(root: Path) -> Path:
    return jsonl(root, [
        {"step": 0, "data": {"val/acc": 0.25, "val/score": 0.3, **cost(40, 2000, 10.0)}},
        {"step": 1, "data": {"es/reward_mean": 0.2, **cost(440, 22000, 100.0)}},
        {"step": 2, "data": {"es/reward_mean": 0.3, "val/acc": 0.3, "val/n": 60, **cost(880, 44000, 200.0)}},
        {"step": 3, "data": {"es/reward_mean": 0.3, **cost(1280, 64000, 290.0)}},
    ], torn='{"step": 4, "data": {"es/reward_mean": 0.4, "cost/roll')  # killed mid-write


def grpo_run(root: Path) -> Path:
    return jsonl(root, [
        # verl's validation before training: no cost keys yet, two data sources averaged
        {"step": 0, "data": {"val-core/gsm8k/acc/mean@1": 0.2, "val-core/math/acc/mean@1": 0.3}},
        {"step": 1, "data": {"actor/pg_loss": 0.1, **cost(128, 9000, 50.0)}},
        {"step": 2, "data": {"actor/pg_loss": 0.1, "val-core/gsm8k/acc/mean@1": 0.4,
                             "val-core/math/acc/mean@1": 0.5, "val-aux/gsm8k/reward/mean@1": 0.9,
                             **cost(256, 18000, 100.0)}},
    ])


@pytest.fixture
def runs(tmp_path) -> list[dict]:
    return [load_run(randopt_run(tmp_path / "ro")), load_run(es_run(tmp_path / "es")),
            load_run(grpo_run(tmp_path / "grpo"))]


def test_randopt_run(runs):
    r = runs[0]
    assert r["method"] == "randopt" and r["name"] == "ro"
    assert r["final"] == {"accuracy": 0.525, "rollouts": 2360, "tokens": 150000, "wall_s": 3725.5, "n": 40,
                          "ci95": [pytest.approx(0.37497, abs=1e-5), pytest.approx(0.67065, abs=1e-5)]}
    assert r["accuracy_label"] == "maj@8"
    assert r["maj_at_k"] == {1: 0.4, 4: 0.45, 8: 0.525}
    assert r["base_accuracy"] == 0.25
    assert r["curve"] == [(0, 0, 0.0, 0.25), (2360, 150000, 3725.5, 0.525)]


def test_es_run_skips_torn_line(runs):
    r = runs[1]
    assert r["method"] == "es"
    assert r["curve"] == [(40, 2000, 10.0, 0.25), (880, 44000, 200.0, 0.3)]
    assert r["final"] == {"accuracy": 0.3, "rollouts": 880, "tokens": 44000, "wall_s": 200.0, "n": 60,
                          "ci95": [pytest.approx(0.19898, abs=1e-5), pytest.approx(0.42509, abs=1e-5)]}
    assert r["base_accuracy"] == 0.25 and r["maj_at_k"] is None


def test_grpo_run(runs):
    r = runs[2]
    assert r["method"] == "grpo"
    assert r["curve"] == [(0, 0, 0.0, 0.25), (256, 18000, 100.0, 0.45)]
    assert r["base_accuracy"] == 0.25
    assert r["final"]["accuracy"] == 0.45
    assert r["final"]["n"] is None and r["final"]["ci95"] is None  # no config to count its test prompts from


def test_method_field_wins(tmp_path):
    r = load_run(jsonl(tmp_path / "x", [{"step": 1, "data": {"meta/method": "grpo", "es/foo": 1, "val/acc": 0.5,
                                                             **cost(1, 2, 3.0)}}]))
    assert r["method"] == "grpo" and r["base_accuracy"] is None


def test_report_table(runs):
    text = report(runs)
    lines = text.splitlines()
    assert lines[0].split("|")[1].strip() == "run"
    body = [ln for ln in lines[2:5]]
    assert [ln.split("|")[1].strip() for ln in body] == ["ro", "es", "grpo"]  # the order given
    ro, es, grpo = ([c.strip() for c in ln.split("|")[1:-1]] for ln in body)
    assert ro == ["ro", "randopt", "52.5% [37.5, 67.1] (maj@8, n=40)", "@1 40.0%, @4 45.0%, @8 52.5%", "25.0%",
                  "2.36k", "150.00k", "1h02m"]
    assert es == ["es", "es", "30.0% [19.9, 42.5] (val acc, n=60)", "-", "25.0%", "880", "44.00k", "3m20s"]
    assert grpo == ["grpo", "grpo", "45.0% (val acc)", "-", "25.0%", "256", "18.00k", "1m40s"]
    assert "maj@K" in text


def test_plot_written(runs, tmp_path):
    out = plot(runs, tmp_path / "figs" / "compare.png")
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"


def test_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither results.json.*nor metrics.jsonl"):
        load_run(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "missing")
    unfinished = jsonl(tmp_path / "ro_unfinished", [{"step": 3, "data": {"meta/method": "randopt",
                                                                         **cost(30, 300, 3.0)}}])
    with pytest.raises(ValueError, match="has not finished"):
        load_run(unfinished)
    with pytest.raises(ValueError, match="no validation accuracy"):
        load_run(jsonl(tmp_path / "noval", [{"step": 1, "data": {"es/x": 1, **cost(1, 1, 1.0)}}]))


def test_jsonl_file_directly(tmp_path):
    run = grpo_run(tmp_path / "g")
    r = load_run(run / "metrics.jsonl")
    assert r["method"] == "grpo" and r["name"] == "metrics"


def _seeded(root: Path, seed: int, acc: float, *, top_k: int = 4, method_file: str = "manifest") -> Path:
    """A finished RandOpt run whose manifest config differs from its siblings' in the seed (and its own names)."""
    randopt_run(root)
    res = json.loads((root / "results.json").read_text())
    res["maj_at_k"] = {"8": acc}
    (root / "results.json").write_text(json.dumps(res))
    config = {"randopt": {"seed": seed, "top_k": top_k, "run_dir": str(root)},
              "actor_rollout_ref": {"rollout": {"seed": 42}},
              "trainer": {"default_local_dir": str(root), "experiment_name": root.name, "logger": ["console"]}}
    (root / "manifest.json").write_text(json.dumps({"config": config}))
    return root


def test_runs_that_differ_only_in_their_seed_are_grouped(tmp_path):
    from randopt_verl.tools.compare import group_by_seed

    runs = [load_run(_seeded(tmp_path / f"s{s}", s, acc)) for s, acc in [(0, 0.5), (1, 0.6), (2, 0.7)]]
    runs.append(load_run(_seeded(tmp_path / "other", 0, 0.9, top_k=8)))  # another setting: its own group
    groups = group_by_seed(runs)
    assert [g["n"] for g in groups] == [3, 1]
    g = groups[0]
    assert g["runs"] == ["s0", "s1", "s2"] and g["seeds"] == [{"randopt.seed": s} for s in (0, 1, 2)]
    assert g["accuracy"]["mean"] == pytest.approx(0.6) and g["accuracy"]["sd"] == pytest.approx(0.1)
    assert g["accuracy"]["n"] == 3 and g["rollouts"]["sd"] == 0.0
    text = report(runs)
    assert "60.0% ± 10.0% (n=3)" in text and "randopt.seed=0; randopt.seed=1; randopt.seed=2" in text
    assert str(plot(runs, tmp_path / "c.png")).endswith("c.png")


def test_grpo_config_json_and_runs_without_config(tmp_path):
    from randopt_verl.core.rundir import RunDir
    from randopt_verl.tools.compare import group_by_seed

    rows = [{"step": 0, "data": {"val-core/x/acc/mean@1": 0.1}},
            {"step": 1, "data": {**cost(10, 100, 1.0), "actor/loss": 0.5, "val-core/x/acc/mean@1": 0.3}}]
    dirs = []
    for seed in (1, 2):
        d = jsonl(tmp_path / f"g{seed}", rows)
        RunDir(d).write_config({"data": {"seed": seed}, "actor_rollout_ref": {"actor": {"data_loader_seed": seed}},
                                "trainer": {"default_local_dir": str(d)}})
        dirs.append(d)
    bare = jsonl(tmp_path / "bare", rows)  # no config: never grouped with anything
    groups = group_by_seed([load_run(d) for d in dirs + [bare]])
    assert [g["n"] for g in groups] == [2, 1]
    assert groups[0]["seeds"][0] == {"actor_rollout_ref.actor.data_loader_seed": 1, "data.seed": 1}


def test_validation_prompts_counted_from_the_config_when_the_metrics_do_not_say(tmp_path):
    """GRPO (verl's validation logs no count) and ES runs from before val/n: n is the smaller of the cap in the
    config and the rows of data.val_files, and gives the interval; unreadable files leave the cap alone."""
    import pandas as pd

    from randopt_verl.core.rundir import RunDir

    val = tmp_path / "val.parquet"
    pd.DataFrame({"x": range(20)}).to_parquet(val)
    rows = [{"step": 1, "data": {**cost(10, 100, 1.0), "actor/loss": 0.5, "val-core/x/acc/mean@1": 0.45}}]
    cases = [("grpo", {"data": {"val_files": [str(val)], "val_max_samples": 100}}, 20),
             ("grpo", {"data": {"val_files": str(val), "val_max_samples": 8}}, 8),
             ("grpo", {"data": {"val_files": [str(tmp_path / "gone.parquet")], "val_max_samples": 12}}, 12),
             ("es", {"data": {"val_files": [str(val)]}, "es": {"test_size": None}}, 20)]
    for i, (method, config, n) in enumerate(cases):
        d = jsonl(tmp_path / f"run{i}", [{"step": 1, "data": {**rows[0]["data"], "meta/method": method}}])
        RunDir(d).write_config(config)
        final = load_run(d)["final"]
        assert final["n"] == n, (config, final)
    d = jsonl(tmp_path / "twenty", rows)
    RunDir(d).write_config(cases[0][1])
    assert "45.0% [25.8, 65.8] (val acc, n=20)" in report([load_run(d)])
