"""Candidates, which parameters they perturb, and the one function that builds a candidate's weights.

What a replica can hold is a list of noise terms ``[(seed, coeff), ...]`` on top of the base weights: every
selected parameter becomes ``fp32(base) + sum_i coeff_i * noise(seed_i, name)`` (terms added in order, in fp32),
rounded once to the target dtype (`combined`). A search candidate (`Candidate`) is the one-term case
``[(seed, sigma)]``; a consolidated model (`Merged`) has one term per merged candidate. Both expose ``terms()``, and
every consumer (the hf server's in-place path `perturb_module_`, the vLLM perturb-at-sync stream
randopt_verl.workers.perturbed_weight_stream, the export and the consolidation) goes through `combined`, so one
function defines the weights of whatever a replica holds. Everything here takes plain data so that the trainers,
the weight-sync wrapper and the CPU rollout server share it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .noise import perturb_, perturbed

_SEED_BOUND = 2**31

Terms = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Candidate:
    """One point of the search: ``index`` in the population, noise ``seed`` and scale ``sigma``."""

    index: int
    seed: int
    sigma: float

    def terms(self) -> Terms:
        """The one noise term of a search candidate: ``((seed, sigma),)``."""
        return ((int(self.seed), float(self.sigma)),)


@dataclass(frozen=True)
class Merged:
    """A model made of several noise terms on the base weights (a consolidated model): ``base + sum_i c_i eps_i``.

    ``index`` is its number among the models evaluated beside the search (randopt_verl.core.merge);
    ``term_list`` the ``(seed, coeff)`` pairs, in summation order."""

    index: int
    term_list: Terms

    def terms(self) -> Terms:
        return self.term_list

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Merged:
        """A model entry of consolidated.json (``{"index", "terms": [[seed, coeff], ...], ...}``)."""
        return cls(index=int(d["index"]), term_list=tuple((int(s), float(c)) for s, c in d["terms"]))


def combined(tensor: torch.Tensor, terms: Sequence[tuple[int, float]], name: str, *, offset: int = 0) -> torch.Tensor:
    """A new tensor ``(fp32(tensor) + sum_i coeff_i * noise(seed_i, name)).to(tensor.dtype)``: the terms added in
    order, each as ``perturb_`` adds it (``acc + noise * coeff`` in fp32), rounded to the tensor's dtype once.

    One term is exactly ``perturbed(tensor, seed, name, coeff)`` (the same two fp32 operations and one rounding).
    The input is never modified; no terms returns a copy of the input."""
    terms = list(terms)
    if len(terms) == 1:
        seed, coeff = terms[0]
        return perturbed(tensor, int(seed), name, float(coeff), offset=offset)
    acc = tensor.detach().to(torch.float32, copy=True).contiguous()
    for seed, coeff in terms:
        perturb_(acc, int(seed), name, float(coeff), offset=offset)
    return acc.to(tensor.dtype)


def sample_population(global_seed: int, n: int, sigmas: Sequence[float]) -> list[Candidate]:
    """``n`` candidates drawn from ``numpy.random.Generator(PCG64(global_seed))``.

    Per candidate, in order: a seed uniform in [0, 2**31), redrawn until unseen (seeds are distinct),
    then a sigma uniform over ``sigmas``. Drawing one candidate at a time makes the population
    prefix-stable: the first n of a population of n + m are the population of n, so growing N on
    resume keeps (and does not re-evaluate) the candidates already scored.
    """
    if n < 0:
        raise ValueError(f"population size must be >= 0, got {n}")
    if not sigmas:
        raise ValueError("sigmas must not be empty")
    rng = np.random.Generator(np.random.PCG64(global_seed))
    seen: set[int] = set()
    out = []
    for index in range(n):
        seed = int(rng.integers(0, _SEED_BOUND))
        while seed in seen:
            seed = int(rng.integers(0, _SEED_BOUND))
        seen.add(seed)
        sigma = float(sigmas[int(rng.integers(0, len(sigmas)))])
        out.append(Candidate(index=index, seed=seed, sigma=sigma))
    return out


class ParamFilter:
    """Which parameters a candidate perturbs: regexes matched with ``re.search`` on HF names.

    ``include=None`` selects every floating tensor (the paper perturbs all of them, embeddings, norms
    and biases included); an empty list selects none. ``exclude`` wins over ``include``. Integer and
    bool tensors are never selected.
    """

    def __init__(self, include: list[str] | None = None, exclude: list[str] | None = None):
        self.include = None if include is None else list(include)
        self.exclude = list(exclude or [])
        self._include = None if include is None else [re.compile(p) for p in include]
        self._exclude = [re.compile(p) for p in self.exclude]

    def selects(self, name: str, tensor: torch.Tensor) -> bool:
        if not tensor.is_floating_point():
            return False
        if self._include is not None and not any(p.search(name) for p in self._include):
            return False
        return not any(p.search(name) for p in self._exclude)

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> ParamFilter:
        """The filter of a config node ``{include, exclude}`` (randopt.param_filter, es.param_filter); None or an
        empty node selects every floating tensor. The one place a filter is built from config: the trainer builds
        it once and passes this object on."""
        node = node or {}
        include, exclude = node.get("include"), node.get("exclude")
        return cls(None if include is None else [str(p) for p in include], [str(p) for p in (exclude or [])])

    def to_dict(self) -> dict[str, Any]:
        """``{"include", "exclude"}``: what the run's identity and an exported expert record."""
        return {"include": self.include, "exclude": self.exclude}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamFilter) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        return f"ParamFilter(include={self.include!r}, exclude={self.exclude!r})"


