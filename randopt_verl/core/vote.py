"""Selection, majority vote and the honest controls: one vote function for all (docs/ARCHITECTURE.md, decision 5).

Plain data, no Ray, no verl.

Selection
---------
`rank` orders ledger rows by mean selection ``score`` descending, ties by candidate ``index`` ascending
(a NaN score ranks last). The top K are its first K (`rank(rows)[:k]`, as the trainers take them).

The vote
--------
`vote(answers)` takes the voters' answers in rank order (better-ranked first) and returns the *index of the
winning voter*, or None when everyone abstains. An answer is a vote key (a string; other values are
``str()``-ed); None, "" and whitespace-only abstain; keys are compared after ``strip()``. The answer with
the most votes wins; a tie goes to the answer whose best-ranked voter comes first; the returned index is
that answer's best-ranked voter. Deterministic, no randomness.

Everything below — the selected top-k vote, the random-k control, the base model's self-consistency —
calls this one `vote`, so the three differ only in who votes, never in how votes are counted.

Voted correctness
-----------------
An answer table is ``table[member][prompt] = (pred, acc)``: ``pred`` is the vote key the reward function
returned for that response (verl's ``pred``), ``acc`` its correctness (a number, usually 0/1). ``member``
indexes ``table`` (a list, or a dict keyed by e.g. candidate index); every member has the same prompts in the
same order. **The voted answer's correctness is the acc of the best-ranked member that gave the winning
pred** (the voter `vote` returns): all responses with the same pred key are taken to be equally right.
This lets any verl reward that returns ``pred`` be voted without re-scoring the voted answer, and it is
exact whenever acc is a function of pred (the usual case: acc = pred matches the ground truth). All
members abstaining on a prompt counts as wrong (acc 0).

Controls
--------
* `maj_at_k`: the selected top-k vote for each k (the first k members of the ranked list).
* `random_k`: k members drawn uniformly without replacement from an evaluated population, voting in the
  order drawn (ties to the first drawn), averaged over ``draws`` draws. Reproducible: the draws for k use
  ``numpy.random.Generator(PCG64(SeedSequence(seed, spawn_key=(k,))))``, so adding another k changes no
  other k's draws. ``std`` is the population std (ddof=0) of the per-draw accuracies.
* `self_consistency`: the base model sampled k times per prompt, ``samples[i][prompt] = (pred, acc)``;
  votes over the first k samples in sample order.

One sample's reward
-------------------
`normalise_reward` turns what a verl reward function returned for one response into the sample every vote and
ledger row is built from: ``{"score", "acc", "pred", "error"}``. A reward function that raised on a sample, or
returned a non-finite score, does not stop the run: that sample becomes ``score = 0, acc = 0, pred = None``
(abstain) with the error text (capped at MAX_ERROR_CHARS), so a candidate that breaks the reward is ranked as if
it answered wrong. A finite score with a non-finite ``acc`` keeps the score, sets acc 0 and records the error. A
reward that returns a plain number has ``acc = score`` (verl's convention when no ``acc`` is given) and no
``pred``; then the fallback vote key below is used when the response text is given.

Fallback vote key
-----------------
For a custom reward that returns no ``pred``: `fallback_pred(text)` is the last number in the text
(thousands commas removed, trailing fractional zeros and leading zeros dropped, "21.0" -> "21", "-0" -> "0";
a leading minus counts only when it is not preceded by a letter, digit or closing bracket, so "5-3" gives
"3"), else the last non-empty line, stripped and lowercased, else "" (which abstains).

The results.json these votes feed is described in `randopt_verl.core.results_schema`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

__all__ = [
    "rank", "vote", "Outcome", "ensemble_outcomes", "ensemble_accuracy", "maj_at_k", "random_k",
    "random_k_per_prompt",
    "self_consistency", "base_maj_at_k", "fallback_pred", "normalise_reward", "fraction_beating_base", "sigma_key",
]

# ---------------------------------------------------------------------------------------- selection


def _rank_key(row: Mapping[str, Any]) -> tuple[float, int]:
    s = float(row["score"])
    return (-s if not math.isnan(s) else math.inf, int(row["index"]))


def rank(rows: Iterable[Mapping[str, Any]]) -> list:
    """Rows by mean selection score descending, ties by candidate index ascending; NaN last."""
    return sorted(rows, key=_rank_key)


# --------------------------------------------------------------------------------------------- vote


def _key(answer: Any) -> str | None:
    if answer is None:
        return None
    key = (answer if isinstance(answer, str) else str(answer)).strip()
    return key or None


def vote(answers: Sequence[Any]) -> int | None:
    """Index of the winning voter among ``answers`` (rank order), or None if all abstain. See module doc."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, a in enumerate(answers):
        k = _key(a)
        if k is None:
            continue
        if k in counts:
            counts[k] += 1
        else:
            counts[k] = 1
            first[k] = i
    if not counts:
        return None
    winner = max(counts, key=lambda k: (counts[k], -first[k]))
    return first[winner]


