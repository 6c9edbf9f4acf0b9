"""Candidates, populations, parameter filters, tied weights, and a candidate applied to a module from its pristine
copy (the hf server's path). That the weight stream (randopt_verl.workers.perturbed_weight_stream, the vLLM path)
builds the same weights is tested in tests/test_workers.py."""

import dataclasses

import pytest
import torch

from randopt_verl.core.noise import perturbed
from randopt_verl.core.population import (
    Candidate,
    ParamFilter,
    perturb_module_,
    sample_population,
    tied_aliases,
)

SIGMAS = [5e-4, 1e-3, 2e-3]


def pristine_copy(module, param_filter=None):
    """The pristine copy perturb_module_ rebuilds from, taken as HFEngine takes it: named_parameters() (a tied
    weight once, under its canonical name), detached and cloned; only the selected ones with a filter."""
    return {n: p.detach().clone() for n, p in module.named_parameters()
            if param_filter is None or param_filter.selects(n, p)}


def test_candidate_is_frozen_and_hashable():
    c = Candidate(index=3, seed=123, sigma=1e-3)
    assert c == Candidate(3, 123, 1e-3) and hash(c) == hash(Candidate(3, 123, 1e-3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.seed = 4


def test_population_deterministic_distinct_and_in_range():
    pop = sample_population(0, 500, SIGMAS)
    assert pop == sample_population(0, 500, SIGMAS)
    assert [c.index for c in pop] == list(range(500))
    assert len({c.seed for c in pop}) == 500
    assert all(0 <= c.seed < 2**31 for c in pop)
    assert {c.sigma for c in pop} == set(SIGMAS)  # each sigma drawn (500 draws over 3 values)
    assert sample_population(1, 500, SIGMAS) != pop
    assert sample_population(0, 0, SIGMAS) == []


def test_population_is_prefix_stable():
    small, big = sample_population(17, 40, SIGMAS), sample_population(17, 100, SIGMAS)
    assert big[:40] == small


def test_population_rejects_bad_arguments():
    with pytest.raises(ValueError):
        sample_population(0, 3, [])
    with pytest.raises(ValueError):
        sample_population(0, -1, SIGMAS)


def test_param_filter():
    w, ids = torch.zeros(2, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.int64)
    everything = ParamFilter(None, None)
    assert everything.selects("model.layers.0.mlp.up_proj.weight", w)
    assert not everything.selects("model.layers.0.mlp.up_proj.weight", ids)  # floating tensors only
    f = ParamFilter(include=[r"\.mlp\.", r"norm"], exclude=[r"layers\.1\."])
    assert f.selects("model.layers.0.mlp.up_proj.weight", w)
    assert f.selects("model.norm.weight", w)
    assert not f.selects("model.layers.1.mlp.up_proj.weight", w)  # exclude wins
    assert not f.selects("model.layers.0.self_attn.q_proj.weight", w)
    assert not ParamFilter(include=[]).selects("anything", w)
    assert not ParamFilter(exclude=["vision"]).selects("visual.vision_tower.x", w)


def test_tied_aliases_from_module_and_state_dict(tied_lm):
    m = tied_lm(torch.bfloat16)
    assert tied_aliases(m) == {"lm_head.weight": "embed_tokens.weight"}
    assert [n for n, _ in m.named_parameters()].count("lm_head.weight") == 0  # canonical is the survivor
    assert tied_aliases(m.state_dict().items()) == {"lm_head.weight": "embed_tokens.weight"}
    untied = {"a": torch.zeros(3), "b": torch.zeros(3)}  # equal values, separate storage
    assert tied_aliases(untied.items()) == {}


def test_module_perturb_and_exact_restore(tied_lm):
    m = tied_lm(torch.bfloat16)
    pf = ParamFilter()
    pristine = pristine_copy(m, pf)
    assert "lm_head.weight" not in pristine  # deduplicated: the tied weight is held once
    for seed in range(20):  # many cycles: restore is a copy, so nothing drifts
        perturb_module_(m, Candidate(seed, 1000 + seed, 2e-3), pf, pristine)
    perturb_module_(m, None, pf, pristine)
    for name, p in m.named_parameters():
        assert torch.equal(p.detach(), pristine[name]), name
    assert m.lm_head.weight is m.embed_tokens.weight


def test_module_perturb_requires_pristine_of_selected(tied_lm):
    m = tied_lm(torch.bfloat16)
    pristine = pristine_copy(m, ParamFilter(include=["proj"]))
    with pytest.raises(KeyError):
        perturb_module_(m, Candidate(0, 1, 1e-3), ParamFilter(), pristine)
    perturb_module_(m, Candidate(0, 1, 1e-3), ParamFilter(include=["proj"]), pristine)
    assert torch.equal(m.proj.weight.detach(), perturbed(pristine["proj.weight"], 1, "proj.weight", 1e-3))
