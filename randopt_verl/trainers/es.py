"""`trainer=es`: the ES-at-scale baseline as a verl V1 trainer (registered as trainer.v1.trainer_mode=es).

Per iteration t: N candidates (seeds drawn from (es.seed, t), one sigma) go through `evaluate` R at a time (the same
perturbation path RandOpt uses), scored greedily on the same selection batch through verl's reward loop; the
z-scored mean rewards give theta <- theta + (alpha/N) sum z_n eps_n, applied by every FSDP rank to its own shard
(`SearchWorker.es_update`); verl's weight sync then carries the new weights to the replicas. Validation spreads the
test prompts over every replica.
Checkpoints and resume are verl's own (`_save_checkpoint` / `_load_checkpoint`). The run directory (es.run_dir;
files named in randopt_verl.core.rundir) holds the manifest (a resume with other ES, model, data or rollout settings
is refused), es_iterations.jsonl (what each update was made of) and metrics.jsonl (one row per iteration with the
cumulative cost, which is where a resumed run picks its cost counters back up).
"""

from __future__ import annotations

import numpy as np
from verl.trainer.ppo.v1.trainer_base import register_trainer

from randopt_verl.config import schema  # a module import (see trainers/harness.py)
from randopt_verl.console import phase_bar
from randopt_verl.core.cost import Cost
from randopt_verl.core.es_update import iteration_seeds, zscore
from randopt_verl.core.fingerprint import hash_rows
from randopt_verl.core.jsonio import append_jsonl, keep_until
from randopt_verl.core.population import Candidate
from randopt_verl.core.rundir import RunDir
from randopt_verl.trainers.harness import PromptSet, SearchTrainer, greedy


@register_trainer("es")
class ESTrainer(SearchTrainer):
    """ES at scale: each iteration's N scored perturbations move theta by their z-scored sum (module docstring)."""

    node = "es"
    settings: schema.ESConfig

    def search(self) -> None:
        es = self.settings
        iterations = self.config.trainer.total_training_steps
        selection, test = self.selection_and_test()

        # the run directory; verl's _setup restored the actor from the latest checkpoint and set global_steps:
        # records and cost as of that checkpoint
        run = self._open_run(selection, test)
        self._restore(run)
        self.use("auto")  # the (possibly restored) weights into every replica
        if self.global_steps == 0 and self.config.trainer.get("val_before_train", True):
            self.log(self._validate(test))

        bar = phase_bar(total=iterations, initial=self.global_steps, desc="es iterations")
        while self.global_steps < iterations:
            it = self.global_steps + 1
            wall_before = self.cost.wall_s
            # 1. N members, R at a time (one per replica), scored on the same selection batch
            members = [Candidate(index=i, seed=s, sigma=es.sigma)
                       for i, s in enumerate(iteration_seeds(es.seed, it, es.population_size))]
            rewards = np.zeros(es.population_size)
            for chunk in self.replica_chunks(members):
                for r, ev in self.evaluate(chunk, selection, greedy(self.response_length), self.cost).items():
                    rewards[chunk[r].index] = float(np.mean([s["score"] for s in ev.samples]))
            # 2. the update on the FSDP actor (each rank its shard), fp32, its inputs recorded first; then verl's
            #    weight sync of the new weights into every replica (weights-in: training cost)
            z = zscore(rewards)
            append_jsonl(run.es_iterations_path, {
                "iteration": it, "seeds": [c.seed for c in members], "sigma": es.sigma, "alpha": es.alpha,
                "rewards": [float(r) for r in rewards], "z": [float(v) for v in z]})
            with self.cost.timed():
                self.actor_rollout_wg.es_update([c.seed for c in members], [float(v) for v in z], es.alpha,
                                                self.param_filter)
                self.load_base()
            self.global_steps = it
            metrics = {"es/reward_mean": float(rewards.mean()), "es/reward_max": float(rewards.max()),
                       "es/reward_std": float(rewards.std()), "es/iteration_s": self.cost.wall_s - wall_before}
            # 3. validation and checkpoint (neither is training cost)
            last, freq, save = it == iterations, self.config.trainer.test_freq, self.config.trainer.save_freq
            if last or (freq > 0 and it % freq == 0):
                metrics.update(self._validate(test))
            if save > 0 and (last or it % save == 0):
                self._save_checkpoint()
            self.log(metrics)
            bar.update(1)
        bar.close()
        run.close()

    def _open_run(self, selection: PromptSet, test: PromptSet) -> RunDir:
        """What defines the trajectory: model, noise, data, ES settings, reward and rollout (`SearchTrainer.open_run`
        records those all methods share), and the test set too: a validation curve measured on two test sets is not
        one curve."""
        es = self.settings
        return self.open_run(selection, {"seed": es.seed, "population_size": es.population_size, "sigma": es.sigma,
                                         "alpha": es.alpha},
                             identity={"method": "es", "test_set_hash": hash_rows(test.identity())})

    def _validate(self, test: PromptSet) -> dict[str, float]:
        """Greedy test accuracy of the current weights (every replica holds them after a sync), the test prompts
        spread over the replicas; evaluation, so not added to the training cost."""
        ev = self.evaluate_spread(None, test, greedy(self.response_length))
        return {"val/acc": float(np.mean([s["acc"] for s in ev.samples])),
                "val/score": float(np.mean([s["score"] for s in ev.samples])),
                "val/n": len(ev.samples)}  # the prompts behind the accuracy: `compare` gives it an interval

    def _restore(self, run: RunDir) -> None:
        """Records and cost counters as of the checkpoint verl restored: rows of later iterations (run after that
        checkpoint, before a crash) are dropped because those iterations run again."""
        keep_until(run.es_iterations_path, "iteration", self.global_steps)
        rows = keep_until(run.metrics_path, "step", self.global_steps)
        self.cost = Cost.from_metrics(rows[-1]["data"]) if rows else Cost()
