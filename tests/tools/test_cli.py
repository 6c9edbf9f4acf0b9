"""randopt-verl CLI: export, density and compare on synthetic run directories; user mistakes exit 2 with a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from randopt_verl.core import noise
from randopt_verl.tools.cli import COMMANDS, main
from randopt_verl.core.fingerprint import fingerprint_files, model_files
from randopt_verl.core.ledger import Ledger, candidate_row

RESULTS = {
    "schema_version": 1, "n_candidates": 6, "n_selection": 4, "n_test": 4,
    "base": {"test_acc": 0.25, "selection_score": 0.25},
    "experts": [{"rank": 1, "index": 2, "seed": 2002, "sigma": 0.001, "selection_score": 0.75,
                 "selection_acc": 0.75, "test_acc": 0.5}],
    "maj_at_k": {"1": 0.5, "2": 0.75},
    "random_k": {"1": {"mean": 0.3, "std": 0.1, "draws": [0.2, 0.4], "n_population": 6, "seed": 0}},
    "base_maj_at_k": {"1": 0.25, "2": 0.25},
    "cost": {"rollouts": 60, "tokens": 1200, "wall_s": 12.0},
}


def randopt_run(root: Path, *, results: bool = True) -> Path:
    root.mkdir(parents=True)
    samples = lambda k: [{"score": float(i < k), "acc": float(i < k), "pred": str(i), "error": None}  # noqa: E731
                         for i in range(4)]
    with Ledger(root / "ledger.jsonl") as ledger:
        ledger.append(candidate_row(-1, 0, 0.0, samples(1), tokens=10, wall_s=0.1))
        for i in range(6):
            ledger.append(candidate_row(i, 1000 + i, 0.001 if i % 2 else 0.002, samples(i % 4), tokens=10,
                                        wall_s=0.1))
    if results:
        (root / "results.json").write_text(json.dumps(RESULTS))
    return root


def es_run(root: Path) -> Path:
    root.mkdir(parents=True)
    rows = [{"step": 0, "data": {"val/acc": 0.25, "cost/rollouts": 4, "cost/tokens": 80, "cost/wall_s": 1.0}},
            {"step": 1, "data": {"es/reward_mean": 0.3, "val/acc": 0.5, "cost/rollouts": 40, "cost/tokens": 800,
                                 "cost/wall_s": 9.0}}]
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_registry_has_the_commands():
    assert list(COMMANDS) == ["doctor", "demo", "export", "consolidate", "density", "compare"]


def test_density(tmp_path, capsys):
    run = randopt_run(tmp_path / "run")
    assert main(["density", str(run)]) == 0
    out = capsys.readouterr().out
    assert str(run / "density.png") in out and str(run / "maj_at_k.png") in out
    assert (run / "density.png").exists() and (run / "maj_at_k.png").exists()
    assert "best single expert" in out and "selected top-k vote" in out  # report.results_table


def test_density_without_results(tmp_path, capsys):
    run = randopt_run(tmp_path / "run", results=False)
    assert main(["density", str(run)]) == 0
    out = capsys.readouterr().out
    assert str(run / "density.png") in out and "maj_at_k.png" not in out and "best single expert" not in out


def test_compare(tmp_path, capsys):
    ro, es = randopt_run(tmp_path / "ro"), es_run(tmp_path / "es")
    md, png = tmp_path / "r" / "report.md", tmp_path / "compare.png"
    assert main(["compare", str(ro), str(es), "--out", str(md), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "75.0% [30.1, 95.4] (maj@2, n=4)" in out and "50.0% (val acc)" in out  # ES: no val/n, no config
    assert md.read_text().splitlines()[2].startswith("| ro ")
    assert png.exists()


def test_export(tiny_model, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    manifest = {"identity": {"noise_spec_version": noise.NOISE_SPEC,
                             "model_fingerprint": fingerprint_files(model_files(tiny_model))},
                "config": {"actor_rollout_ref": {"model": {"path": "/moved/elsewhere"}},
                           "randopt": {"param_filter": {"include": None, "exclude": None}}}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "topk.json").write_text(json.dumps({"k": 1, "experts": [{"rank": 1, "index": 0, "seed": 5,
                                                                     "sigma": 0.01}]}))
    out = tmp_path / "expert"
    # the recorded path moved: a clear error, then --model-path fixes it
    with pytest.raises(SystemExit) as e:
        main(["export", str(run), "--rank", "1", "--out", str(out)])
    assert e.value.code == 2
    assert "randopt-verl: base model directory /moved/elsewhere does not exist" in capsys.readouterr().err
    assert main(["export", str(run), "--rank", "1", "--out", str(out), "--model-path", tiny_model]) == 0
    assert (out / "randopt_expert.json").exists() and (out / "config.json").exists()
    assert str(out) in capsys.readouterr().out

    with pytest.raises(SystemExit) as e:
        main(["export", str(run), "--rank", "2", "--out", str(tmp_path / "x"), "--model-path", tiny_model])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("randopt-verl: rank 2 is out of range") and "1 experts" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["density", "{tmp}/nope"], "does not exist"),
    (["density", "{tmp}"], "no scored candidates"),
    (["compare", "{tmp}"], "nothing to compare"),
    (["export", "{tmp}", "--rank", "1", "--out", "{tmp}/o"], "manifest.json not found"),
])
def test_user_mistakes_exit_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main([a.format(tmp=tmp_path) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("randopt-verl: ") and message in err and "Traceback" not in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "somewhere"])  # --rank and --out missing
    assert e.value.code == 2
    assert "--rank" in capsys.readouterr().err


def test_demo_command_line_is_the_randopt_harness(tmp_path):
    """The demo runs `python -m randopt_verl.main trainer=randopt hardware=cpu ...` and its overrides compose and
    validate (files, reward, every randopt key) before anything runs."""
    from randopt_verl.tools import demo
    from randopt_verl.inprocess import compose
    from randopt_verl.assets.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny")
    preset = dict(demo.COMMON, **demo.PRESETS[demo.DEFAULT_PRESET])
    files = demo.write_data(tmp_path, preset["selection_size"], preset["test_size"])
    args = demo.overrides(str(model), files, tmp_path / "run", preset)
    assert args[:2] == ["trainer=randopt", "hardware=cpu"]
    config = compose(args)
    assert config.trainer.v1.trainer_mode == "randopt"
    assert config.randopt.population_size == preset["population_size"] >= 48
    assert (config.randopt.selection_size, config.randopt.test_size) == (128, 400)
    assert config.console.quiet is True
    assert config.actor_rollout_ref.rollout.name == "hf"


def test_demo_summary_is_the_report_table_once(tmp_path):
    from randopt_verl.core import report
    from randopt_verl.core import plots
    from randopt_verl.tools import demo

    run = randopt_run(tmp_path / "run")
    plots.draw(run)
    text = demo.summary(run)
    assert text.startswith(report.results_table(RESULTS))  # the one renderer, from results.json
    assert text.count("selected top-k vote") == 1 and text.count("| cost ") == 1
    assert [line for line in text.splitlines() if line.startswith("plot: ")] == [
        f"plot: {run / 'density.png'}", f"plot: {run / 'maj_at_k.png'}"]


def test_accuracy_vs_n_is_drawn_when_the_run_has_it(tmp_path):
    from randopt_verl.core import plots

    run = randopt_run(tmp_path / "run")
    curve = {"ns": [2, 4], "full_n": 4, "extra_test_passes": 1, "by_n": {
        str(n): {"experts": [0, 1], "maj_at_k": {"1": 0.25 * n / 2, "2": 0.0},
                 # Wilson's lower bound at an accuracy of 0 is a rounding error above it (2.8e-17)
                 "maj_at_k_ci95": {"1": [0.0, 0.9], "2": [2.7755575615628914e-17, 0.9]}, "vs_full_n": {}}
        for n in (2, 4)}}
    (run / "results.json").write_text(json.dumps(dict(RESULTS, accuracy_vs_n=curve)))
    written = plots.draw(run)
    assert written[-1] == run / "accuracy_vs_n.png" and written[-1].stat().st_size > 0
    # without it, no such picture
    other = randopt_run(tmp_path / "other")
    assert [p.name for p in plots.draw(other)] == ["density.png", "maj_at_k.png"]


def test_consolidate_config_is_the_runs_own_with_consolidation_on(tmp_path, capsys):
    from randopt_verl.tools.consolidate import consolidation_config

    run = tmp_path / "run"
    run.mkdir()
    config = {"trainer": {"v1": {"trainer_mode": "randopt"}}, "randopt": {"seed": 3, "run_dir": "/elsewhere"}}
    (run / "manifest.json").write_text(json.dumps({"config": config}))
    with pytest.raises(FileNotFoundError, match="has not finished"):
        consolidation_config(run)
    (run / "topk.json").write_text(json.dumps({"k": 1, "experts": []}))
    cfg = consolidation_config(run, ["randopt.consolidate.over=population", "randopt.consolidate.scales=[1,4]"])
    assert cfg.randopt.consolidate.enabled is True and cfg.randopt.consolidate.over == "population"
    assert list(cfg.randopt.consolidate.scales) == [1, 4] and cfg.randopt.seed == 3
    assert cfg.randopt.run_dir == str(run.resolve())  # wherever the run directory lives now
    with pytest.raises(ValueError, match="only randopt.consolidate"):
        consolidation_config(run, ["randopt.seed=4"])
    with pytest.raises(ValueError, match="scales"):
        consolidation_config(run, ["randopt.consolidate.scales=[0]"])
    # through the command line: one line, status 2, before anything starts
    with pytest.raises(SystemExit) as exit_:
        main(["consolidate", str(run), "randopt.consolidate.weighting=softmax"])
    assert exit_.value.code == 2 and "weighting" in capsys.readouterr().err