def _storage_key(t: torch.Tensor):
    if t.device.type == "meta" or t.untyped_storage().data_ptr() == 0:
        return ("id", id(t))
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def tied_aliases(model_or_named: torch.nn.Module | Iterable[tuple[str, torch.Tensor]]) -> dict[str, str]:
    """``{alias: canonical}`` for tensors that share storage (tied weights, e.g. ``lm_head.weight`` ->
    ``model.embed_tokens.weight``).

    Given a module, its parameters are walked with duplicates kept; the canonical name is the first
    one, i.e. the one ``named_parameters()`` (which deduplicates) yields. Given ``(name, tensor)``
    pairs (a state dict), the first name seen is canonical. Noise and filtering for an alias use the
    canonical name, so a tied tensor is perturbed once and both names carry the same value.
    """
    if isinstance(model_or_named, torch.nn.Module):
        named = model_or_named.named_parameters(remove_duplicate=False)
    else:
        named = model_or_named
    first: dict[Any, str] = {}
    aliases: dict[str, str] = {}
    by_object = isinstance(model_or_named, torch.nn.Module)
    for name, tensor in named:
        # a module's tied parameters are one Parameter object (also under FSDP2, whose DTensors have no
        # accessible storage); a state dict's tied entries are distinct tensors over one storage
        key = ("id", id(tensor)) if by_object else _storage_key(tensor)
        if key in first:
            if first[key] != name:
                aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def perturb_module_(
    module: torch.nn.Module,
    candidate: Candidate | Merged | None,
    param_filter: ParamFilter,
    pristine: Mapping[str, torch.Tensor],
) -> None:
    """Set the module's weights to ``candidate``'s in place: every parameter with a pristine copy becomes
    ``combined(pristine, candidate.terms())`` if selected, else ``pristine``; ``candidate=None`` restores all of them.

    Always copying from the pristine copy, never subtracting regenerated noise, makes restore exact
    (subtraction drifts in bf16 and even in fp32 over thousands of candidates), and makes the module's
    state a function of the candidate alone, whatever was loaded before. ``named_parameters()``
    deduplicates, so a tied weight is set once, under its canonical name. A selected parameter without a
    pristine copy is an error: it could not be restored.
    """
    with torch.no_grad():
        for name, param in module.named_parameters():
            selected = candidate is not None and param_filter.selects(name, param)
            if name not in pristine:
                if selected:
                    raise KeyError(f"no pristine copy of selected parameter {name!r}")
                continue
            base = pristine[name]
            param.copy_(combined(base, candidate.terms(), name) if selected else base)


# base self-consistency sample s is drawn with seed population_seed * SAMPLE_SEED_STRIDE + s: independent of replica
# count, order and restarts, and apart from every other population seed's samples
SAMPLE_SEED_STRIDE = 100003


def base_sample_seed(population_seed: int, s: int) -> int:
    """The sampling seed of the base model's self-consistency sample ``s``."""
    return int(population_seed) * SAMPLE_SEED_STRIDE + int(s)
