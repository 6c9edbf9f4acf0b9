"""diagnostics.annotate: the intervals, paired differences and selection diagnostics of results.json, from ledgers."""

from __future__ import annotations

import numpy as np
import pytest

from randopt_verl.core import stats, vote
from randopt_verl.core.diagnostics import annotate
from randopt_verl.core.report import results_table
from randopt_verl.core.ledger import BASE, base_sample_index

N = 20


def row(index, accs, sigma=0.01, score=None, preds=None):
    accs = [float(a) for a in accs]
    return {"index": index, "seed": 100 + index, "sigma": sigma, "accs": accs, "acc": float(np.mean(accs)),
            "score": float(np.mean(accs)) if score is None else score,
            "preds": preds or [("right" if a else f"wrong{index}") for a in accs]}


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    test = {BASE: row(BASE, rng.random(N) < 0.3, sigma=0.0)}
    sel = {BASE: row(BASE, [1, 0, 0, 0, 1], sigma=0.0)}
    for i in range(6):  # candidates 0..5 with selection scores rising with i; test accuracies not
        test[i] = row(i, rng.random(N) < 0.2 + 0.1 * ((i * 7) % 5), sigma=0.01 * (1 + i % 2))
        sel[i] = row(i, [1] * i + [0] * (5 - i) if i <= 5 else [1] * 5, sigma=0.01 * (1 + i % 2))
    for s in range(2):
        test[base_sample_index(s)] = row(base_sample_index(s), rng.random(N) < 0.3, sigma=0.0)
    ranked = [5, 4, 3]
    table = {m: list(zip(r["preds"], r["accs"])) for m, r in test.items()}
    results = {
        "base": {"test_acc": test[BASE]["acc"], "selection_score": sel[BASE]["score"]},
        "experts": [{"rank": j + 1, "index": i, "sigma": sel[i]["sigma"], "selection_score": sel[i]["score"],
                     "test_acc": test[i]["acc"]} for j, i in enumerate(ranked)],
        "maj_at_k": {str(k): v for k, v in vote.maj_at_k(table, ranked, [1, 3]).items()},
        "random_k": {str(k): vote.random_k(table, [0, 1, 2, 3], k, 7, 0) for k in (1, 3)},
        "base_maj_at_k": {"1": vote.self_consistency([table[-2], table[-3]], 1)},
        "fraction_beating_base_by_sigma": vote.fraction_beating_base([sel[i] for i in range(6)], sel[BASE]["score"]),
    }
    cons_rows = {"weighted": row(50, rng.random(N) < 0.5), "shuffled": row(51, rng.random(N) < 0.3)}
    return results, test, sel, table, ranked, cons_rows


def test_every_accuracy_carries_its_wilson_interval(case):
    results, test, sel, table, ranked, cons = case
    annotate(results, test, sel, [0, 1, 2, 3], {"test_acc": cons["weighted"]["acc"]}, cons)
    assert results["base"]["ci95"] == list(stats.wilson(sum(test[BASE]["accs"]), N))
    assert results["base"]["selection_ci95"] == list(stats.wilson(2, 5))
    for e in results["experts"]:
        assert e["ci95"] == list(stats.accuracy_ci(test[e["index"]]["accs"]))
        lo, hi = e["ci95"]
        assert lo <= e["test_acc"] <= hi
    maj3 = [o.acc for o in vote.ensemble_outcomes(table, ranked)]
    assert results["maj_at_k_ci95"]["3"] == list(stats.accuracy_ci(maj3))
    assert results["base_maj_at_k_ci95"]["1"] == list(stats.accuracy_ci(test[-2]["accs"]))
    for d in results["fraction_beating_base_by_sigma"].values():
        assert d["ci95"] == list(stats.wilson(d["beating"], d["n"]))


