"""The verl glue RandOpt and ES share: one place that talks to verl's replicas, weight sync and reward loop.

`SearchTrainer` is a verl V1 `PPOTrainer` whose `_setup` is verl's own (tokenizer, datasets, worker groups,
rollout replicas, checkpoint engine, reward loop); it changes one thing there, the actor worker class
(`SearchWorker`, for perturb-at-sync and the ES update), and replaces `fit` in the subclasses. Its helpers:
- `prompts(dataset, n)`: chat-templated prompt ids of the first n rows, as verl's agent loop would build them;
- `load_candidates({replica: candidate})`: each replica holds its own candidate (None = base);
- `generate(prompts by replica, sampling)`: token-in/token-out on each replica's server, all replicas at once;
- `score(rows, responses)`: verl's reward loop workers (the configured reward function, unchanged), with a
  failing sample recorded as an error instead of failing the batch;
- `cost`: rollouts, generated tokens and wall time, counted the same way for every method.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import ray
import torch
from omegaconf import DictConfig, OmegaConf
from verl import DataProto
from verl.trainer.ppo.v1.trainer_base import PPOTrainer

from randopt_verl import preflight
from randopt_verl.core.population import Candidate
from randopt_verl.core.rundir import normalise_reward
from randopt_verl.workers import use_search_worker

logger = logging.getLogger(__name__)


@dataclass
class Cost:
    """Cumulative cost on one axis for every method: rollouts (prompt x sample), generated tokens, wall time."""

    rollouts: int = 0
    tokens: int = 0
    wall_s: float = 0.0

    def add(self, rollouts: int, tokens: int, wall_s: float) -> None:
        self.rollouts += int(rollouts)
        self.tokens += int(tokens)
        self.wall_s += float(wall_s)

    def metrics(self) -> dict[str, float]:
        return {"cost/rollouts": self.rollouts, "cost/tokens": self.tokens, "cost/wall_s": round(self.wall_s, 3)}


@dataclass
class PromptSet:
    """The first rows of a verl dataset: prompt ids plus what the reward function needs."""

    ids: list[list[int]]
    rows: list[dict[str, Any]] = field(repr=False)

    def identity(self) -> list:
        # what makes two selection sets the same set: tokens in and the answers they are scored against
        return [[ids, r["data_source"], r["reward_model"].get("ground_truth")] for ids, r in zip(self.ids, self.rows)]


def greedy(response_length: int) -> dict[str, Any]:
    return {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": False,
            "max_tokens": int(response_length)}


def sampled(response_length: int, temperature: float, seed: int) -> dict[str, Any]:
    """Sampling with a per-request seed, so samples do not depend on replica count, order or restarts."""
    return {"temperature": float(temperature), "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0,
            "logprobs": False, "max_tokens": int(response_length), "seed": int(seed)}


class SearchTrainer(PPOTrainer):
    """Base of the randopt and es trainers (registered by their modules)."""

    def __init__(self, config: DictConfig):
        # checks and runtime defaults before any model loads (verl's entry point skips randopt_verl.main)
        preflight.trainer_init(config)
        super().__init__(config)
        self.cost = Cost()

    # -- verl hooks -----------------------------------------------------------------------------------------
    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        # Same roles and pools as verl's; only the actor worker class changes (perturb-at-sync, ES update).
        use_search_worker(self)

    def on_step_end(self):  # abstract in verl; these trainers run their own loop
        return None

    def on_sample_end(self):
        return None

    # -- prompts --------------------------------------------------------------------------------------------
    def prompts(self, dataset, n: Optional[int]) -> PromptSet:
        n = len(dataset) if n is None else min(int(n), len(dataset))
        kwargs = dict(self.config.data.get("apply_chat_template_kwargs", None) or {})
        ids, rows = [], []
        for i in range(n):
            row = dataset[i]
            ids.append(list(self.tokenizer.apply_chat_template(
                row["raw_prompt"], add_generation_prompt=True, tokenize=True, return_dict=False, **kwargs)))
            rows.append({
                "data_source": row["data_source"],
                "reward_model": dict(row["reward_model"]),
                "extra_info": dict(row.get("extra_info") or {}),
            })
        return PromptSet(ids=ids, rows=rows)

    # -- replicas -------------------------------------------------------------------------------------------
    @property
    def replicas(self) -> list:
        return self.llm_server_manager.get_replicas()

    @property
    def rollout_name(self) -> str:
        return str(self.config.actor_rollout_ref.rollout.name)

    def perturb_at(self, setting: str) -> str:
        if setting == "auto":
            return "server" if self.rollout_name == "hf" else "sync"
        return setting

    def load_candidates(self, by_replica: dict[int, Optional[Candidate]], *, how: str, param_filter: dict) -> None:
        """Make replica r hold by_replica.get(r) (None or missing: the base weights)."""
        include, exclude = param_filter.get("include"), param_filter.get("exclude")
        if how == "server":
            # hf servers perturb in place from their pristine copy: no weight transfer
            refs = []
            for rep in self.replicas:
                cand = by_replica.get(rep.replica_rank)
                for server in rep.servers:
                    refs.append(server.set_candidate.remote(
                        None if cand is None else cand.seed, 0.0 if cand is None else cand.sigma, include, exclude))
            ray.get(refs)
            return
        # perturb-at-sync: each rank perturbs the FSDP stream for its own replica; verl's sync does the rest
        plain = {r: (None if c is None else c.to_dict()) for r, c in by_replica.items()}
        self.actor_rollout_wg.set_sync_candidates(plain, include, exclude)
        self.sync_weights()

    def sync_weights(self) -> None:
        """verl's weight sync from the FSDP actor into every replica, then a cache reset (weights changed)."""
        self.checkpoint_manager.sleep_replicas()
        self.checkpoint_manager.update_weights(self.global_steps)
        ray.get([s.clear_kv_cache.remote() for rep in self.replicas for s in rep.servers])

    def generate(self, prompts_by_replica: dict[int, list[list[int]]], sampling: dict[str, Any]) -> dict[int, list]:
        """All replicas generate at once; returns {replica: [TokenOutput in prompt order]}."""
        pending = {}
        for rep in self.replicas:
            prompts = prompts_by_replica.get(rep.replica_rank)
            if not prompts:
                continue
            server = rep.server_handle
            if self.rollout_name == "hf":
                # one call, fixed ordered batches: results independent of request timing and replica count
                pending[rep.replica_rank] = server.generate_many.remote(prompts, dict(sampling))
            else:
                pending[rep.replica_rank] = [
                    server.generate.remote(prompt_ids=p, sampling_params=dict(sampling), request_id=uuid.uuid4().hex)
                    for p in prompts
                ]
        out = {}
        for r, ref in pending.items():
            out[r] = ray.get(ref) if isinstance(ref, list) else ray.get(ref)
        return out

    # -- rewards --------------------------------------------------------------------------------------------
    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _dataproto(self, rows: Sequence[dict], responses: Sequence[list[int]]) -> DataProto:
        pad = self.tokenizer.pad_token_id or 0
        width = max(1, max(len(r) for r in responses))
        resp = torch.full((len(responses), width), pad, dtype=torch.long)
        # verl's naive reward manager reads the last `width` columns of attention_mask as the response mask
        mask = torch.zeros((len(responses), 1 + width), dtype=torch.long)
        mask[:, 0] = 1
        for i, r in enumerate(responses):
            if r:
                resp[i, : len(r)] = torch.tensor(r, dtype=torch.long)
                mask[i, 1 : 1 + len(r)] = 1
        non_tensor = {
            "data_source": np.array([r["data_source"] for r in rows], dtype=object),
            "reward_model": np.array([dict(r["reward_model"]) for r in rows], dtype=object),
            "extra_info": np.array([dict(r["extra_info"]) for r in rows], dtype=object),
        }
        return DataProto.from_dict(tensors={"responses": resp, "attention_mask": mask}, non_tensors=non_tensor)

    def score(self, rows: Sequence[dict], responses: Sequence[list[int]]) -> list[dict]:
        """Per-sample {"score", "acc", "pred", "error"} through verl's reward loop workers."""
        workers = self.reward_loop_manager.reward_loop_workers
        data = self._dataproto(rows, responses)
        bounds = np.linspace(0, len(rows), len(workers) + 1).astype(int)
        chunks = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
        refs = [w.compute_score_batch.remote(data[lo:hi]) for w, (lo, hi) in zip(workers, chunks)]
        results: list[Any] = []
        for (lo, hi), ref, worker in zip(chunks, refs, workers):
            try:
                results.extend(ray.get(ref))
            except Exception:
                # one sample raised: score the chunk one by one so only that sample carries the error
                for i in range(lo, hi):
                    try:
                        results.append(ray.get(worker.compute_score.remote(data[i : i + 1])))
                    except Exception as exc:  # recorded in the ledger row, the run goes on
                        results.append(exc)
        out = []
        for res, resp in zip(results, responses):
            if isinstance(res, BaseException):
                out.append(normalise_reward(getattr(res, "cause", None) or res, self.decode(resp)))
                continue
            extra = dict(res.get("reward_extra_info") or {})
            extra["score"] = res["reward_score"]
            out.append(normalise_reward(extra, self.decode(resp)))
        return out

    # -- logging --------------------------------------------------------------------------------------------
    def open_log(self, run_dir, method: str) -> None:
        """verl's Tracking (console, wandb, ...) plus run_dir/metrics.jsonl, which this trainer appends and
        fsyncs itself: verl's "file" backend reopens its file with "wb" and would erase a resumed run's rows."""
        from verl.utils.tracking import Tracking

        self.method = method
        self.metrics_path = Path(run_dir) / "metrics.jsonl"
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        backends = [b for b in list(self.config.trainer.logger) if b != "file"]
        self.logger = Tracking(
            project_name=self.config.trainer.project_name,
            experiment_name=self.config.trainer.experiment_name,
            default_backend=backends,
            config=OmegaConf.to_container(self.config, resolve=True),
        )

    def log(self, metrics: dict[str, Any]) -> None:
        metrics = {**metrics, **self.cost.metrics(), "meta/method": self.method}
        self.logger.log(data=metrics, step=self.global_steps)
        with open(self.metrics_path, "a") as f:  # on disk before the next step starts
            f.write(json.dumps({"step": self.global_steps, "data": metrics}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def keep_until(path: Path, key: str, last: int) -> list[dict]:
    """Rewrite a JSONL file keeping rows with row[key] <= last (and dropping a torn final line)."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row[key] <= last:
            kept.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
