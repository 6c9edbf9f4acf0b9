"""The `hf` rollout backend for verl: a Ray actor serving HFEngine, its RolloutReplica, and the worker-side adapter.

It mirrors the surface verl calls on vLLM's server (`generate`, `sleep`, `wake_up`, `clear_kv_cache`, ... as used by
LLMServerClient, RolloutReplica and CheckpointEngineManager in verl 0.9.1), so verl's agent loop, reward loop and
weight sync run unchanged on top of it. Two additions serve RandOpt and ES:
- `generate_many(prompts, sampling_params)`: a whole prompt list in fixed, ordered batches, so a candidate's
  scores do not depend on request arrival timing (and so not on the number of replicas);
- `hold(candidate, param_filter)`: a search `Candidate`'s pristine + σ·ε (or a
  consolidated model's Σ coeff·ε) in place (docs/ARCHITECTURE.md, decisions 2 and 3), equal to what perturb-at-sync
  would send, rounded once to the server's dtype (tests/trainers/test_randopt.py and
  tests/cpu/test_hf_bf16_replicas.py check both paths give the same weights).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from randopt_verl.cpu.hf_engine import Batcher, HFEngine, HFOptions, Sampling, resolve_dtype

logger = logging.getLogger(__name__)


def server_name(replica_rank: int) -> str:
    return f"randopt_verl_hf_server_{replica_rank}"


class HFServer:
    """Token-in/token-out server for one rollout replica."""

    def __init__(self, config, model_config, replica_rank: int, n_replicas: int = 1):
        from verl.utils.config import omega_conf_to_dataclass

        from randopt_verl.cpu.platform import rollout_threads

        self.config = omega_conf_to_dataclass(config)
        self.replica_rank = replica_rank
        opts = HFOptions.of(self.config)
        # "auto": bf16 where the CPU has bf16 matrix instructions, else fp32 (candidates are formed in fp32 either way)
        dtype = resolve_dtype(self.config.dtype)
        threads = opts.threads or rollout_threads(max(1, (os.cpu_count() or 1) // max(1, n_replicas)))
        path = getattr(model_config, "local_path", None) or model_config["path"]
        self.engine = HFEngine(
            path,
            dtype=dtype,
            max_response_length=self.config.response_length,
            max_batch_size=opts.max_batch_size,
            threads=threads,
            seed=replica_rank + self.config.seed,  # as vLLM's server seed
            share_prefix=opts.share_prefix,
            min_shared_prefix=opts.min_shared_prefix,
        )
        logger.info("hf rollout replica %d: %s, %d threads, shared prefix %s", replica_rank, self.engine.dtype,
                    int(threads), "on" if self.engine.share_prefix else "off")
        self.batcher = Batcher(self.engine, window_s=opts.batch_window_s)
        self.global_steps: Optional[int] = None

    def _token_output(self, gen) -> TokenOutput:
        return TokenOutput(
            token_ids=gen.token_ids,
            log_probs=gen.log_probs,
            stop_reason="completed",
            num_preempted=0,
            extra_fields={"global_steps": self.global_steps},
        )

    async def generate(self, prompt_ids, sampling_params: dict[str, Any], request_id: str = None, **kwargs):
        if kwargs.get("image_data") or kwargs.get("video_data") or kwargs.get("audio_data"):
            raise ValueError("the hf rollout backend serves text-only models; use rollout.name=vllm for multimodal")
        gen = await self.batcher.submit(list(prompt_ids), dict(sampling_params))
        return self._token_output(gen)

    async def generate_many(self, prompts: list[list[int]], sampling_params: dict[str, Any]) -> list[TokenOutput]:
        import asyncio

        sampling = Sampling.from_params(sampling_params)
        max_tokens = sampling_params.get("max_tokens") or self.engine.max_response_length
        gens = await asyncio.to_thread(self.engine.generate_batch, prompts, sampling, [int(max_tokens)] * len(prompts))
        return [self._token_output(g) for g in gens]

    # -- weights ---------------------------------------------------------------------------------------------
    async def update_weights(self, named_tensors: list[tuple[str, torch.Tensor]], global_steps: Optional[int] = None):
        n = self.engine.load_weights(named_tensors)
        if global_steps is not None:
            self.global_steps = global_steps
        return n

    async def hold(self, candidate, param_filter=None):
        """Hold a `Candidate` or `Merged` (None: the pristine weights) under a `ParamFilter` (None: every floating
        tensor), in place."""
        self.engine.hold(candidate, param_filter)
        return self.engine.candidate

    async def get_weights(self) -> dict[str, torch.Tensor]:
        return self.engine.named_weights()

    async def stats(self) -> dict[str, Any]:
        return {"batches": self.batcher.batches, "requests": self.batcher.requests, "dtype": str(self.engine.dtype),
                **{f"prefix_{k}": v for k, v in self.engine.prefix_stats.items()}}

    async def set_global_steps(self, global_steps: int):
        self.global_steps = global_steps

    # -- control plane: the host has no device memory to free; the only cache kept across calls (the shared
    # prompt prefix) is dropped by the engine itself whenever the weights change -----------------------------
    async def sleep(self):
        return None

    async def wake_up(self, *args, **kwargs):
        return None

    async def clear_kv_cache(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def wait_for_requests_to_drain(self):
        return None

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False):
        return {"aborted_count": 0, "request_ids": []}

    async def abort_request(self, request_id: str, reset_prefix_cache: bool = True):
        return {"aborted": False}

    async def resume_generation(self):
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None


class HFReplica(RolloutReplica):
    """One `hf` server per replica (a replica is one worker rank: tensor parallelism does not apply)."""

    async def init_hybrid(self, worker_group):
        # the replicas share the host's cores: remember how many there are to size each server's torch threads
        self.n_replicas = max(1, worker_group.world_size // self.world_size)
        await super().init_hybrid(worker_group)

    async def launch_servers(self):
        if self.world_size != 1:
            raise ValueError(
                "the hf rollout backend runs one process per replica: set "
                "actor_rollout_ref.rollout.tensor_model_parallel_size=1 (and data/pipeline parallel sizes 1)"
            )
        n_replicas = getattr(self, "n_replicas", 1)
        name = server_name(self.replica_rank)
        server = (
            ray.remote(HFServer)
            .options(name=name, num_cpus=0, max_concurrency=self.max_concurrency)
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank,
                    n_replicas=n_replicas)
        )
        await server.set_global_steps.remote(0)  # returns once the model is loaded
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"ray://{name}"

    def rollout_worker_use_gpu(self) -> bool:
        return False


class HFServerAdapter(BaseRollout):
    """Worker-side half: receives verl's weight stream and forwards it to this replica's server."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1, **kwargs):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", 0))
        ws = (self.config.tensor_model_parallel_size * self.config.data_parallel_size
              * self.config.pipeline_model_parallel_size)
        self.replica_rank = rank // ws if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % ws
        self.is_leader_rank = self.rollout_rank == 0
        self.sleep_level = 2  # read by ActorRolloutRefWorker.update_weights (LoRA path)

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights, wire_format: str = "named_tensors", **kwargs):
        if wire_format != "named_tensors":
            raise ValueError(f"hf rollout: wire format {wire_format!r} is not supported (only named_tensors)")
        if kwargs.get("peft_config") is not None:
            raise ValueError("hf rollout: LoRA adapters are not supported; set actor_rollout_ref.model.lora.merge=True")
        named = []
        for name, tensor in weights:  # every rank drains the stream: FSDP all-gathers inside it
            if self.is_leader_rank:
                tensor = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
                named.append((name, tensor.detach().to("cpu", copy=True)))
        if self.is_leader_rank:
            server = ray.get_actor(server_name(self.replica_rank))
            await server.update_weights.remote(named, global_steps=kwargs.get("global_steps"))
