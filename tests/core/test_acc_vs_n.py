"""Accuracy vs N from one run (randopt_verl/core/acc_vs_n.py): a prefix of the ledger is the smaller search."""

from __future__ import annotations

import numpy as np
import pytest

from randopt_verl.core import acc_vs_n, vote
from randopt_verl.core.population import sample_population


def _ledger(n: int, seed: int = 0) -> dict[int, dict]:
    rng = np.random.default_rng(seed)
    return {i: {"index": i, "score": float(rng.integers(0, 10)) / 10} for i in range(n)}  # many ties: index order


def test_sizes_are_the_fractions_that_hold_k():
    assert acc_vs_n.sizes(48, 4) == [6, 12, 24, 48]
    assert acc_vs_n.sizes(20, 4) == [5, 10, 20]  # 20 // 8 = 2 < K dropped
    assert acc_vs_n.sizes(4, 4) == [4]


def test_a_prefix_top_k_is_the_top_k_of_the_smaller_search():
    rows = _ledger(48)
    # the population is prefix-stable: the first 12 candidates of N = 48 are the candidates of N = 12
    assert sample_population(0, 48, [0.001, 0.002])[:12] == sample_population(0, 12, [0.001, 0.002])
    for n in (6, 12, 24, 48):
        smaller = {i: r for i, r in rows.items() if i < n}
        assert acc_vs_n.prefix_top_k(rows, n, 4) == [r["index"] for r in vote.rank(smaller.values())[:4]]
    assert acc_vs_n.prefix_top_k({-1: {"index": -1, "score": 9.0}, **rows}, 48, 4) == acc_vs_n.prefix_top_k(rows, 48, 4)
    need = acc_vs_n.members(rows, [6, 12, 24, 48], 4)
    assert need == sorted({i for n in (6, 12, 24, 48) for i in acc_vs_n.prefix_top_k(rows, n, 4)})


def test_the_curve_votes_each_prefix_and_pairs_it_with_the_full_n():
    rows = _ledger(32, seed=1)
    rng = np.random.default_rng(2)
    table = {i: [(str(rng.integers(0, 3)), float(rng.random() < 0.3)) for _ in range(50)] for i in range(32)}
    ns, ks = acc_vs_n.sizes(32, 4), [1, 2, 4]
    out = acc_vs_n.curve(table, rows, ns, ks, 4, extra_test_passes=3)
    assert out["ns"] == [4, 8, 16, 32] and out["full_n"] == 32 and out["extra_test_passes"] == 3
    for n in ns:
        entry = out["by_n"][str(n)]
        experts = acc_vs_n.prefix_top_k(rows, n, 4)
        assert entry["experts"] == experts
        assert entry["maj_at_k"] == {str(k): pytest.approx(v) for k, v in vote.maj_at_k(table, experts, ks).items()}
        for k in ks:
            lo, hi = entry["maj_at_k_ci95"][str(k)]
            assert lo <= entry["maj_at_k"][str(k)] <= hi
            full = out["by_n"]["32"]["maj_at_k"][str(k)]
            assert entry["vs_full_n"][str(k)]["diff"] == pytest.approx(entry["maj_at_k"][str(k)] - full)
    assert all(v["diff"] == 0 for v in out["by_n"]["32"]["vs_full_n"].values())
