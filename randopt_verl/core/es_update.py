"""The ES-at-scale update (Qiu, Gan, Hayes et al. 2025), the ES baseline's only algorithmic step.

Population of N seeds evaluated at theta + sigma * eps_n with mean rewards R_n; then
``z = (R - mean(R)) / (std(R) + 1e-8)`` (population std) and ``theta <- theta + (alpha / N) * sum_n z_n eps_n``
with 1/sigma folded into alpha; no mirrored sampling, rank shaping or Adam. eps_n is the canonical
noise (randopt_verl.core.noise) of seed_n, so member n's evaluation and its share of the update use the same
perturbation, and a shard updated with its offset gets exactly its slice of the full-tensor update.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .noise import noise

ZSCORE_EPS = 1e-8


def zscore(rewards: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(R - mean) / (std + 1e-8)`` with the population std (ddof=0), in float64.

    Equal rewards give exact zeros (no update): the formula alone would turn the mean's rounding error
    (e.g. mean([0.4] * 3) != 0.4) into z of about 1e-8 / 1e-8.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.size == 0 or np.all(r == r.flat[0]):
        return np.zeros_like(r)
    return (r - r.mean()) / (r.std() + ZSCORE_EPS)


def es_update_(
    tensor: torch.Tensor,
    name: str,
    seeds: Sequence[int],
    z: Sequence[float] | np.ndarray,
    alpha: float,
    *,
    offset: int = 0,
) -> torch.Tensor:
    """In place: ``tensor <- tensor + (alpha / N) * sum_n z_n * eps_n``, where eps_n is
    ``noise(seeds[n], name)`` over the elements ``[offset, offset + tensor.numel())`` of parameter ``name``.

    The sum is accumulated in fp32 and added to ``tensor.float()`` before one cast back to the tensor's
    dtype: adding each term to a bf16 weight separately would round most of a 5e-4-sized step away
    (the original ES code's bf16 accumulation has this defect). Returns ``tensor``.
    """
    if len(seeds) != len(z):
        raise ValueError(f"{len(seeds)} seeds but {len(z)} z-scores")
    n = len(seeds)
    if n == 0:
        return tensor
    flat = tensor.detach().reshape(-1)
    acc = torch.zeros(flat.numel(), dtype=torch.float32, device=flat.device)
    for seed, zn in zip(seeds, z):
        acc.add_(noise(int(seed), name, flat.numel(), offset=offset, device=flat.device).mul_(float(zn)))
    acc.mul_(alpha / n)
    acc.add_(flat if flat.dtype in (torch.float32, torch.bfloat16, torch.float16) else flat.float())
    with torch.no_grad():
        tensor.copy_(acc.reshape(tensor.shape))
    return tensor


def iteration_seeds(seed: int, iteration: int, n: int) -> list[int]:
    """Candidate seeds of ES iteration ``iteration``: a pure function of (seed, iteration), so resume redraws the
    same."""
    rng = np.random.Generator(np.random.PCG64([int(seed), int(iteration)]))
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=n)]
