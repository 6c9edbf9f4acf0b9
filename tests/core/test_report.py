"""The report module (randopt_verl.core.report): one format per kind of number, and the tables built from it."""

from __future__ import annotations

import json

from randopt_verl.core.report import compare_table, count, duration, markdown, pct, results_table


def test_number_formats():
    assert [pct(x) for x in (0.525, 0, 1, None, float("nan"), "x")] == ["52.5%", "0.0%", "100.0%", "-", "-", "-"]
    assert [count(x) for x in (0, 999, 1000, 2360, 150_000, 12_345_678, 3e9, None)] == [
        "0", "999", "1.00k", "2.36k", "150.00k", "12.35M", "3.00G", "-"]
    assert [duration(x) for x in (4.24, 59.9, 200, 3725.5, None)] == ["4.2s", "59.9s", "3m20s", "1h02m", "-"]


def test_markdown_pads_columns():
    text = markdown(["a", "bb"], [["xxx", "y"], ["z", ""]])
    assert text.splitlines() == ["| a   | bb |", "|-----|----|", "| xxx | y  |", "| z   |    |"]


def test_compare_table_uses_the_same_formats():
    run = {"name": "ro", "method": "randopt", "accuracy_label": "maj@8", "maj_at_k": {1: 0.4, 8: 0.525},
           "base_accuracy": 0.25, "final": {"accuracy": 0.525, "rollouts": 2360, "tokens": 150000, "wall_s": 3725.5}}
    row = [c.strip() for c in compare_table([run]).splitlines()[2].split("|")[1:-1]]
    assert row == ["ro", "randopt", "52.5% (maj@8)", "@1 40.0%, @8 52.5%", "25.0%", "2.36k", "150.00k", "1h02m"]


def test_results_table_renders_every_row_from_json():
    results = {
        "schema_version": 1,
        "n_candidates": 500, "n_selection": 200, "n_test": 2000,
        "base": {"test_acc": 0.1234, "selection_score": 0.2},
        "experts": [
            {"rank": 1, "index": 17, "seed": 99, "sigma": 0.001, "selection_score": 0.6, "selection_acc": 0.5,
             "test_acc": 0.31},
            {"rank": 2, "index": 4, "seed": 12, "sigma": 0.002, "selection_score": 0.55, "selection_acc": 0.5,
             "test_acc": 0.35},
        ],
        "maj_at_k": {1: 0.31, 2: 0.40},
        "random_k": {1: {"mean": 0.11, "std": 0.02, "draws": [0.1, 0.12], "n_population": 64, "seed": 0},
                     2: {"mean": 0.15, "std": 0.03, "draws": [0.12, 0.18], "n_population": 64, "seed": 0}},
        "base_maj_at_k": {2: 0.2},
        "fraction_beating_base_by_sigma": {"0.001": {"n": 250, "beating": 25, "fraction": 0.1},
                                           "0.002": {"n": 250, "beating": 5, "fraction": 0.02}},
        "cost": {"rollouts": 100_000, "tokens": 12_345_678, "wall_s": 3725.5},
        "test_cost": {"rollouts": 2_000, "tokens": 999, "wall_s": 65.0},
    }
    # what results.json holds after a round trip has string keys: render that
    text = results_table(json.loads(json.dumps(results)))
    assert text == results_table(results)
    lines = text.splitlines()
    for needle in [
        "base model (greedy)", "12.3%",
        "best single expert", "#17", "31.0%",
        "chosen on test", "#4", "35.0%",
        "candidates searched (N)", "500",
        "random-k control drew from 64 evaluated candidates",
        "| 1 ", "| 2 ", "40.0%", "11.0% ± 2.0% (2 draws)", "15.0% ± 3.0% (2 draws)", "20.0%",
        "0.001", "10.0%", "0.002", "2.0%",
        "| search ", "100.00k", "12.35M", "1h02m", "| test answers and controls ", "2.00k", "999", "1m05s",
    ]:
        assert needle in text, needle
    # the k=1 row has no base maj@k: rendered as "-"
    k1 = next(line for line in lines if line.startswith("| 1 "))
    assert k1.split("|")[-2].strip() == "-"
    # aligned: every line of a table has the same width
    for block in text.strip().split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        assert len({len(r) for r in rows}) <= 1, block