class Outcome(NamedTuple):
    pred: str | None  # the voted key (None: everyone abstained)
    acc: float  # the acc of `member`'s response (0.0 when everyone abstained)
    member: Any  # the best-ranked member that gave the voted key, or None


def _columns(table: Any, members: Sequence[Any]) -> list[Sequence[tuple[Any, float]]]:
    cols = [table[m] for m in members]
    if cols:
        n = len(cols[0])
        bad = [m for m, c in zip(members, cols) if len(c) != n]
        if bad:
            raise ValueError(f"answer table: members {bad} do not have {n} prompts like member {members[0]!r}")
    return cols


def ensemble_outcomes(table: Any, members: Sequence[Any]) -> list[Outcome]:
    """Per-prompt vote of ``members`` (in rank order) over ``table[member][prompt] = (pred, acc)``."""
    if not members:
        raise ValueError("ensemble_outcomes: no members")
    cols = _columns(table, members)
    out = []
    for p in range(len(cols[0])):
        w = vote([c[p][0] for c in cols])
        if w is None:
            out.append(Outcome(None, 0.0, None))
        else:
            pred, acc = cols[w][p]
            out.append(Outcome(_key(pred), float(acc), members[w]))
    return out


def ensemble_accuracy(table: Any, members_in_rank_order: Sequence[Any]) -> float:
    """Mean voted correctness over the prompts (see module doc for the rule)."""
    outs = ensemble_outcomes(table, members_in_rank_order)
    return math.fsum(o.acc for o in outs) / len(outs) if outs else 0.0


def _check_k(k: int, n: int, what: str) -> None:
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"{what}: k={k!r} must be an integer in 1..{n} (the number of members available)")


def maj_at_k(table: Any, ranked_members: Sequence[Any], ks: Iterable[int]) -> dict[int, float]:
    """Selected top-k vote accuracy for each k: the first k of ``ranked_members`` vote."""
    ranked_members = list(ranked_members)
    out = {}
    for k in ks:
        _check_k(k, len(ranked_members), "maj_at_k")
        out[int(k)] = ensemble_accuracy(table, ranked_members[:k])
    return out


def _k_rng(seed: int, k: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(int(k),))))


def random_k(table: Any, population_members: Sequence[Any], k: int, draws: int, seed: int) -> dict:
    """Vote of k members drawn at random (no replacement, unranked) from the evaluated population.

    Returns ``{"k", "mean", "std", "draws": [acc per draw], "n_population", "seed"}``.
    """
    pop = list(population_members)
    accs = [ensemble_accuracy(table, voters) for voters in _random_draws(pop, k, draws, seed)]
    arr = np.asarray(accs, dtype=np.float64)
    return {"k": int(k), "mean": float(arr.mean()), "std": float(arr.std()), "draws": accs,
            "n_population": len(pop), "seed": int(seed)}


def _random_draws(pop: list, k: int, draws: int, seed: int) -> list[list]:
    """The voters of each random-k draw (a random subset in random, drawn, order); see the module doc."""
    _check_k(k, len(pop), "random_k")
    if draws < 1:
        raise ValueError(f"random_k: draws={draws} must be >= 1")
    rng = _k_rng(seed, k)
    return [[pop[i] for i in rng.choice(len(pop), size=k, replace=False)] for _ in range(draws)]


