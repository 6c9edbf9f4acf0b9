"""sigma chosen apart from test (randopt_verl/core/sigma_choice.py): per-sigma top-K from the search's rows, the
choice from dev answers only."""

from __future__ import annotations

from randopt_verl.core import sigma_choice, vote


def _row(i: int, sigma: float, score: float) -> dict:
    return {"index": i, "sigma": sigma, "score": score}


def _dev(preds: list, accs: list, score: float) -> dict:
    return {"preds": preds, "accs": accs, "score": score}


def test_per_sigma_top_k_ranks_within_each_sigma():
    rows = {-1: _row(-1, 0.0, 9.0), 0: _row(0, 0.002, 0.5), 1: _row(1, 0.004, 0.9), 2: _row(2, 0.002, 0.7),
            3: _row(3, 0.004, 0.1), 4: _row(4, 0.002, 0.7), 5: _row(5, 0.004, 0.3)}
    experts = sigma_choice.per_sigma_top_k(rows, 2)
    assert experts == {0.002: [2, 4], 0.004: [1, 5]}  # ties: lower index; the base row is not a candidate
    for s, ids in experts.items():
        assert ids == [r["index"] for r in vote.rank([r for i, r in rows.items() if i >= 0 and r["sigma"] == s])[:2]]


def test_the_sigma_with_the_best_dev_vote_is_chosen():
    experts = {0.002: [2, 4], 0.004: [1, 5]}
    dev = {2: _dev(["1", "2", None], [1.0, 0.0, 0.0], 0.3), 4: _dev(["1", "3", "5"], [1.0, 1.0, 0.0], 0.6),
           1: _dev(["1", "3", "5"], [1.0, 1.0, 1.0], 0.9), 5: _dev(["1", "3", "5"], [1.0, 1.0, 1.0], 0.9)}
    out = sigma_choice.choose(dev, experts)
    assert out["chosen_sigma"] == 0.004 and out["experts"] == [1, 5]
    by = out["by_sigma"]
    # sigma 0.002: the vote of #2 then #4 per prompt: "1" (right), tie "2"/"3" goes to #2 (wrong), #4's "5" (wrong)
    assert by["0.002"]["dev_vote_acc"] == 1 / 3 and by["0.004"]["dev_vote_acc"] == 1.0
    assert by["0.002"]["dev_mean_score"] == (0.3 + 0.6) / 2
    lo, hi = by["0.004"]["dev_ci95"]
    assert lo < 1.0 == hi


def test_ties_go_to_the_better_dev_score_then_the_smaller_sigma():
    experts = {0.002: [0], 0.004: [1]}
    same = lambda score: _dev(["1"], [1.0], score)  # noqa: E731
    assert sigma_choice.choose({0: same(0.2), 1: same(0.5)}, experts)["chosen_sigma"] == 0.004
    assert sigma_choice.choose({0: same(0.5), 1: same(0.5)}, experts)["chosen_sigma"] == 0.002