def test_results_table_with_only_base():
    text = results_table({"base": {"test_acc": 0.5}})
    assert "50.0%" in text and "best single expert" in text and "rollouts" in text


def test_results_table_says_what_halving_stopped_and_saved():
    results = {"base": {"test_acc": 0.5}, "n_candidates": 7, "n_selection": 64,
               "selection": {"strategy": "halving", "rule": {"block_size": 16}, "n_candidates": 24, "n_stopped": 17,
                             "n_survivors": 7, "rollouts": 700, "full_rollouts": 1536, "rollouts_saved": 836,
                             "rollouts_ratio": 700 / 1536}}
    text = results_table(results)
    for needle in ["| candidates searched (N)", "| 24 ", "stopped early by halving", "| 17 ", "700 / 1.54k (45.6%; "
                   "saved 836)", "| candidates scored on the whole selection set", "| 7 "]:
        assert needle in text, needle
    # a full search keeps its one row for N
    full = results_table({"base": {"test_acc": 0.5}, "n_candidates": 24, "selection": {"strategy": "full"}})
    assert "candidates searched (N)" in full and "halving" not in full


def test_results_table_shows_accuracy_vs_n_with_intervals():
    curve = {"ns": [6, 12], "full_n": 12, "extra_test_passes": 3, "by_n": {
        "6": {"maj_at_k": {"1": 0.1, "4": 0.2}, "maj_at_k_ci95": {"1": [0.05, 0.2], "4": [0.1, 0.3]},
              "vs_full_n": {"4": {"diff": -0.05, "ci95": [-0.1, 0.0]}}},
        "12": {"maj_at_k": {"1": 0.15, "4": 0.25}, "maj_at_k_ci95": {"1": [0.1, 0.2], "4": [0.2, 0.3]},
               "vs_full_n": {"4": {"diff": 0.0, "ci95": [0.0, 0.0]}}}}}
    text = results_table({"base": {"test_acc": 0.5}, "accuracy_vs_n": curve})
    for needle in ["| N (ledger prefix)", "top-4 vote - at N = 12 (paired)", "| 6 ", "10.0% [5.0, 20.0]",
                   "-5.0 pts [-10.0, +0.0]", "3 extra experts' test passes"]:
        assert needle in text, needle


def test_results_table_shows_the_dev_chosen_sigma_beside_the_mixed_default():
    sc = {"strategy": "dev", "dev_size": 32, "chosen_sigma": 0.004, "experts": [1, 5],
          "by_sigma": {"0.002": {"experts": [2, 4], "dev_vote_acc": 0.25, "dev_ci95": [0.1, 0.4]},
                       "0.004": {"experts": [1, 5], "dev_vote_acc": 0.5, "dev_ci95": [0.3, 0.7]}},
          "maj_at_k": {"1": 0.2, "2": 0.3}, "maj_at_k_ci95": {"1": [0.1, 0.3], "2": [0.2, 0.4]},
          "vs_mixed": {"1": {"diff": 0.05, "ci95": [-0.02, 0.1]}, "2": {"diff": 0.0, "ci95": [-0.05, 0.05]}}}
    text = results_table({"base": {"test_acc": 0.5}, "maj_at_k": {"1": 0.15, "2": 0.3}, "sigma_choice": sc})
    for needle in ["sigma chosen on the dev split (32 selection rows held out; no test answer read)",
                   "| sigma 0.004 (chosen)", "50.0% [30.0, 70.0]", "#1, #5", "| sigma 0.002 ",
                   "sigma 0.004 top-k vote (test)", "20.0% [10.0, 30.0]", "+5.0 pts [-2.0, +10.0]"]:
        assert needle in text, needle