def test_paired_differences_use_the_same_prompts(case):
    results, test, sel, table, ranked, cons = case
    annotate(results, test, sel, [0, 1, 2, 3], {"test_acc": cons["weighted"]["acc"]}, cons)
    paired = results["paired"]
    # random-k's per-prompt values average the very draws random_k reported: their mean is its mean
    per_prompt = vote.random_k_per_prompt(table, [0, 1, 2, 3], 3, 7, 0)
    assert np.mean(per_prompt) == pytest.approx(results["random_k"]["3"]["mean"])
    maj3 = [o.acc for o in vote.ensemble_outcomes(table, ranked)]
    assert paired["maj_at_k_vs_random_k"]["3"] == stats.paired_bootstrap(maj3, per_prompt)
    assert paired["maj_at_k_vs_random_k"]["3"]["diff"] == pytest.approx(
        results["maj_at_k"]["3"] - results["random_k"]["3"]["mean"])
    assert paired["best_expert_vs_base"]["diff"] == pytest.approx(test[5]["acc"] - test[BASE]["acc"])
    c = paired["consolidated_vs_shuffled_control"]
    assert c["diff"] == pytest.approx(cons["weighted"]["acc"] - cons["shuffled"]["acc"]) and c["n"] == N
    lo, hi = c["ci95"]
    assert lo <= c["diff"] <= hi
    assert paired["consolidated_vs_maj_at_k"]["k"] == 3


def test_a_difference_of_identical_answers_is_exactly_zero(case):
    results, test, sel, table, ranked, cons = case
    cons = {"weighted": test[BASE], "shuffled": test[BASE]}
    annotate(results, test, sel, [0, 1, 2, 3], {"test_acc": test[BASE]["acc"]}, cons)
    assert results["paired"]["consolidated_vs_base"] == {"diff": 0.0, "ci95": [0.0, 0.0], "n": N, "n_boot": 2000}


def test_selection_diagnostics(case):
    results, test, sel, table, ranked, cons = case
    annotate(results, test, sel, [0, 1, 2, 3])
    d = results["diagnostics"]
    tested = list(range(6))
    assert d["n_tested"] == 6
    assert d["selection_test_spearman"] == pytest.approx(
        stats.spearman([sel[i]["score"] for i in tested], [test[i]["acc"] for i in tested]))
    best = max(test[i]["acc"] for i in tested)
    assert d["oracle_best_test_acc"] == best and test[d["oracle_best_index"]]["acc"] == best
    assert d["selected_best_index"] == 5 and d["selected_best_test_acc"] == test[5]["acc"]
    # per sigma: the control population's test fraction beating the base, next to the selection fraction
    fb = results["fraction_beating_base_by_sigma"]
    for key, d in fb.items():
        ctl = [i for i in [0, 1, 2, 3] if vote.sigma_key(sel[i]["sigma"]) == key]
        assert d["test_n"] == len(ctl)
        assert d["test_beating"] == sum(test[i]["acc"] > test[BASE]["acc"] for i in ctl)
    assert "consolidated" not in results and "consolidated_vs_base" not in results["paired"]


def test_the_table_shows_intervals_and_differences(case):
    results, test, sel, table, ranked, cons = case
    block = {"test_acc": cons["weighted"]["acc"], "ci95": list(stats.accuracy_ci(cons["weighted"]["accs"])),
             "scale": 1.0, "weighting": "zscore", "over": "top_k", "n_members": 3,
             "shuffled_control_test_acc": cons["shuffled"]["acc"], "shuffled_control_scale": 0.5,
             "shuffled_control_ci95": list(stats.accuracy_ci(cons["shuffled"]["accs"])),
             "test_cost": {"rollouts": N, "tokens": 5 * N, "wall_s": 1.0}}
    annotate(results, test, sel, [0, 1, 2, 3], block, cons)
    text = results_table(results)
    lo, hi = results["base"]["ci95"]
    for needle in [f"[{100 * lo:.1f}, {100 * hi:.1f}]", "consolidated model (one forward pass per prompt",
                   "shuffled-reward control", "Spearman rho", "chosen on test", "selected top-3 vote − random-3 vote",
                   "consolidated − shuffled-reward control", "pts [", "beating base on test",
                   "consolidated model's test answers (1 per prompt)"]:
        assert needle in text, needle
