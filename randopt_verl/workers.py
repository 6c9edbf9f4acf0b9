"""`SearchWorker`: verl's ActorRolloutRefWorker with the two things RandOpt and ES need from the training side.

1. Perturb-at-sync (docs/ARCHITECTURE.md, decisions 2 and 3): `set_sync_candidates` gives every rank the candidate of the rollout
   replica it feeds; the FSDP2 per-tensor weight stream (`engine.get_per_tensor_param`: full tensors under HF
   names, gathered one at a time onto the GPU) is wrapped so that the tensors leaving for that replica are
   base + Σ coeff·ε(seed, HF name) over the candidate's terms (one term σ·ε for a search candidate, several for a
   consolidated model), computed in fp32 (`randopt_verl.core.population.combined`; one fused kernel per term on
   CUDA) and rounded once to the rollout's dtype on the way out (`travel_dtype`: bf16 by default, as vLLM stores
   it; unperturbed tensors alike, so a sync carries half the bytes of the fp32 actor's). A tied alias
   (`lm_head.weight` of a model with tied embeddings) is perturbed once, under its canonical name, and carries
   the very tensor its canonical name got. verl's own `update_weights` (and so vLLM's weight loading) runs
   unchanged; the FSDP parameters are never modified.
2. The ES update (`es_update`): every rank adds (α/N)·Σ z_n ε_n to its own FSDP2 shard, with the slice of the
   canonical noise that the shard holds, in fp32, where the shard lives: on the GPU (the fused kernel) when it is
   there, else on the host (with `forward_only`, verl's FSDP2 engine keeps shards in pinned CPU memory through
   `CPUOffloadPolicy`), where each rank's numba pool uses its share of the cores so the ranks of one host do not
   oversubscribe it. Then verl's normal weight sync carries the new weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Optional

import torch
from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.engine_workers import ActorRolloutRefWorker

from randopt_verl.core.population import Candidate, Merged, ParamFilter, combined, tied_aliases

logger = logging.getLogger(__name__)


_ROLLOUT_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                   "fp16": torch.float16, "half": torch.float16, "float32": torch.float32, "fp32": torch.float32,
                   "float": torch.float32}


def travel_dtype(rollout) -> Optional[torch.dtype]:
    """The dtype the weight stream carries floating tensors in: the rollout's weight dtype
    (``actor_rollout_ref.rollout.dtype``, verl's default bfloat16), which vLLM rounds fp32 tensors to anyway on
    loading, so the FSDP actor's fp32 tensors would travel at twice the bytes for nothing. None (no cast) for the hf
    backend, which keeps an fp32 pristine copy of what arrives and rounds it itself, and for a dtype the rollout
    resolves itself (``auto``)."""
    if str(rollout.name) == "hf":
        return None
    return _ROLLOUT_DTYPES.get(str(rollout.get("dtype", "bfloat16")).lower())


def _cast(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    if dtype is None or not tensor.is_floating_point() or tensor.dtype == dtype:
        return tensor
    return tensor.to(dtype)  # fp32 -> bf16/fp16: round to nearest even, once, as vLLM's copy into its weight does


def perturbed_weight_stream(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    candidate: Optional[Candidate | Merged],
    param_filter: ParamFilter,
    aliases: Mapping[str, str],
    dtype: Optional[torch.dtype] = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """The weight stream with selected tensors replaced by `combined` (base + Σ coeff·ε(seed, canonical name) over the
    candidate's terms; new tensors), and every floating tensor, perturbed or not, cast to ``dtype`` (None: kept).

    The perturbed sum is formed in the stream's dtype (fp32 from the FSDP actor: exact fp32 arithmetic, no rounding
    to a narrower type) and rounded to ``dtype`` once on the way out: bitwise what vLLM stores when it receives the
    fp32 tensor and rounds it into its bf16 weight, at half the bytes.

    Names that share one tensor (``aliases``: alias -> canonical) are perturbed once: whichever name of a tied group
    arrives first is perturbed under the canonical name and the result is handed out again, unchanged, for the
    other names (vLLM drops ``lm_head.weight`` of a tied model, so perturbing it again was pure waste; an engine that
    does load it gets the same values). The held tensor is released once every name of its group has passed.
    """
    if candidate is None:
        for name, tensor in named_tensors:
            yield name, _cast(tensor, dtype)
        return
    group_size: dict[str, int] = {}
    for alias, canonical in aliases.items():
        group_size[canonical] = group_size.get(canonical, 1) + 1
    held: dict[str, list] = {}  # canonical -> [tensor, names still to come]
    for name, tensor in named_tensors:
        canonical = aliases.get(name, name)
        if canonical in held:
            entry = held[canonical]
            entry[1] -= 1
            if entry[1] <= 0:
                del held[canonical]
            yield name, entry[0]
            continue
        out = combined(tensor, candidate.terms(), canonical) if param_filter.selects(canonical, tensor) else tensor
        out = _cast(out, dtype)
        if group_size.get(canonical, 1) > 1:
            held[canonical] = [out, group_size[canonical] - 1]
        yield name, out


def host_threads_per_rank() -> int:
    """This rank's share of the host's cores: the cores this process may run on / the ranks on this host, at
    least 1.

    The ranks on this host: verl 0.9.1's `RayWorkerGroup` puts `RAY_LOCAL_WORLD_SIZE` (the processes of the
    resource pool on one node) into every worker's environment; it never sets torchrun's `LOCAL_WORLD_SIZE`, which
    is read only as the fallback for a process started some other way."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    ranks = os.environ.get("RAY_LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or "1"
    return max(1, cores // max(1, int(ranks)))


@contextlib.contextmanager
def host_thread_share(threads: int):
    """numba's and torch's CPU thread pools limited to ``threads`` inside the block, restored after (numba's count
    is per calling thread, torch's per process: each rank is its own process)."""
    import numba

    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    old_nb, old_torch = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        numba.set_num_threads(old_nb)
        torch.set_num_threads(old_torch)


def es_update_shards(named_params: Iterable[tuple[str, torch.Tensor]], seeds, z, alpha: float,
                     param_filter: ParamFilter, threads: int) -> int:
    """θ ← θ + (α/N)·Σ z_n ε_n on each selected (shard of a) parameter, where it lives; returns elements updated.

    A CUDA shard is updated on its GPU (``noise`` takes the fused kernel there); a host shard with the numba kernel
    in a pool of ``threads`` threads."""
    from randopt_verl.core.es_update import es_update_

    n_elems = 0
    with torch.no_grad(), host_thread_share(threads):
        for name, param in named_params:  # named_parameters(): tied weights appear once
            if not param_filter.selects(name, param):
                continue
            local, offset = shard_offset(param)
            if local.dtype != torch.float32:
                raise ValueError(
                    f"ES needs fp32 parameters to accumulate updates; {name} is {local.dtype}. "
                    "Set actor_rollout_ref.actor.fsdp_config.model_dtype=fp32"
                )
            es_update_(local, name, seeds, z, alpha, offset=offset)
            n_elems += local.numel()
    return n_elems


def shard_offset(param: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(local tensor, flat offset of its first element in the full parameter) for a plain or FSDP2 DTensor."""
    from torch.distributed.tensor import DTensor

    if not isinstance(param, DTensor):
        return param.data, 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offsets = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    row = 1
    for d in param.shape[1:]:
        row *= d
    if any(o for o in offsets[1:]):
        raise ValueError("shard_offset: only dim-0 sharding (FSDP2's Shard(0)) maps to one flat slice")
    return param.to_local(), int(offsets[0]) * row if param.dim() else 0


class SearchWorker(ActorRolloutRefWorker):
    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        super().init_model()
        self._sync_candidate: Optional[Candidate | Merged] = None
        self._param_filter = ParamFilter(None, None)
        if "actor" in self.role and "rollout" in self.role:
            engine = self.actor.engine
            # FSDP2 keeps each tied group one Parameter object under HF names: the aliases the stream will carry
            self._aliases = tied_aliases(engine.module)
            self._travel_dtype = travel_dtype(self.config.rollout)
            base_stream = engine.get_per_tensor_param

            def perturbed_stream(*args, **kwargs):
                gen, peft = base_stream(*args, **kwargs)
                if peft is not None:
                    if self._sync_candidate is None:
                        return gen, peft  # LoRA syncs stay verl's own
                    raise ValueError("perturb-at-sync does not apply to LoRA adapters; merge them")
                return perturbed_weight_stream(gen, self._sync_candidate, self._param_filter, self._aliases,
                                               self._travel_dtype), peft

            # the narrowest hook: the stream update_weights reads from; update_weights itself is verl's own
            engine.get_per_tensor_param = perturbed_stream

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def set_sync_candidates(self, by_replica: dict, param_filter: Optional[ParamFilter] = None) -> None:
        """by_replica: {replica_rank: Candidate | Merged | None}; a missing replica gets the base. param_filter:
        the tensors the noise touches (None: every floating tensor)."""
        if any(c is not None for c in by_replica.values()):  # every rank refuses alike, before any sync starts
            self._require_fsdp2("perturb-at-sync")
        self._sync_candidate = by_replica.get(self.rollout.replica_rank)
        self._param_filter = param_filter or ParamFilter(None, None)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def es_update(self, seeds: list[int], z: list[float], alpha: float,
                  param_filter: Optional[ParamFilter] = None) -> dict:
        """θ ← θ + (α/N)·Σ z_n ε_n on this rank's shards (fp32 parameters required), where the shards live."""
        self._require_fsdp2("the ES update")
        threads = host_threads_per_rank()
        n = es_update_shards(self.actor.engine.module.named_parameters(), seeds, z, alpha,
                             param_filter or ParamFilter(None, None), threads)
        return {"updated_elements": n, "host_threads": threads}

    def _require_fsdp2(self, what: str) -> None:
        # FSDP1 exposes flat parameters (no HF names, no per-tensor shard offsets, tied weights not detectable)
        strategy = self.config.actor.strategy
        if strategy != "fsdp2":
            raise ValueError(
                f"{what} addresses weights by HF name and shard offset, which needs FSDP2; "
                f"actor_rollout_ref.actor.strategy is {strategy!r}: set actor_rollout_ref.actor.strategy=fsdp2"
            )

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def named_weights(self) -> dict[str, torch.Tensor]:
        """Full fp32 copies of the actor's parameters by HF name (rank 0 keeps them; tests compare against it)."""
        out = {}
        for name, param in self.actor.engine.module.named_parameters():
            full = param.full_tensor() if hasattr(param, "full_tensor") else param
            out[name] = full.detach().float().cpu().clone()
        return out


def use_search_worker(trainer) -> None:
    """After verl's `_init_resource_pool_mgr`: same roles and pools, SearchWorker as the actor worker class."""
    import ray
    from verl.trainer.ppo.utils import Role

    for role in (Role.ActorRollout, Role.ActorRolloutRef):
        if role in trainer.role_worker_mapping:
            trainer.role_worker_mapping[role] = ray.remote(SearchWorker)
