"""The halving race (randopt_verl/core/halving.py): a pure function of the block rows, its paired stopping rule,
and the joined rows of the survivors."""

from __future__ import annotations

import random

import numpy as np
import pytest

from randopt_verl.core import halving
from randopt_verl.core.halving import Rule, block_row_index, join_rows, race, split_block_row_index
from randopt_verl.core.ledger import candidate_row


def _population(n: int, n_prompts: int, seed: int = 0) -> dict[int, list[float]]:
    """Per-prompt 0/1 scores: candidate i is right with probability 0.1 + 0.02 * i (higher index: better)."""
    rng = np.random.default_rng(seed)
    return {i: [float(x) for x in rng.random(n_prompts) < 0.1 + 0.02 * i] for i in range(n)}


def _run(full: dict[int, list[float]], block: int, rule: Rule) -> tuple[halving.Race, dict]:
    """The trainer's loop: ask the race which block is next and who must answer it, answer, repeat."""
    n_blocks = -(-len(next(iter(full.values()))) // block)
    scores: dict = {}
    while True:
        state = race(scores, list(full), n_blocks, rule)
        if state.finished:
            return state, scores
        b = state.next_block
        for i in state.todo:
            scores[(i, b)] = full[i][b * block : (b + 1) * block]


def test_the_race_stops_clear_losers_and_keeps_the_leaders():
    full = _population(24, 128)
    rule = Rule(k=4, z=1.645, margin=0.0, min_prompts=32)
    state, scores = _run(full, 16, rule)
    assert state.stopped, "nobody stopped: the test population is meant to have clear losers"
    assert set(state.survivors) | set(state.stopped) == set(full) and not set(state.survivors) & set(state.stopped)
    # a stopped candidate answered no block after the one it stopped on, and never before min_prompts
    for i, why in state.stopped.items():
        assert why["n_prompts"] >= 32 and why["upper_bound"] < 0 and why["vs_index"] not in state.stopped
        assert {b for (j, b) in scores if j == i} == set(range(why["after_block"] + 1))
    # survivors answered every block
    for i in state.survivors:
        assert {b for (j, b) in scores if j == i} == set(range(8))
    # each stop follows the stated rule against the K-th at that block (recomputed here independently)
    for i, why in state.stopped.items():
        m = why["n_prompts"]
        d = np.array(full[i][:m]) - np.array(full[why["vs_index"]][:m])
        assert why["paired_diff"] == pytest.approx(d.mean())
        assert why["upper_bound"] == pytest.approx(d.mean() + 1.645 * d.std(ddof=1) / np.sqrt(m))
        racing = [j for j in full if j not in state.stopped or state.stopped[j]["after_block"] >= why["after_block"]]
        order = sorted(racing, key=lambda j: (-np.mean(full[j][:m]), j))
        assert order[3] == why["vs_index"]  # the K-th (K = 4) among those still racing at that block


def test_the_race_is_a_function_of_the_rows_not_of_their_order_or_of_stray_rows():
    full = _population(20, 96, seed=3)
    rule = Rule(k=3, z=1.0, margin=0.0, min_prompts=16)
    state, scores = _run(full, 16, rule)
    shuffled = list(scores.items())
    random.Random(1).shuffle(shuffled)
    # rows of a stopped candidate's later blocks (a run resumed with a changed population could have them) and of
    # candidates outside the population change nothing
    extra = {(i, b): full[i][b * 16 : (b + 1) * 16] for i in state.stopped for b in range(6)}
    extra[(99, 0)] = [1.0] * 16
    again = race({**dict(shuffled), **extra}, list(full), 6, rule)
    assert again.finished and again.survivors == state.survivors and again.stopped == state.stopped


def test_a_partial_replay_asks_for_the_missing_rows_of_the_next_block():
    full = _population(10, 64)
    rule = Rule(k=2, z=0.0, margin=0.0, min_prompts=0)
    _, scores = _run(full, 16, rule)
    partial = {key: v for key, v in scores.items() if key[1] < 2 and not (key[1] == 1 and key[0] in (3, 7))}
    state = race(partial, list(full), 4, rule)
    assert state.next_block == 1 and set(state.todo) == {3, 7} & set(state.active)


def test_the_top_k_never_stops_and_the_last_block_decides_nothing():
    # candidate 0 is far behind but only K + 0 candidates race: nobody stops
    full = {0: [0.0] * 32, 1: [1.0] * 32}
    state, _ = _run(full, 8, Rule(k=2, z=0.0))
    assert state.survivors == [0, 1] and not state.stopped
    # with one block, nobody stops either (survivors end with the full set)
    state, _ = _run({0: [0.0] * 8, 1: [1.0] * 8, 2: [1.0] * 8}, 8, Rule(k=1, z=0.0))
    assert not state.stopped


def test_the_rule_is_one_sided_and_paired():
    # candidate 1 loses one prompt of 32 to the K-th (candidate 0): mean -1/32, its bound above 0 at z = 1.645
    k0, k1 = [1.0] * 32, [1.0] * 31 + [0.0]
    loser = [0.0] * 32
    state, _ = _run({0: k0 + k0, 1: k1 + k1, 2: loser + loser}, 32, Rule(k=1, z=1.645))
    assert set(state.stopped) == {2}
    # with z = 0 the same small deficit is enough
    state, _ = _run({0: k0 + k0, 1: k1 + k1}, 32, Rule(k=1, z=0.0))
    assert set(state.stopped) == {1}
    # and a margin larger than the deficit keeps it
    state, _ = _run({0: k0 + k0, 1: k1 + k1}, 32, Rule(k=1, z=0.0, margin=0.05))
    assert not state.stopped
    # min_prompts holds the first decision back
    state, _ = _run({0: k0 + k0, 1: loser + loser}, 16, Rule(k=1, z=0.0, min_prompts=64))
    assert not state.stopped


def test_block_row_indices_round_trip():
    for i in range(5):
        for b in range(7):
            assert split_block_row_index(block_row_index(i, b, 7), 7) == (i, b)
    assert len({block_row_index(i, b, 7) for i in range(5) for b in range(7)}) == 35


def test_joined_rows_equal_the_row_of_the_whole_set():
    samples = [{"score": float(j % 3) / 2, "acc": float(j % 2), "pred": str(j), "error": "boom" if j in (2, 9) else None}
               for j in range(12)]
    blocks = [candidate_row(block_row_index(4, b, 3), 11, 0.002, samples[4 * b : 4 * b + 4], tokens=10 + b,
                            wall_s=0.5) for b in range(3)]
    joined = join_rows(4, blocks)
    whole = candidate_row(4, 11, 0.002, samples, tokens=33, wall_s=1.5)
    for key in ("index", "seed", "sigma", "score", "acc", "n", "n_errors", "errors", "tokens", "wall_s", "scores",
                "accs", "preds"):
        assert joined[key] == whole[key], key
    assert joined["from_blocks"] == 3


def test_the_summary_counts_what_halving_saved():
    full = _population(16, 64)
    rule = Rule(k=2, z=0.5, min_prompts=16)
    state, scores = _run(full, 16, rule)
    rows = [{"n": len(v), "tokens": 2 * len(v)} for v in scores.values()]
    s = halving.summary(state, rule, n_candidates=16, n_selection=64, block_size=16, n_blocks=4, block_rows=rows)
    assert s["full_rollouts"] == 16 * 64 and s["rollouts"] == sum(len(v) for v in scores.values())
    assert s["rollouts_saved"] == s["full_rollouts"] - s["rollouts"] > 0
    assert s["n_stopped"] == len(state.stopped) > 0 and s["n_survivors"] + s["n_stopped"] == 16
    assert [x["index"] for x in s["stopped"]] == sorted(state.stopped)
