"""core/stats.py against cases computed by hand or with a textbook formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from randopt_verl.core import stats


@pytest.mark.parametrize("k,n,lo,hi", [
    (0, 10, 0.0, 0.27753),      # Wilson at zero successes: the upper bound is not 0 (the Wald interval's is)
    (5, 10, 0.23659, 0.76341),
    (10, 10, 0.72247, 1.0),
    (11, 100, 0.06254, 0.18631),
])
def test_wilson_known_values(k, n, lo, hi):
    got = stats.wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_no_data_excludes_nothing():
    assert stats.wilson(0, 0) == (0.0, 1.0)


def test_accuracy_ci_is_wilson_of_the_vector():
    v = [1, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert stats.accuracy_ci(v) == stats.wilson(2, 10)


def test_paired_bootstrap_identical_sides_is_exactly_zero():
    a = [1, 0, 1, 1, 0, 0, 1]
    out = stats.paired_bootstrap(a, a)
    assert out["diff"] == 0.0 and out["ci95"] == [0.0, 0.0] and out["n"] == 7


def test_paired_bootstrap_sees_a_consistent_gain_that_unpaired_noise_would_hide():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, size=200).astype(float)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:20]] = 1.0  # 20 prompts fixed, none broken: +10 points
    out = stats.paired_bootstrap(better, base, seed=3)
    assert out["diff"] == pytest.approx(0.10)
    assert 0.0 < out["ci95"][0] < 0.10 < out["ci95"][1]
    # the same seed gives the same interval; another seed moves it only by Monte Carlo error
    assert stats.paired_bootstrap(better, base, seed=3) == out
    assert stats.paired_bootstrap(better, base, seed=4)["ci95"] == pytest.approx(out["ci95"], abs=0.02)


def test_paired_bootstrap_refuses_unaligned_sides():
    with pytest.raises(ValueError, match="same prompts"):
        stats.paired_bootstrap([1, 0], [1, 0, 1])


def test_bootstrap_mean_brackets_the_mean():
    v = [0.0] * 80 + [1.0] * 20
    lo, hi = stats.bootstrap_mean(v)
    assert lo < 0.2 < hi and hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.2 * 0.8 / 100), abs=0.03)


def test_spearman_hand_cases():
    assert stats.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert stats.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take average ranks: x ranks (1, 2.5, 2.5, 4), y ranks (1, 2, 3, 4) -> r = 4.5 / sqrt(4.5 * 5)
    assert stats.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5.0))
    # monotone but not linear: Spearman is 1 where Pearson is not
    assert stats.spearman([1, 2, 3, 4, 5], [1, 4, 9, 100, 1000]) == pytest.approx(1.0)


def test_spearman_undefined_cases():
    assert stats.spearman([1, 2], [2, 1]) is None
    assert stats.spearman([1, 1, 1], [1, 2, 3]) is None


def test_mean_sd_uses_the_sample_sd():
    out = stats.mean_sd([0.30, 0.34, 0.38])
    assert out["mean"] == pytest.approx(0.34) and out["sd"] == pytest.approx(0.04) and out["n"] == 3
    assert stats.mean_sd([0.5]) == {"mean": 0.5, "sd": 0.0, "n": 1}
