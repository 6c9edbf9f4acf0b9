"""The merge of `randopt.consolidate`: one model out of the search's experts, without gradients (pure logic; the
RandOpt trainer's consolidation step, trainers/randopt.py, scores what `plan` lists).

The merged model is ``theta + sum_i c_i eps_i`` over a set of evaluated candidates i (their seeds), with
``c_i = s * w_i * sigma_i``:

- members: the selected top-K (``over: top_k``) or every scored candidate (``over: population``);
- weights: their selection scores z-scored as the ES update z-scores rewards (`core.es_update.zscore`: mean 0,
  population std 1) and divided by ``sqrt(sum z^2)``, so the weight vector has unit length and the merged
  displacement at scale s is about s times as long as one candidate's (the eps_i are nearly orthogonal). Candidates
  better than the members' mean move the model towards their noise, worse ones away from it (``weighting: zscore``,
  the one rule so far);
- the scale s: each value of ``scales`` is one merged model scored on the selection set through the harness (greedy,
  like every candidate); the best selection score wins (ties: the smaller scale). The test set never takes part.
- its control (``shuffled_control``): the same procedure with the members' scores permuted among them (a seeded
  permutation, `permutation`), its own scale chosen the same way. A merged model that beats its shuffled control
  uses what the rewards say, not just the averaging of random directions.

Then both chosen models answer the test set greedily: one forward pass (one rollout) per prompt, against K for maj@K.

Every merged model is a `core.population.Merged` (its terms ``(seed, c_i)``), so the replicas hold it the way they
hold a candidate (`population.combined`: fp32 base + the terms, rounded once). `consolidated.json` (`RunDir`) keeps
the plan (members, weights, permutation, every model's terms) and the choice, enough to rebuild the model anywhere
(`randopt-verl export RUN_DIR --consolidated`); the evaluations go to the consolidation ledgers, each row on disk
before it counts, so an interrupted consolidation resumes, and a changed plan (other settings) starts it again
without touching the search.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from randopt_verl.core import noise, stats, vote
from randopt_verl.core.cost import Cost
from randopt_verl.core.es_update import zscore

RECORD_FORMAT = "randopt_verl.consolidated/1"
WEIGHTINGS = ("zscore",)
OVER = ("top_k", "population")
VARIANTS = ("weighted", "shuffled")
# the permutation of the shuffled control uses numpy's SeedSequence(population seed, spawn_key=(PERMUTATION_KEY,))
PERMUTATION_KEY = 0xC0


def weights(rewards: Sequence[float]) -> np.ndarray:
    """Unit-length z-scores of the rewards (see the module docstring); all zeros when the rewards are all equal."""
    z = zscore(rewards)
    norm = math.sqrt(float(np.sum(z * z)))
    return z / norm if norm > 0 else z


def permutation(population_seed: int, n: int) -> list[int]:
    """The shuffled control's permutation: member i takes the reward of member ``perm[i]``."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(population_seed),
                                                                      spawn_key=(PERMUTATION_KEY,))))
    return [int(i) for i in rng.permutation(n)]


def terms(members: Sequence[Mapping[str, Any]], w: Sequence[float], scale: float) -> list[list]:
    """``[[seed, s * w_i * sigma_i], ...]`` in member order, members with weight 0 left out (they add nothing)."""
    return [[int(m["seed"]), float(scale) * float(wi) * float(m["sigma"])] for m, wi in zip(members, w) if wi != 0.0]


def plan(rows: Sequence[Mapping[str, Any]], ranked: Sequence[Mapping[str, Any]], *, weighting: str, over: str,
         scales: Sequence[float], shuffled_control: bool, population_seed: int) -> dict[str, Any]:
    """The merged models to score, from the ledger's candidate rows (deterministic: a resumed run plans the same).
    The settings are the ``randopt.consolidate`` keys, defined and checked once in
    randopt_verl/config/schema.py::ConsolidateConfig."""
    if weighting not in WEIGHTINGS or over not in OVER:
        raise ValueError(f"weighting={weighting!r}, over={over!r}: use one of {WEIGHTINGS} and one of {OVER}")
    members = list(ranked) if over == "top_k" else vote.rank(rows)
    if len(members) < 2:
        raise ValueError(f"randopt.consolidate needs at least 2 candidates to merge ({len(members)} with "
                         f"over={over}); raise randopt.top_k or use over=population")
    rewards = [float(m["score"]) for m in members]
    perm = permutation(population_seed, len(members))
    by_variant = {"weighted": weights(rewards)}
    if shuffled_control:
        by_variant["shuffled"] = weights([rewards[p] for p in perm])
    models = []
    for variant, w in by_variant.items():
        for scale in sorted(scales):
            models.append({"index": len(models), "variant": variant, "scale": scale, "terms": terms(members, w, scale)})
    return {
        "format": RECORD_FORMAT,
        "noise_spec": noise.NOISE_SPEC,
        "weighting": weighting, "over": over, "scales": sorted(float(x) for x in scales),
        "shuffled_control": shuffled_control,
        "members": [{"index": int(m["index"]), "seed": int(m["seed"]), "sigma": float(m["sigma"]),
                     "selection_score": float(m["score"])} for m in members],
        "weights": [float(x) for x in by_variant["weighted"]],
        "permutation": perm if shuffled_control else None,
        "shuffled_weights": [float(x) for x in by_variant["shuffled"]] if shuffled_control else None,
        "models": models,
    }


def choose(models: Sequence[Mapping[str, Any]], scores: Mapping[int, float], variant: str) -> Optional[dict]:
    """The variant's model with the best selection score (ties: the smaller scale); None if the variant is absent."""
    mine = [m for m in models if m["variant"] == variant]
    if not mine:
        return None
    return min(mine, key=lambda m: (-scores[m["index"]], m["scale"]))


def results_block(record: Mapping[str, Any]) -> dict[str, Any]:
    """results.json's ``consolidated`` block from the trainer's record (schema: randopt_verl.core.results_schema)."""
    models = {m["index"]: m for m in record["models"]}
    scores = {int(i): v for i, v in record["selection_scores"].items()}
    w = models[record["chosen"]["weighted"]]
    row = record["test_rows"]["weighted"]
    out: dict[str, Any] = {
        "test_acc": row["acc"], "ci95": list(stats.accuracy_ci(row["accs"])),
        "scale": w["scale"], "weighting": record["weighting"], "over": record["over"],
        "n_members": len(record["members"]), "n_terms": len(w["terms"]),
        "selection_score": scores[w["index"]],
        "selection_score_by_scale": {repr(m["scale"]): scores[i] for i, m in models.items()
                                     if m["variant"] == "weighted"},
        "forward_passes_per_prompt": 1,
        "test_cost": Cost.of_rows([row]).as_dict(),
        "selection_cost": record["selection_cost"],
    }
    if "shuffled" in record["test_rows"]:
        c = models[record["chosen"]["shuffled"]]
        crow = record["test_rows"]["shuffled"]
        out.update({
            "shuffled_control_test_acc": crow["acc"], "shuffled_control_ci95": list(stats.accuracy_ci(crow["accs"])),
            "shuffled_control_scale": c["scale"], "shuffled_control_selection_score": scores[c["index"]],
            "shuffled_control_selection_score_by_scale": {repr(m["scale"]): scores[i] for i, m in models.items()
                                                          if m["variant"] == "shuffled"},
        })
    return out
