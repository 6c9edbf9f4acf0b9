"""Consolidation: one model out of the search's experts, without gradients (`randopt.consolidate`).

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from randopt_verl.core import noise, stats, vote
from randopt_verl.core.es_update import zscore
from randopt_verl.core.population import Merged

if TYPE_CHECKING:
    from randopt_verl.core.rundir import RunDir
    from randopt_verl.trainers.harness import PromptSet

RECORD_FORMAT = "randopt_verl.consolidated/1"
WEIGHTINGS = ("zscore",)
OVER = ("top_k", "population")
VARIANTS = ("weighted", "shuffled")
# the permutation of the shuffled control uses numpy's SeedSequence(population seed, spawn_key=(PERMUTATION_KEY,))
PERMUTATION_KEY = 0xC0




@dataclass(frozen=True)
class Settings:
    enabled: bool = False
    weighting: str = "zscore"
    over: str = "top_k"
    scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    shuffled_control: bool = True


def settings(ro: Mapping[str, Any]) -> Settings:
    """``randopt.consolidate`` as `Settings` (absent keys: the defaults, so a run directory written before this
    setting existed can still be consolidated); a bad value is a one-line error with its fix (`check`; the typed
    config, randopt_verl.config.schema.ConsolidateConfig, runs the same check before any model loads)."""
    node = dict((ro.get("consolidate", None) or {}) if hasattr(ro, "get") else {})
    d = Settings()
    return check(Settings(enabled=bool(node.get("enabled", d.enabled)),
                          weighting=str(node.get("weighting", d.weighting)), over=str(node.get("over", d.over)),
                          scales=tuple(float(x) for x in (node.get("scales", None) or d.scales)),
                          shuffled_control=bool(node.get("shuffled_control", d.shuffled_control))))


def check(s: Settings) -> Settings:
    """``s``, or a ValueError naming the key and the fix."""
    if s.weighting not in WEIGHTINGS:
        raise ValueError(f"randopt.consolidate.weighting={s.weighting!r}: use one of {', '.join(WEIGHTINGS)}")
    if s.over not in OVER:
        raise ValueError(f"randopt.consolidate.over={s.over!r}: use one of {', '.join(OVER)}")
    if not s.scales or any(not math.isfinite(x) or x <= 0 for x in s.scales):
        raise ValueError(f"randopt.consolidate.scales={list(s.scales)}: give a non-empty list of positive scales, "
                         "e.g. [0.5,1.0,2.0]")
    return s


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


def plan(rows: Sequence[Mapping[str, Any]], ranked: Sequence[Mapping[str, Any]], s: Settings,
         population_seed: int) -> dict[str, Any]:
    """The merged models to score, from the ledger's candidate rows (deterministic: a resumed run plans the same)."""
    members = list(ranked) if s.over == "top_k" else vote.rank(rows)
    if len(members) < 2:
        raise ValueError(f"randopt.consolidate needs at least 2 candidates to merge ({len(members)} with "
                         f"over={s.over}); raise randopt.top_k or use over=population")
    rewards = [float(m["score"]) for m in members]
    perm = permutation(population_seed, len(members))
    by_variant = {"weighted": weights(rewards)}
    if s.shuffled_control:
        by_variant["shuffled"] = weights([rewards[p] for p in perm])
    models = []
    for variant, w in by_variant.items():
        for scale in sorted(s.scales):
            models.append({"index": len(models), "variant": variant, "scale": scale, "terms": terms(members, w, scale)})
    return {
        "format": RECORD_FORMAT,
        "noise_spec": noise.NOISE_SPEC,
        "weighting": s.weighting, "over": s.over, "scales": sorted(s.scales), "shuffled_control": s.shuffled_control,
        "members": [{"index": int(m["index"]), "seed": int(m["seed"]), "sigma": float(m["sigma"]),
                     "selection_score": float(m["score"])} for m in members],
        "weights": [float(x) for x in by_variant["weighted"]],
        "permutation": perm if s.shuffled_control else None,
        "shuffled_weights": [float(x) for x in by_variant["shuffled"]] if s.shuffled_control else None,
        "models": models,
    }


def merged(model: Mapping[str, Any]) -> Merged:
    return Merged(index=int(model["index"]), term_list=tuple((int(a), float(b)) for a, b in model["terms"]))


def choose(models: Sequence[Mapping[str, Any]], scores: Mapping[int, float], variant: str) -> Optional[dict]:
    """The variant's model with the best selection score (ties: the smaller scale); None if the variant is absent."""
    mine = [m for m in models if m["variant"] == variant]
    if not mine:
        return None
    return min(mine, key=lambda m: (-scores[m["index"]], m["scale"]))


def run(trainer, run_dir: "RunDir", rows, ranked, s: Settings, selection: "PromptSet", test: "PromptSet") -> dict:
    """Plan, score the merged models on the selection set, choose, answer the test set; returns the record (also
    written to consolidated.json) with the chosen models' test rows under ``"test_rows"`` (not written)."""
    from randopt_verl.trainers.harness import Cost, greedy

    record = plan(rows, ranked, s, int(trainer.config.randopt.seed))
    old = run_dir.consolidated()
    if old is not None and {k: old.get(k) for k in record} != record:
        print(f"randopt: the consolidation plan changed (settings or candidates): its evaluations are redone")
        run_dir.reset_consolidation()
    run_dir.write_consolidated(record)
    models = {m["index"]: merged(m) for m in record["models"]}
    sampling = lambda i: greedy(trainer.response_length)  # noqa: E731
    sel_cost = Cost.of_rows(run_dir.consolidation_ledger.read().rows)
    trainer._answer(run_dir.consolidation_ledger, models, selection, sampling, sel_cost, "merged models (selection)")
    by_index = run_dir.consolidation_ledger.read().by_index
    record["selection_scores"] = {str(i): by_index[i]["score"] for i in models}
    scores = {i: by_index[i]["score"] for i in models}
    chosen = {v: choose(record["models"], scores, v) for v in VARIANTS}
    chosen = {v: m for v, m in chosen.items() if m is not None}
    record["chosen"] = {v: m["index"] for v, m in chosen.items()}
    test_cost = Cost.of_rows(run_dir.consolidation_test_ledger.read().rows)
    trainer._answer(run_dir.consolidation_test_ledger, {m["index"]: models[m["index"]] for m in chosen.values()},
                    test, sampling, test_cost, "merged models (test)")
    run_dir.write_consolidated(record)
    tests = run_dir.consolidation_test_ledger.read().by_index
    return dict(record, test_rows={v: tests[m["index"]] for v, m in chosen.items()},
                selection_cost=Cost.of_rows([by_index[i] for i in models]).as_dict())


def results_block(record: Mapping[str, Any]) -> dict[str, Any]:
    """results.json's ``consolidated`` block from `run`'s return value (schema: randopt_verl.core.results_schema)."""
    from randopt_verl.trainers.harness import Cost

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
