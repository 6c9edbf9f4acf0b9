"""Selection, the vote rule and the controls (randopt_verl.core.vote): plain data, CPU, fast."""

import itertools
import math
import os
import subprocess
import sys

import pytest

from randopt_verl.core.vote import (
    ensemble_accuracy,
    ensemble_outcomes,
    fallback_pred,
    fraction_beating_base,
    maj_at_k,
    random_k,
    rank,
    self_consistency,
    vote,
)

# ------------------------------------------------------------------------------------------ ranking


def test_rank_by_score_then_index_and_nan_last():
    rows = [
        {"index": 3, "score": 0.5},
        {"index": 1, "score": 0.7},
        {"index": 0, "score": 0.5},
        {"index": 2, "score": float("nan")},
        {"index": 4, "score": 0.9},
    ]
    assert [r["index"] for r in rank(rows)] == [4, 1, 0, 3, 2]
    assert [r["index"] for r in rank(reversed(rows))] == [4, 1, 0, 3, 2]  # input order does not matter
    assert [r["index"] for r in rank(rows)[:3]] == [4, 1, 0]  # the top K, as the trainers take them


# --------------------------------------------------------------------------------------------- vote


def test_vote_majority_wins_and_returns_its_best_ranked_voter():
    assert vote(["a", "b", "b", "a", "b"]) == 1


def test_vote_tie_goes_to_answer_whose_best_voter_ranks_first():
    assert vote(["a", "b", "b", "a"]) == 0
    assert vote(["b", "a", "a", "b"]) == 0
    assert vote([None, "b", "a", "a", "b"]) == 1
    assert vote(["x", "y", "z"]) == 0


def test_vote_abstentions():
    assert vote([None, "", "   ", "7", None]) == 3
    assert vote([None, "", " \n\t "]) is None
    assert vote([]) is None
    # abstainers do not count: one real vote beats nothing
    assert vote(["", "", "5", "", "6", "6"]) == 4
    # keys are compared stripped
    assert vote(["5", " 6", "6 "]) == 1


