"""Uncertainty for every number a results table prints: intervals, paired differences, rank correlation, spread
over seeds. Plain numpy; no verl, no Ray.

- `wilson(successes, n)`: the Wilson score 95% interval of a proportion (correct at n = 0 and at 0 or n successes,
  where the normal interval collapses to a point). For accuracies with non-binary per-prompt values the mean is
  used as the proportion (an approximation; `bootstrap_mean` is the exact alternative).
- `paired_bootstrap(a, b)`: the mean difference mean(a) − mean(b) of two per-prompt score vectors measured on the
  same prompts, with a percentile 95% interval from resampling prompts (pairs kept together). This is the right
  interval for "selected top-k vote vs random-k vote" or "method vs base": both answered the same prompts, so
  most prompt-to-prompt variance cancels. Deterministic for a given seed.
- `spearman(x, y)`: Spearman's ρ with average ranks for ties (None when it is undefined: fewer than 3 pairs or a
  constant side).
- `mean_sd(values)`: mean, sample standard deviation (ddof = 1; 0 for one value) and n, for reports over seeds.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

Z95 = 1.959963984540054  # the two-sided 95% normal quantile
N_BOOT = 2000  # bootstrap resamples: the percentile interval's Monte Carlo error is ~0.5 points at n = 100


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for successes/n; (0, 1) when n == 0 (nothing measured, nothing excluded)."""
    if n <= 0:
        return (0.0, 1.0)
    p = min(max(float(successes) / n, 0.0), 1.0)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_ci(per_prompt: Sequence[float]) -> tuple[float, float]:
    """95% interval of the accuracy of one per-prompt correctness vector (Wilson on its mean)."""
    n = len(per_prompt)
    return wilson(float(np.sum(per_prompt)) if n else 0.0, n)


def _resample_index(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence(seed)).integers(0, n, size=(n_boot, n))


def bootstrap_mean(values: Sequence[float], n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of a mean, resampling the values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (float("nan"), float("nan"))
    means = v[_resample_index(v.size, n_boot, seed)].mean(axis=1)
    return (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """mean(a) − mean(b) over the same prompts, with a percentile 95% interval (prompts resampled in pairs).

    Returns {"diff", "ci95": [lo, hi], "n", "n_boot"}; `a` and `b` must be aligned prompt by prompt."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired_bootstrap needs the same prompts on both sides: {x.shape} vs {y.shape}")
    d = x - y
    if d.size == 0:
        return {"diff": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0, "n_boot": n_boot}
    diffs = d[_resample_index(d.size, n_boot, seed)].mean(axis=1)
    return {"diff": float(d.mean()), "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
            "n": int(d.size), "n_boot": int(n_boot)}


def _average_ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(v.size, dtype=np.float64)
    sorted_v = v[order]
    i = 0
    while i < v.size:
        j = i
        while j + 1 < v.size and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0  # tied values share the mean of their ranks
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation (Pearson's r of average ranks); None when undefined."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"spearman needs pairs: {a.shape} vs {b.shape}")
    if a.size < 3:
        return None
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    if denom == 0.0:
        return None
    return float((ra * rb).sum() / denom)


def mean_sd(values: Sequence[float]) -> dict:
    """{"mean", "sd", "n"} with the sample standard deviation (ddof = 1; 0.0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}
