"""Merged models: a replica can hold a list of noise terms; `combined` is the one function that builds them."""

from __future__ import annotations

import pytest
import torch

from randopt_verl.core.noise import noise, perturbed
from randopt_verl.core.population import Candidate, Merged, ParamFilter, combined, perturb_module_

TERMS = ((11, 0.02), (987654, -0.013), (5, 0.004))


def hand(base: torch.Tensor, terms, name: str) -> torch.Tensor:
    """The definition written out: fp32 base, each term added as acc + eps * coeff in fp32, one rounding."""
    acc = base.detach().float().reshape(-1).clone()
    for seed, coeff in terms:
        acc = acc + noise(seed, name, acc.numel()) * torch.tensor(coeff, dtype=torch.float32)
    return acc.reshape(base.shape).to(base.dtype)


def test_terms_and_the_record_a_consolidated_model_is_read_from():
    c = Candidate(3, 42, 0.01)
    assert c.terms() == ((42, 0.01),)
    m = Merged(7, TERMS)
    assert m.terms() == TERMS
    # consolidated.json's model entry, as randopt_verl.core.merge plans it and tools/export reads it
    assert Merged.from_dict({"index": 7, "terms": [list(t) for t in TERMS], "scale": 1.0}) == m
    assert hash(m) == hash(Merged(7, TERMS))  # replicas compare what they hold: hashable and comparable


def test_one_term_is_perturbed_bitwise():
    t = torch.randn(1001)
    assert torch.equal(combined(t, ((9, 0.05),), "w"), perturbed(t, 9, "w", 0.05))
    b = t.to(torch.bfloat16)
    assert torch.equal(combined(b, ((9, 0.05),), "w"), perturbed(b, 9, "w", 0.05))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_several_terms_against_the_hand_computation(dtype):
    t = torch.randn(4, 257).to(dtype)
    before = t.clone()
    got = combined(t, TERMS, "layer.weight")
    assert got.dtype == dtype and torch.equal(got, hand(t, TERMS, "layer.weight"))
    assert torch.equal(t, before)  # the base is never modified
    # and it is the sum: close to the float64 computation (rounded once, so within one ulp of the dtype)
    exact = t.double().reshape(-1) + sum(noise(s, "layer.weight", t.numel()).double() * c for s, c in TERMS)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert torch.allclose(got.double().reshape(-1), exact, atol=tol, rtol=tol)


def test_merge_on_the_tiny_model_against_the_hand_computation(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    pf = ParamFilter(None, ["norm"])
    pristine = {n: p.detach().clone() for n, p in model.named_parameters()}  # as HFEngine keeps it
    m = Merged(0, TERMS)
    perturb_module_(model, m, pf, pristine)
    for name, p in model.named_parameters():
        want = hand(pristine[name], TERMS, name) if pf.selects(name, p) else pristine[name]
        assert torch.equal(p.detach(), want), name
    # and the restore is exact
    perturb_module_(model, None, pf, pristine)
    assert all(torch.equal(p.detach(), pristine[n]) for n, p in model.named_parameters())