def test_vote_is_deterministic():
    # a three-way tie at two votes each: the answer whose best-ranked voter comes first wins, every time
    answers = ["a", "b", None, "c", "b", "a", "", "c"]
    assert vote(answers) == 0 and vote(answers[1:]) == 0 and vote(["q", "p", "p", "q"]) == 0
    # string hashing differs between processes (PYTHONHASHSEED): a vote that iterated a set or hashed keys to break
    # ties would change its winner between them; this one must not
    code = ("from randopt_verl.core.vote import vote; "
            "print(vote(['a', 'b', None, 'c', 'b', 'a', '', 'c']), vote(['q', 'p', 'p', 'q']), vote(list('zyxwzyxw')))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, PYTHONHASHSEED=str(h))).stdout for h in range(4)}
    assert outs == {"0 0 0\n"}


# ---------------------------------------------------------------------------------- answer tables

# table[member][prompt] = (pred, acc); members by rank: m0 best
TABLE = {
    "m0": [("1", 1.0), ("x", 0.0), (None, 0.0), ("7", 1.0)],
    "m1": [("2", 0.0), ("y", 0.0), (None, 0.0), ("8", 0.0)],
    "m2": [("2", 0.0), ("z", 1.0), ("", 0.0), ("7", 1.0)],
}


def test_ensemble_outcomes_by_hand():
    outs = ensemble_outcomes(TABLE, ["m0", "m1", "m2"])
    # p0: "2" has 2 votes -> wrong; p1: 3-way tie -> m0's "x" (wrong); p2: all abstain -> wrong;
    # p3: "7" twice -> right
    assert [(o.pred, o.acc, o.member) for o in outs] == [
        ("2", 0.0, "m1"),
        ("x", 0.0, "m0"),
        (None, 0.0, None),
        ("7", 1.0, "m0"),
    ]
    assert ensemble_accuracy(TABLE, ["m0", "m1", "m2"]) == 0.25
    # rank order matters for ties: m2 first makes its "z" win p1
    assert ensemble_accuracy(TABLE, ["m2", "m1", "m0"]) == 0.5


def test_voted_acc_is_the_best_ranked_voter_of_the_winning_pred():
    # same pred, different acc (a reward whose acc is not a function of pred): the rule takes the acc
    # of the best-ranked member that gave the winning pred
    table = [[("42", 0.0)], [("42", 1.0)], [("41", 1.0)]]
    assert ensemble_outcomes(table, [0, 1, 2])[0] == ("42", 0.0, 0)
    assert ensemble_outcomes(table, [1, 0, 2])[0] == ("42", 1.0, 1)
    # fractional acc is averaged as is
    assert ensemble_accuracy([[("a", 0.5), ("b", 1.0)]], [0]) == 0.75


def test_all_abstain_is_wrong_even_if_acc_says_otherwise():
    table = [[(None, 1.0)], [("", 1.0)]]
    assert ensemble_accuracy(table, [0, 1]) == 0.0


def test_table_members_must_have_equal_prompts():
    with pytest.raises(ValueError, match="prompts"):
        ensemble_accuracy({"a": [("1", 1.0)], "b": []}, ["a", "b"])


def test_maj_at_k_on_hand_table():
    assert maj_at_k(TABLE, ["m0", "m1", "m2"], [1, 2, 3]) == {1: 0.5, 2: 0.5, 3: 0.25}
    with pytest.raises(ValueError, match="1..3"):
        maj_at_k(TABLE, ["m0", "m1", "m2"], [4])


# -------------------------------------------------------------------------------------- random-k

# 5 members, 4 prompts, two candidate answers per prompt: with an odd k there are no ties, so the vote
# does not depend on the order drawn
RK = [
    [("a", 1), ("c", 0), ("e", 1), ("g", 0)],
    [("a", 1), ("d", 1), ("f", 0), ("g", 0)],
    [("b", 0), ("d", 1), ("e", 1), ("h", 1)],
    [("b", 0), ("c", 0), ("e", 1), ("h", 1)],
    [("a", 1), ("d", 1), ("f", 0), ("h", 1)],
]


def test_random_k_with_k_equal_n_is_the_all_member_vote_every_draw():
    full = ensemble_accuracy(RK, range(5))
    r = random_k(RK, range(5), k=5, draws=7, seed=0)
    assert r["draws"] == [full] * 7
    assert r["mean"] == full and r["std"] == 0.0
    assert r["n_population"] == 5 and r["k"] == 5


def test_random_k_draws_are_subset_votes_and_mean_matches_enumeration():
    k = 3
    subset_acc = {frozenset(s): ensemble_accuracy(RK, list(s)) for s in itertools.combinations(range(5), k)}
    exact = sum(subset_acc.values()) / len(subset_acc)
    r = random_k(RK, list(range(5)), k=k, draws=4000, seed=123)
    assert set(r["draws"]) <= set(subset_acc.values())
    se = math.sqrt(sum((a - exact) ** 2 for a in subset_acc.values()) / len(subset_acc) / 4000)
    assert abs(r["mean"] - exact) < 4 * se + 1e-12


def test_random_k_k1_is_mean_member_accuracy_in_expectation_and_uses_population_ids():
    pop = {10: RK[0], 20: RK[1], 30: RK[2], 40: RK[3], 50: RK[4]}
    r = random_k(pop, [10, 20, 30, 40, 50], k=1, draws=3000, seed=5)
    member_accs = [ensemble_accuracy(pop, [m]) for m in pop]
    assert set(r["draws"]) <= set(member_accs)
    assert abs(r["mean"] - sum(member_accs) / 5) < 0.03


def test_random_k_is_reproducible_from_seed_and_streams_are_per_k():
    a = random_k(RK, range(5), k=2, draws=50, seed=7)
    b = random_k(RK, range(5), k=2, draws=50, seed=7)
    c = random_k(RK, range(5), k=2, draws=50, seed=8)
    assert a == b
    assert a["draws"] != c["draws"]
    # the k=2 stream is the same whether or not k=3 was computed first (per-k streams)
    random_k(RK, range(5), k=3, draws=50, seed=7)
    assert random_k(RK, range(5), k=2, draws=50, seed=7) == a


def test_random_k_ties_go_to_first_drawn():
    # two members that disagree on every prompt: the k=2 vote is whoever was drawn first
    table = [[("a", 1.0)], [("b", 0.0)]]
    r = random_k(table, [0, 1], k=2, draws=400, seed=1)
    assert set(r["draws"]) == {0.0, 1.0}  # both orders occur
    assert 0.4 < r["mean"] < 0.6


# ------------------------------------------------------------------------------- self-consistency


def test_self_consistency_on_hand_table():
    samples = [
        [("3", 1), ("9", 0), (None, 0)],
        [("4", 0), ("8", 1), ("5", 1)],
        [("3", 1), ("8", 1), ("6", 0)],
    ]
    assert self_consistency(samples, 1) == pytest.approx(1 / 3)  # "3" right, "9" wrong, abstain
    assert self_consistency(samples, 2) == pytest.approx(2 / 3)  # ties to sample 0: "3" right, "9" wrong; "5"
    assert self_consistency(samples, 3) == pytest.approx(1.0)  # "3" x2, "8" x2, "5"/"6" tie to sample 1's "5"
    with pytest.raises(ValueError):
        self_consistency(samples, 4)


# ------------------------------------------------------------------------------------ fallback key


@pytest.mark.parametrize(
    "text,key",
    [
        ("so the answer is 21.0.", "21"),
        ("It costs $1,234.50", "1234.5"),
        ("first 3 then 5 then -4", "-4"),
        ("5-3", "3"),
        ("-0.0", "0"),
        ("007", "7"),
        ("numbers 1,2,3", "3"),
        ("No number here\n\n  The END  \n", "the end"),
        ("", ""),
        ("  \n ", ""),
    ],
)
def test_fallback_pred(text, key):
    assert fallback_pred(text) == key


# ------------------------------------------------------------------------------------------ results


def test_fraction_beating_base_by_sigma():
    rows = [
        {"index": 0, "sigma": 0.001, "score": 0.5},
        {"index": 1, "sigma": 0.001, "score": 0.3},
        {"index": 2, "sigma": 0.0005, "score": 0.31},
        {"index": 3, "sigma": 0.001, "score": 0.3000001},
    ]
    fb = fraction_beating_base(rows, base_score=0.3)
    assert list(fb) == ["0.0005", "0.001"]
    assert fb["0.001"] == {"n": 3, "beating": 2, "fraction": pytest.approx(2 / 3)}  # equal is not beating
    assert fb["0.0005"] == {"n": 1, "beating": 1, "fraction": 1.0}
