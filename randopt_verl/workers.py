"""`SearchWorker`: verl's ActorRolloutRefWorker with the two things RandOpt and ES need from the training side.

1. Perturb-at-sync (DESIGN decisions 2 and 3): `set_sync_candidates` gives every rank the candidate of the rollout
   replica it feeds; the FSDP per-tensor weight stream (`engine.get_per_tensor_param`) is wrapped so that the
   tensors leaving for that replica are base + σ·ε(seed, HF name), computed in fp32 and cast. verl's own
   `update_weights` (and so vLLM's weight loading) runs unchanged; the FSDP parameters are never modified.
2. The ES update (`es_update`): every rank adds (α/N)·Σ z_n ε_n to its own FSDP2 shard, with the slice of the
   canonical noise that the shard holds, in fp32. Then verl's normal weight sync carries the new weights.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.engine_workers import ActorRolloutRefWorker

from randopt_verl.core.population import Candidate, ParamFilter, perturb_named_tensors, tied_aliases

logger = logging.getLogger(__name__)


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
        self._sync_candidate: Optional[Candidate] = None
        self._param_filter = ParamFilter(None, None)
        if "actor" in self.role and "rollout" in self.role:
            engine = self.actor.engine
            self._aliases = tied_aliases(engine.module)
            base_stream = engine.get_per_tensor_param

            def perturbed_stream(*args, **kwargs):
                gen, peft = base_stream(*args, **kwargs)
                if self._sync_candidate is None:
                    return gen, peft
                if peft is not None:
                    raise ValueError("perturb-at-sync does not apply to LoRA adapters; merge them")
                return perturb_named_tensors(gen, self._sync_candidate, self._param_filter, self._aliases), peft

            # the narrowest hook: the stream update_weights reads from; update_weights itself is verl's own
            engine.get_per_tensor_param = perturbed_stream

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def set_sync_candidates(self, by_replica: dict, include=None, exclude=None) -> Optional[dict]:
        """by_replica: {replica_rank: {"index", "seed", "sigma"} | None}; a missing replica gets the base."""
        cand = by_replica.get(self.rollout.replica_rank)
        self._sync_candidate = None if cand is None else Candidate.from_dict(cand)
        self._param_filter = ParamFilter(include, exclude)
        return None if cand is None else dict(cand, replica=self.rollout.replica_rank)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def es_update(self, seeds: list[int], z: list[float], alpha: float, include=None, exclude=None) -> dict:
        """θ ← θ + (α/N)·Σ z_n ε_n on this rank's shards (fp32 parameters required)."""
        from randopt_verl.core.es_update import es_update_

        filt = ParamFilter(include, exclude)
        n_elems = 0
        with torch.no_grad():
            for name, param in self.actor.engine.module.named_parameters():  # tied weights appear once
                if not filt.selects(name, param):
                    continue
                local, offset = shard_offset(param)
                if local.dtype != torch.float32:
                    raise ValueError(
                        f"ES needs fp32 parameters to accumulate updates; {name} is {local.dtype}. "
                        "Set actor_rollout_ref.actor.fsdp_config.model_dtype=fp32"
                    )
                es_update_(local, name, seeds, z, alpha, offset=offset)
                n_elems += local.numel()
        return {"updated_elements": n_elems}

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