def random_k_per_prompt(table: Any, population_members: Sequence[Any], k: int, draws: int, seed: int) -> list[float]:
    """Per prompt, the voted correctness averaged over the same draws as `random_k` (its mean is random_k's mean):
    the random-k side of a paired comparison over prompts."""
    per_draw = [[o.acc for o in ensemble_outcomes(table, voters)]
                for voters in _random_draws(list(population_members), k, draws, seed)]
    return [float(x) for x in np.mean(np.asarray(per_draw, dtype=np.float64), axis=0)]


def self_consistency(samples_table: Sequence[Any], k: int) -> float:
    """Base-model majority vote over the first k samples (``samples[i][prompt] = (pred, acc)``)."""
    _check_k(k, len(samples_table), "self_consistency")
    return ensemble_accuracy(samples_table, list(range(k)))


def base_maj_at_k(samples_table: Sequence[Any], ks: Iterable[int]) -> dict[int, float]:
    return {int(k): self_consistency(samples_table, k) for k in ks}


# ------------------------------------------------------------------------------------ fallback pred

# optional sign (only where it cannot be a binary minus), then 1,234,567 or 1234567, optional fraction; or .5
_NUMBER = re.compile(r"(?:(?<![\w)\]])(-))?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")


def _normalise_number(sign: str, s: str) -> str:
    neg = sign == "-"
    s = s.replace(",", "")
    whole, _, frac = s.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    out = whole + ("." + frac if frac else "")
    return "-" + out if neg and out != "0" else out


def fallback_pred(text: str | None) -> str:
    """Vote key for a response whose reward gives no ``pred`` (see module doc)."""
    if not text:
        return ""
    nums = _NUMBER.findall(text)
    if nums:
        return _normalise_number(*nums[-1])
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip().lower()
    return ""


MAX_ERROR_CHARS = 500


def _error_text(err: Any) -> str:
    text = f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else str(err)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def normalise_reward(result: Any, response: str | None = None) -> dict:
    """One sample's reward outcome as ``{"score", "acc", "pred", "error"}`` (see the module docstring).

    ``result`` is what the verl reward function returned (a number or a dict with ``score`` and optionally
    ``acc`` and ``pred``), or the exception it raised. ``response`` (the decoded response text) enables the
    fallback vote key when the reward gives no ``pred``.
    """
    if isinstance(result, BaseException):
        return {"score": 0.0, "acc": 0.0, "pred": None, "error": _error_text(result)}
    pred: Any = None
    try:
        if isinstance(result, Mapping):
            if "score" not in result:
                raise KeyError(f"reward dict has no 'score' (keys: {sorted(result)})")
            score = float(result["score"])
            acc = float(result["acc"]) if result.get("acc") is not None else score
            pred = result.get("pred")
        else:
            score = float(result)
            acc = score
    except (TypeError, ValueError, KeyError) as e:
        return {"score": 0.0, "acc": 0.0, "pred": None, "error": _error_text(e)}
    if not math.isfinite(score):
        return {"score": 0.0, "acc": 0.0, "pred": None, "error": f"reward returned a non-finite score ({score})"}
    error = None
    if not math.isfinite(acc):
        error, acc = f"reward returned a non-finite acc ({acc})", 0.0
    if pred is None and response is not None:
        pred = fallback_pred(response)
    if pred is not None and not isinstance(pred, str):
        pred = str(pred)
    return {"score": score, "acc": acc, "pred": pred, "error": error}


# ------------------------------------------------------------------------------------------ results


def sigma_key(sigma: float) -> str:
    """The string key of a sigma in results.json (``repr`` of the float: "0.001", "0.0005")."""
    return repr(float(sigma))


def fraction_beating_base(rows: Iterable[Mapping[str, Any]], base_score: float) -> dict[str, dict]:
    """Per sigma: how many candidates' selection score is strictly above the base model's."""
    out: dict[str, dict] = {}
    for r in rows:
        d = out.setdefault(sigma_key(r["sigma"]), {"n": 0, "beating": 0})
        d["n"] += 1
        d["beating"] += int(float(r["score"]) > base_score)
    for d in out.values():
        d["fraction"] = d["beating"] / d["n"]
    return dict(sorted(out.items(), key=lambda kv: float(kv[0])))
