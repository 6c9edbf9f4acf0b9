"""randopt-verl demo: the paired comparison it prints from the ledgers, and (slow) the whole demo's console on the
tiny model: few lines, verl's output in the run's console.log, an error with its fix and the log's path."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from randopt_verl.core import stats, vote
from randopt_verl.core.rundir import BASE, Ledger, candidate_row
from randopt_verl.tools import demo

N_PROMPTS = 40


def _answers(member: int) -> list[dict]:
    """Member m answers prompt p correctly on a fixed pattern; wrong answers differ between members."""
    out = []
    for p in range(N_PROMPTS):
        right = (p * (member + 3)) % 5 < (3 if member in (2, 3) else 1)
        out.append({"score": float(right), "acc": float(right), "pred": "ok" if right else f"w{member}.{p % 3}",
                    "error": None})
    return out


def _run(tmp_path: Path) -> tuple[Path, dict, dict]:
    run = tmp_path / "run"
    run.mkdir()
    with Ledger(run / "test_ledger.jsonl") as ledger:
        for m in [BASE, *range(6)]:
            ledger.append(candidate_row(m, 100 + m, 0.002, _answers(m), tokens=1, wall_s=0.1))
    rows = Ledger(run / "test_ledger.jsonl").read().by_index
    table = {m: list(zip(r["preds"], r["accs"])) for m, r in rows.items()}
    ranked = [2, 3, 0, 1]
    results = {"experts": [{"index": i} for i in ranked],
               "random_k": {str(k): vote.random_k(table, list(range(6)), k, 30, seed=7) for k in (1, 2, 4)}}
    return run, results, rows


def test_paired_votes_uses_random_ks_own_draws(tmp_path):
    _, results, rows = _run(tmp_path)
    text = demo.paired_votes(results, rows)
    table = {m: list(zip(r["preds"], r["accs"])) for m, r in rows.items()}
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
             for line in text.splitlines() if re.match(r"\| \d", line)}
    assert sorted(lines) == ["1", "2", "4"]
    for k in (1, 2, 4):
        top = [o.acc for o in vote.ensemble_outcomes(table, [2, 3, 0, 1][:k])]
        lo, hi = stats.accuracy_ci(top)
        assert lines[str(k)][0] == f"{100 * sum(top) / len(top):.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
        # the random-k column's point estimate is random_k's mean: the same draws, prompt by prompt
        assert lines[str(k)][1].startswith(f"{100 * results['random_k'][str(k)]['mean']:.1f}%")
        diff = 100 * (sum(top) / len(top) - results["random_k"][str(k)]["mean"])
        m = re.match(r"([+-]\d+\.\d) pts \[([+-]\d+\.\d), ([+-]\d+\.\d)\]", lines[str(k)][2])
        assert m and abs(float(m.group(1)) - diff) < 0.051 and float(m.group(2)) <= float(m.group(1)) <= float(m.group(3))
    assert f"over the {N_PROMPTS} test prompts" in text


def test_summary_renders_the_trainers_intervals_when_results_has_them(tmp_path):
    run, results, rows = _run(tmp_path)
    base = {"test_acc": 0.2, "ci95": [0.1, 0.35], "selection_score": 0.2}
    plain = dict(results, base=base, maj_at_k={"1": 0.6}, n_test=N_PROMPTS)
    (run / "results.json").write_text(json.dumps(plain))
    assert "top-k − random-k, paired" in demo.summary(run)  # no "paired" block: the demo computes the comparison
    paired = dict(plain, paired={"maj_at_k_vs_random_k": {"1": {"diff": 0.1, "ci95": [0.0, 0.2], "n": 40}}})
    (run / "results.json").write_text(json.dumps(paired))
    assert "top-k − random-k, paired" not in demo.summary(run)  # the trainer's block is the one rendered


def test_presets_have_distinct_data_of_their_size(tmp_path):
    evidence = demo.PRESETS["evidence"]
    assert evidence["population_size"] >= 48 and evidence["selection_size"] >= 128 and evidence["test_size"] >= 400
    files = demo.write_data(tmp_path, evidence["selection_size"], evidence["test_size"])
    import pandas as pd

    sel, test = (pd.read_parquet(files[s]) for s in ("train", "test"))
    prompts = [row[0]["content"] for row in list(sel["prompt"]) + list(test["prompt"])]
    assert (len(sel), len(test)) == (128, 400) and len(set(prompts)) == 528


@pytest.mark.slow
def test_demo_console_is_short_and_the_log_has_verls_lines(tmp_path, tiny_model):
    """The demo on the tiny model (quick preset, 4 candidates): at most 150 console lines, the table once, Ray's
    and verl's output in console.log; then main in quiet mode on the same run directory with another search: the
    error (with its fix) and the log's path reach the console."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "randopt_verl.tools.cli", "demo", "--out", str(out), "--model",
                           tiny_model, "--preset", "quick", "--population", "4"],
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
