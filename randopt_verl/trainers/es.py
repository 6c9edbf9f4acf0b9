"""`trainer=es`: the ES-at-scale baseline as a verl V1 trainer (registered as trainer.v1.trainer_mode=es).

Per iteration t: N candidates (seeds drawn from (es.seed, t), one sigma) are loaded R at a time into the rollout
replicas (the same perturbation path RandOpt uses), scored greedily on the same selection batch through verl's
reward loop; the z-scored mean rewards give theta <- theta + (alpha/N) sum z_n eps_n, applied by every FSDP rank to
its own shard (`SearchWorker.es_update`); verl's weight sync then carries the new weights to the replicas.
Checkpoints and resume are verl's own (`_save_checkpoint` / `_load_checkpoint`); metrics.jsonl in es.run_dir holds
one row per iteration with the cumulative cost, and is where a resumed run picks its cost counters back up.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm
from verl.trainer.ppo.v1.trainer_base import register_trainer

from randopt_verl.core.es_update import zscore
from randopt_verl.core.population import Candidate
from randopt_verl.trainers.harness import SearchTrainer, greedy, keep_until

logger = logging.getLogger(__name__)


def iteration_seeds(seed: int, iteration: int, n: int) -> list[int]:
    """Candidate seeds of one iteration: a pure function of (seed, iteration), so resume redraws the same."""
    rng = np.random.Generator(np.random.PCG64([int(seed), int(iteration)]))
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=n)]


@register_trainer("es")
class ESTrainer(SearchTrainer):
    def fit(self, agent_loop_manager=None):
        es = self.config.es
        response_length = int(self.config.actor_rollout_ref.rollout.response_length)
        param_filter = OmegaConf.to_container(es.param_filter, resolve=True) or {}
        how = self.perturb_at("auto")
        n, sigma, alpha = int(es.population_size), float(es.sigma), float(es.alpha)
        iterations = int(self.config.trainer.total_training_steps)
        selection = self.prompts(self.train_dataset, es.selection_size)
        test = self.prompts(self.val_dataset, es.test_size)
        # verl's _setup restored the actor from the latest checkpoint and set global_steps; restore the cost too
        self._restore_cost(Path(es.run_dir) / "metrics.jsonl")
        self.open_log(es.run_dir, "es")

        # the (possibly restored) base weights into every replica
        self.load_candidates({}, how="sync", param_filter=param_filter)
        if self.global_steps == 0 and self.config.trainer.get("val_before_train", True):
            self._log(self._validate_es(test, response_length))

        bar = tqdm(total=iterations, initial=self.global_steps, desc="es iterations")
        n_rep = len(self.replicas)
        while self.global_steps < iterations:
            it = self.global_steps + 1
            t0 = time.perf_counter()
            # 1. N members, scored R at a time on the same selection batch
            members = [Candidate(index=i, seed=s, sigma=sigma) for i, s in enumerate(iteration_seeds(es.seed, it, n))]
            rewards = np.zeros(n)
            for lo in range(0, n, n_rep):
                chunk = {rep.replica_rank: c for rep, c in zip(self.replicas, members[lo : lo + n_rep])}
                self.load_candidates(chunk, how=how, param_filter=param_filter)
                evs = self._score_chunk(chunk, selection, response_length)
                for r, c in chunk.items():
                    rewards[c.index] = evs[r]
            # 2. the update on the FSDP actor (each rank its shard), fp32; its inputs recorded first
            z = zscore(rewards)
            self._record(it, members, rewards, z)
            self.actor_rollout_wg.es_update([c.seed for c in members], [float(v) for v in z], alpha,
                                            param_filter.get("include"), param_filter.get("exclude"))
            self.global_steps = it
            # 3. verl's weight sync: the updated base into every replica
            self.load_candidates({}, how="sync", param_filter=param_filter)
            metrics = {"es/reward_mean": float(rewards.mean()), "es/reward_max": float(rewards.max()),
                       "es/reward_std": float(rewards.std()), "es/iteration_s": time.perf_counter() - t0}
            last = it == iterations
            freq = int(self.config.trainer.test_freq)
            if last or (freq > 0 and it % freq == 0):
                metrics.update(self._validate_es(test, response_length))
            save = int(self.config.trainer.save_freq)
            if save > 0 and (last or it % save == 0):
                self._save_checkpoint()
            self._log(metrics)
            bar.update(1)
        bar.close()

    def _score_chunk(self, chunk, selection, response_length) -> dict[int, float]:
        outs = self.generate({r: selection.ids for r in chunk}, greedy(response_length))
        means = {}
        for r, outputs in outs.items():
            responses = [o.token_ids for o in outputs]
            samples = self.score(selection.rows, responses)
            self.cost.add(len(responses), sum(len(x) for x in responses), 0.0)
            means[r] = float(np.mean([s["score"] for s in samples]))
        return means

    def _validate_es(self, test, response_length) -> dict[str, float]:
        """Greedy test accuracy of the current weights (replica 0 holds the base after a sync)."""
        rep = self.replicas[0].replica_rank
        outputs = self.generate({rep: test.ids}, greedy(response_length))[rep]
        responses = [o.token_ids for o in outputs]
        samples = self.score(test.rows, responses)  # evaluation: not added to the training cost
        return {"val/acc": float(np.mean([s["acc"] for s in samples])),
                "val/score": float(np.mean([s["score"] for s in samples]))}

    def _record(self, it: int, members, rewards, z) -> None:
        """es_iterations.jsonl: what each update was made of (seeds, rewards, z), enough to recompute it."""
        row = {"iteration": it, "seeds": [c.seed for c in members], "sigma": members[0].sigma,
               "alpha": float(self.config.es.alpha), "rewards": [float(r) for r in rewards],
               "z": [float(v) for v in z]}
        with open(Path(self.config.es.run_dir) / "es_iterations.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _log(self, metrics: dict) -> None:
        self.cost.wall_s = self._wall_base + (time.perf_counter() - self._t0)
        self.log(metrics)

    def _restore_cost(self, path: Path) -> None:
        """Counters and records as of the checkpoint verl restored: rows of later iterations (run after that
        checkpoint, before a crash) are dropped because those iterations run again."""
        self._t0 = time.perf_counter()
        self._wall_base = 0.0
        keep_until(Path(self.config.es.run_dir) / "es_iterations.jsonl", "iteration", self.global_steps)
        rows = keep_until(path, "step", self.global_steps)
        if rows:
            d = rows[-1]["data"]
            self.cost.rollouts, self.cost.tokens = int(d["cost/rollouts"]), int(d["cost/tokens"])
            self._wall_base = float(d["cost/wall_s"])

