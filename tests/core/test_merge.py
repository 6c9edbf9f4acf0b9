"""core/merge.py, the consolidation's plan and choice (no Ray): weights, the shuffled control's permutation, the merged
terms; and the one check of its settings (config/schema.py::ConsolidateConfig)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from randopt_verl.core.es_update import zscore
from randopt_verl.config.errors import ConfigError
from randopt_verl.config.schema import ConsolidateConfig
from randopt_verl.core import merge as C


def settings(**overrides):
    """``randopt.consolidate``'s keys as the trainer passes them to `plan`: the typed node's defaults (checked)."""
    c = ConsolidateConfig(**overrides)
    return {"weighting": c.weighting, "over": c.over, "scales": c.scales, "shuffled_control": c.shuffled_control}


def rows(scores):
    return [{"index": i, "seed": 1000 + i, "sigma": 0.01 * (1 + i % 2), "score": s} for i, s in enumerate(scores)]


def test_weights_are_unit_length_zscores():
    r = [0.1, 0.5, 0.3, 0.3]
    w = C.weights(r)
    assert math.isclose(float(np.sum(w * w)), 1.0)
    z = zscore(r)
    assert np.allclose(w, z / np.linalg.norm(z))
    assert not np.any(C.weights([0.2, 0.2, 0.2]))  # equal rewards: nothing to weight


def test_permutation_is_seeded():
    p = C.permutation(3, 10)
    assert sorted(p) == list(range(10)) and p == C.permutation(3, 10) and p != C.permutation(4, 10)


def test_plan_terms_are_scale_times_weight_times_sigma():
    rs = rows([0.2, 0.6, 0.4, 0.1, 0.5])
    ranked = sorted(rs, key=lambda r: -r["score"])[:3]
    plan = C.plan(rs, ranked, **settings(scales=[2.0, 0.5]), population_seed=0)
    assert [m["index"] for m in plan["members"]] == [1, 4, 2]
    w = C.weights([0.6, 0.5, 0.4])
    assert plan["weights"] == pytest.approx(list(w))
    assert [(m["variant"], m["scale"]) for m in plan["models"]] == [
        ("weighted", 0.5), ("weighted", 2.0), ("shuffled", 0.5), ("shuffled", 2.0)]
    assert [m["index"] for m in plan["models"]] == [0, 1, 2, 3]
    want = [[r["seed"], 2.0 * wi * r["sigma"]] for r, wi in zip(ranked, w) if wi != 0]
    assert plan["models"][1]["terms"] == want
    # the control: the same members, the rewards permuted among them
    perm = plan["permutation"]
    sw = C.weights([[0.6, 0.5, 0.4][p] for p in perm])
    assert plan["shuffled_weights"] == pytest.approx(list(sw))
    # the whole population, and without the control
    allp = C.plan(rs, ranked, **settings(over="population", shuffled_control=False), population_seed=0)
    assert len(allp["members"]) == 5 and {m["variant"] for m in allp["models"]} == {"weighted"}
    assert allp["permutation"] is None


def test_choose_best_selection_score_ties_to_the_smaller_scale():
    models = [{"index": 0, "variant": "weighted", "scale": 0.5}, {"index": 1, "variant": "weighted", "scale": 1.0},
              {"index": 2, "variant": "shuffled", "scale": 0.5}]
    assert C.choose(models, {0: 0.3, 1: 0.4, 2: 0.1}, "weighted")["index"] == 1
    assert C.choose(models, {0: 0.4, 1: 0.4, 2: 0.1}, "weighted")["index"] == 0
    assert C.choose(models[:2], {0: 0.4, 1: 0.4}, "shuffled") is None


@pytest.mark.parametrize("node, msg", [
    ({"weighting": "softmax"}, "weighting"), ({"over": "all"}, "over"), ({"scales": [1.0, -1.0]}, "scales"),
])
def test_bad_settings_are_one_line_errors(node, msg):
    with pytest.raises(ConfigError, match=f"randopt.consolidate.{msg}"):
        ConsolidateConfig(**node)
    ConsolidateConfig()  # the defaults pass


def test_too_few_members():
    with pytest.raises(ValueError, match="at least 2"):
        C.plan(rows([0.1]), rows([0.1]), **settings(), population_seed=0)
