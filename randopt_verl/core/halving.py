"""Adaptive candidate evaluation (`randopt.selection.strategy=halving`): a race over blocks of the selection set.

Plain data, no Ray, no verl. The trainer (randopt_verl/trainers/randopt.py) asks `race` which block to score next
and for whom, scores it, appends one block row per candidate to the run's block ledger, and asks again; `race` is a
pure function of those rows, so a resumed run takes exactly the decisions an uninterrupted one takes, and nothing
depends on the replica count or on the order the rows were written in.

The rule
--------
The selection set is cut into consecutive blocks of ``block_size`` prompts (the last may be shorter). Every active
candidate answers block b before any decision about block b is taken, so after block b all active candidates have
answered the same m prompts. Then, once m >= ``min_prompts`` and unless b is the last block:

* rank the active candidates by their mean score over those m prompts (ties: lower index; `vote.rank`'s order);
  the current K-th is the candidate at rank K (with K or fewer active, nobody stops);
* for every candidate ranked below K: d_j = score_c[j] - score_Kth[j] over the m shared prompts (paired: both
  answered the same prompts), mean d̄ and standard error se = sd(d, ddof=1) / sqrt(m);
* the candidate stops when its one-sided upper bound is below minus the margin: ``d̄ + z * se < -margin``.
  The top K never stop; a stopped candidate answers no further block.

Candidates that answer every block are the survivors: their block rows joined (`join_rows`) are full selection-set
rows, and only they enter the ledger, so the top-K is ranked on full data only. A stopped candidate's scores are
partial; it is reported under ``stopped`` and never counted in the top-K.

Block rows
----------
A block row is a ledger row (`randopt_verl.core.ledger.candidate_row`) of candidate i on block b, stored under the
index ``block_row_index(i, b, n_blocks) = i * n_blocks + b`` (the block count is fixed by the run's identity:
selection set and block size), so the ledger's de-duplication by index keeps one row per (candidate, block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .ledger import candidate_row


def block_row_index(candidate: int, block: int, n_blocks: int) -> int:
    """The block ledger's index of candidate ``candidate``'s answers to block ``block``."""
    return int(candidate) * int(n_blocks) + int(block)


def split_block_row_index(index: int, n_blocks: int) -> tuple[int, int]:
    """(candidate, block) of a block ledger index."""
    return divmod(int(index), int(n_blocks))


@dataclass(frozen=True)
class Rule:
    """When a candidate stops (see the module docstring)."""

    k: int  # K: the current K-th best is the reference; the top K never stop
    z: float = 1.645  # one-sided bound: stop when mean paired difference + z * se < -margin
    margin: float = 0.0  # in reward units
    min_prompts: int = 0  # no decision before this many prompts are answered by everyone

    def as_dict(self) -> dict[str, Any]:
        return {"k": self.k, "z": self.z, "margin": self.margin, "min_prompts": self.min_prompts}


@dataclass
class Race:
    """Where the race stands given the block rows so far."""

    active: list[int]  # candidates still racing (after the last decision), ascending
    stopped: dict[int, dict[str, Any]] = field(default_factory=dict)  # candidate -> why and when it stopped
    next_block: Optional[int] = None  # the block the active candidates must answer next; None: finished
    todo: list[int] = field(default_factory=list)  # active candidates without a row for next_block

    @property
    def finished(self) -> bool:
        return self.next_block is None

    @property
    def survivors(self) -> list[int]:
        """The candidates that answered every block (only when the race is finished)."""
        return list(self.active) if self.finished else []


def paired_bound(a: Sequence[float], b: Sequence[float], z: float) -> tuple[float, float]:
    """(mean of a - b, its one-sided upper bound mean + z * se), a and b aligned prompt by prompt."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(d.size) if d.size > 1 else math.inf
    return mean, mean + z * se


def race(scores: Mapping[tuple[int, int], Sequence[float]], candidates: Sequence[int], n_blocks: int,
         rule: Rule) -> Race:
    """Replay the race from ``scores[(candidate, block)]`` (per-prompt scores of that block) for ``candidates``;
    rows of candidates not listed, or of blocks after a candidate stopped, are ignored."""
    active = sorted(int(c) for c in candidates)
    stopped: dict[int, dict[str, Any]] = {}
    so_far: dict[int, list[float]] = {i: [] for i in active}
    for b in range(int(n_blocks)):
        todo = [i for i in active if (i, b) not in scores]
        if todo:
            return Race(active, stopped, next_block=b, todo=todo)
        for i in active:
            so_far[i] += list(scores[(i, b)])
        m = len(so_far[active[0]]) if active else 0
        if b == n_blocks - 1 or m < rule.min_prompts or len(active) <= rule.k:
            continue
        order = sorted(active, key=lambda i: (-math.fsum(so_far[i]) / m, i))
        kth = order[rule.k - 1]
        for i in order[rule.k:]:
            diff, bound = paired_bound(so_far[i], so_far[kth], rule.z)
            if bound < -rule.margin:
                stopped[i] = {"index": i, "after_block": b, "n_prompts": m, "score_so_far": math.fsum(so_far[i]) / m,
                              "vs_index": kth, "paired_diff": diff, "upper_bound": bound}
        active = [i for i in active if i not in stopped]
    return Race(active, stopped)


def join_rows(index: int, blocks: Sequence[Mapping[str, Any]]) -> dict:
    """One full selection-set ledger row of candidate ``index`` from its block rows (in block order): per-prompt
    scores, accs and preds concatenated, errors renumbered to the whole set, tokens and wall time summed. Marked
    ``from_blocks`` (its cost is already counted in the block rows)."""
    samples = []
    for row in blocks:
        errors = {e["prompt"]: e["error"] for e in row.get("errors", [])}
        for j, (s, a, p) in enumerate(zip(row["scores"], row["accs"], row["preds"])):
            samples.append({"score": s, "acc": a, "pred": p, "error": errors.get(j)})
    first = blocks[0]
    return candidate_row(index, first["seed"], first["sigma"], samples, tokens=sum(r["tokens"] for r in blocks),
                         wall_s=math.fsum(r["wall_s"] for r in blocks), extra={"from_blocks": len(blocks)})


def summary(state: Race, rule: Rule, *, n_candidates: int, n_selection: int, block_size: int, n_blocks: int,
            block_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """results.json's ``selection`` block for a finished race: the rule, who stopped and what halving saved against
    scoring every candidate on the whole selection set (N x selection prompts)."""
    rollouts = sum(int(r["n"]) for r in block_rows)
    full = int(n_candidates) * int(n_selection)
    return {
        "strategy": "halving",
        "rule": dict(rule.as_dict(), block_size=int(block_size), n_blocks=int(n_blocks)),
        "n_candidates": int(n_candidates),
        "n_survivors": len(state.survivors),
        "n_stopped": len(state.stopped),
        "stopped": [state.stopped[i] for i in sorted(state.stopped)],
        "rollouts": rollouts,
        "tokens": sum(int(r["tokens"]) for r in block_rows),
        "full_rollouts": full,
        "rollouts_saved": full - rollouts,
        "rollouts_ratio": rollouts / full if full else None,
        "note": "stopped candidates have partial selection scores and are never in the top-K",
    }
