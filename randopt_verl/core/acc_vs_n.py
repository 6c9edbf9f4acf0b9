"""Accuracy against N from one run (`randopt.accuracy_vs_n`): the top-k votes a search of N' < N candidates would
have chosen, read from prefixes of this run's ledger.

Plain data, no Ray, no verl. The population is prefix-stable (`randopt_verl.core.population.sample_population`:
candidate i's (seed, sigma) does not depend on N), and a full search scores every candidate on the same selection
set, so the top-K of a search with N' candidates is exactly the top-K of ledger rows 0 .. N'-1 (`vote.rank` order).
A race (`randopt.selection.strategy=halving`) is not prefix-stable: who stops depends on the whole population; the
config refuses the two together.

`sizes(N, K)`: N/8, N/4, N/2 and N (rounded down), those >= K, distinct, ascending. `prefix_top_k(rows, n, k)`: the
indices of that top-K. `members(rows, sizes, k)`: every candidate some prefix's top-K needs (their test answers;
those not already answered cost a test pass each). `curve(...)`: per size, the experts, each top-k vote's test
accuracy with its Wilson interval, and its paired difference to the same k's vote at the full N (paired bootstrap
over the same test prompts).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from . import diagnostics, vote


def sizes(n: int, k: int) -> list[int]:
    """N/8, N/4, N/2, N (rounded down) that hold at least K candidates, ascending and distinct."""
    return sorted({m for m in (n // 8, n // 4, n // 2, n) if m >= k})


def prefix_top_k(rows: Mapping[int, Mapping[str, Any]], n: int, k: int) -> list[int]:
    """The top-K candidate indices of a search over candidates 0 .. n-1 (ledger rows by index)."""
    return [r["index"] for r in vote.rank(r for i, r in rows.items() if 0 <= i < n)[:k]]


def members(rows: Mapping[int, Mapping[str, Any]], ns: Sequence[int], k: int) -> list[int]:
    """Every candidate in some prefix's top-K, ascending."""
    return sorted({i for n in ns for i in prefix_top_k(rows, n, k)})


def curve(table: Mapping[int, Any], rows: Mapping[int, Mapping[str, Any]], ns: Sequence[int], ks: Sequence[int],
          k: int, extra_test_passes: int) -> dict[str, Any]:
    """results.json's ``accuracy_vs_n``; ``table[member][prompt] = (pred, acc)`` holds every member's test answers."""
    full = prefix_top_k(rows, max(ns), k)
    by_n = {}
    for n in ns:
        v = diagnostics.votes(table, prefix_top_k(rows, n, k), ks, full)
        v["vs_full_n"] = v.pop("paired")
        by_n[str(n)] = v
    return {"ns": list(ns), "full_n": max(ns), "by_n": by_n, "extra_test_passes": int(extra_test_passes)}
