"""randopt-verl demo: its presets' data, the table it prints, and (slow) the whole demo's console on the
tiny model: few lines, verl's output in the run's console.log, an error with its fix and the log's path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from randopt_verl.tools import demo

def test_summary_renders_the_paired_comparison_of_the_votes(tmp_path):
    """The demo prints the trainer's results table (core.report), whose paired block compares the selected top-k
    vote with the random-k vote on the same test prompts."""
    run = tmp_path / "run"
    run.mkdir()
    results = {"base": {"test_acc": 0.2, "ci95": [0.1, 0.35]}, "maj_at_k": {"1": 0.3}, "n_test": 40,
               "paired": {"maj_at_k_vs_random_k": {"1": {"diff": 0.05, "ci95": [0.034, 0.07], "n": 40,
                                                         "n_boot": 2000}}}}
    (run / "results.json").write_text(json.dumps(results))
    text = demo.summary(run)
    assert "| selected top-1 vote − random-1 vote (mean over draws) | +5.0 pts [+3.4, +7.0]" in text
    assert "20.0% [10.0, 35.0]" in text and text.count("| cost ") == 1


def test_presets_have_distinct_data_of_their_size(tmp_path):
    evidence = demo.PRESETS["evidence"]
    assert evidence["population_size"] >= 48 and evidence["selection_size"] >= 128 and evidence["test_size"] >= 400
    files = demo.write_data(tmp_path, evidence["selection_size"], evidence["test_size"])
    import pandas as pd

    sel, test = (pd.read_parquet(files[s]) for s in ("train", "test"))
    prompts = [row[0]["content"] for row in list(sel["prompt"]) + list(test["prompt"])]
    assert (len(sel), len(test)) == (128, 400) and len(set(prompts)) == 528


def test_demo_runs_one_replica_per_core_up_to_two(monkeypatch, tmp_path):
    """The demo's replicas become verl's trainer.n_gpus_per_node (one rollout replica and FSDP rank each)."""
    monkeypatch.setattr(demo.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert demo.default_replicas() == 2
    monkeypatch.setattr(demo.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert demo.default_replicas() == 1
    args = demo.overrides("m", {"train": "a", "test": "b"}, tmp_path, {**demo.COMMON, **demo.PRESETS["quick"]}, 2)
    assert "trainer.n_gpus_per_node=2" in args and args.count("hardware=cpu") == 1
    assert demo.run(out=str(tmp_path / "x"), replicas=0) == 2


def test_demo_with_halving_passes_doctor_and_keeps_its_own_run_directory(tiny_model, tmp_path, monkeypatch):
    """--selection halving becomes randopt.selection.strategy=halving, a config doctor passes for both presets; a
    bad value stops before anything runs."""
    import io

    from randopt_verl import preflight

    for name in demo.PRESETS:
        preset = demo.sized(name)
        files = demo.write_data(tmp_path, preset["selection_size"], preset["test_size"])
        args = demo.overrides(tiny_model, files, tmp_path / "run", preset, 1, "halving")
        assert "randopt.selection.strategy=halving" in args
        out = io.StringIO()
        assert preflight.doctor(args, config_only=True, out=out) == 0, out.getvalue()
    assert demo.run(out=str(tmp_path / "x"), selection="race") == 2
    # the run directory: its own, next to the full search's
    seen = {}
    monkeypatch.setattr(demo.subprocess, "run", lambda cmd, env: seen.setdefault("cmd", cmd) and
                        type("P", (), {"returncode": 2})())
    demo.run(out=str(tmp_path / "y"), model=tiny_model, preset_name="quick", replicas=1, selection="halving")
    assert f"randopt.run_dir={(tmp_path / 'y' / 'run_quick_halving').resolve()}" in seen["cmd"]


@pytest.mark.parametrize("population", [1, 2, 3, 48])
def test_any_population_gives_a_config_doctor_passes(population, tiny_model, tmp_path):
    """--population N caps top-K, the control population and the vote sizes (ensemble_ks [1,2,4] with N=2 was
    refused at start-up: every k must be <= K)."""
    import io

    from randopt_verl import preflight

    preset = demo.sized("quick", population)
    assert max(preset["ensemble_ks"]) <= preset["top_k"] <= population
    args = demo.overrides(tiny_model, demo.write_data(tmp_path, 48, 160), tmp_path / "run", preset, 1)
    out = io.StringIO()
    assert preflight.doctor(args, config_only=True, out=out) == 0, out.getvalue()


@pytest.mark.slow
def test_demo_console_is_short_and_the_log_has_verls_lines(tmp_path, tiny_model):
    """The demo on the tiny model (quick preset, 4 candidates): at most 150 console lines, the table once, Ray's
    and verl's output in console.log; then main in quiet mode on the same run directory with another search: the
    error (with its fix) and the log's path reach the console."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "randopt_verl.tools.cli", "demo", "--out", str(out), "--model",
                           tiny_model, "--preset", "quick", "--population", "4", "--replicas", "1"],
                          capture_output=True, text=True, timeout=900)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    lines = console.splitlines()
    assert len(lines) <= 150, console
    assert console.count("| cost ") == 1 and "randopt candidates: 4/4 in " in console
    log = (out / "run_quick" / "console.log").read_text()
    assert "ray init kwargs" in log and "(TaskRunner" in log and "randopt: run directory" in log
    assert "(TaskRunner" not in console and "ray init kwargs" not in console
    print(console)  # shown with pytest -rP

    args = demo.overrides(tiny_model, demo.write_data(out, 48, 160), out / "run_quick",
                          {**demo.COMMON, **demo.PRESETS["quick"], "population_size": 4,
                           "control_population": 4, "seed": 1})
    proc = subprocess.run([sys.executable, "-m", "randopt_verl.main", *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1
    assert "created for a different search" in proc.stdout and "population_seed" in proc.stdout
    assert f"full log: {out / 'run_quick' / 'console.log'}" in proc.stdout
    assert len((proc.stdout + proc.stderr).splitlines()) <= 30, proc.stdout + proc.stderr
