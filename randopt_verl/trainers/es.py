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

import logging

import numpy as np
from omegaconf import OmegaConf
from verl.trainer.ppo.v1.trainer_base import register_trainer

from randopt_verl.console import phase_bar
from randopt_verl.core import noise
from randopt_verl.core.es_update import zscore
from randopt_verl.core.population import Candidate, ParamFilter
from randopt_verl.core.fingerprint import fingerprint_files, hash_rows, model_files
from randopt_verl.core.jsonio import append_jsonl, keep_until
from randopt_verl.core.rundir import RunDir
from randopt_verl.trainers.harness import Cost, PromptSet, SearchTrainer, greedy

logger = logging.getLogger(__name__)


def iteration_seeds(seed: int, iteration: int, n: int) -> list[int]:
    """Candidate seeds of one iteration: a pure function of (seed, iteration), so resume redraws the same."""
    rng = np.random.Generator(np.random.PCG64([int(seed), int(iteration)]))
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=n)]


@register_trainer("es")
class ESTrainer(SearchTrainer):
    def fit(self, agent_loop_manager=None):
        es = self.config.es
        n, sigma, alpha = int(es.population_size), float(es.sigma), float(es.alpha)
        iterations = int(self.config.trainer.total_training_steps)
        param_filter = ParamFilter.from_config(OmegaConf.to_container(es.param_filter, resolve=True))
        selection = self.prompts(self.train_dataset, es.selection_size)
        test = self.prompts(self.val_dataset, es.test_size)

        # the run directory; verl's _setup restored the actor from the latest checkpoint and set global_steps:
        # records and cost as of that checkpoint
        run = self._open_run(selection, test, param_filter)
        self._restore(run)
        self.open_log(run, "es")
        self.use(param_filter, "auto")  # the (possibly restored) weights into every replica
        if self.global_steps == 0 and self.config.trainer.get("val_before_train", True):
            self.log(self._validate(test))

        bar = phase_bar(total=iterations, initial=self.global_steps, desc="es iterations")
        while self.global_steps < iterations:
            it = self.global_steps + 1
            wall_before = self.cost.wall_s
            # 1. N members, R at a time (one per replica), scored on the same selection batch
            members = [Candidate(index=i, seed=s, sigma=sigma) for i, s in enumerate(iteration_seeds(es.seed, it, n))]
            rewards = np.zeros(n)
            for chunk in self.replica_chunks(members):
                for r, ev in self.evaluate(chunk, selection, greedy(self.response_length), self.cost).items():
                    rewards[chunk[r].index] = float(np.mean([s["score"] for s in ev.samples]))
            # 2. the update on the FSDP actor (each rank its shard), fp32, its inputs recorded first; then verl's
            #    weight sync of the new weights into every replica (weights-in: training cost)
            z = zscore(rewards)
            append_jsonl(run.es_iterations_path, {
                "iteration": it, "seeds": [c.seed for c in members], "sigma": sigma, "alpha": alpha,
                "rewards": [float(r) for r in rewards], "z": [float(v) for v in z]})
            with self.cost.timed():
                self.actor_rollout_wg.es_update([c.seed for c in members], [float(v) for v in z], alpha, param_filter)
                self.load_base()
            self.global_steps = it
            metrics = {"es/reward_mean": float(rewards.mean()), "es/reward_max": float(rewards.max()),
                       "es/reward_std": float(rewards.std()), "es/iteration_s": self.cost.wall_s - wall_before}
            # 3. validation and checkpoint (neither is training cost)
            last, freq, save = it == iterations, int(self.config.trainer.test_freq), int(self.config.trainer.save_freq)
            if last or (freq > 0 and it % freq == 0):
                metrics.update(self._validate(test))
            if save > 0 and (last or it % save == 0):
                self._save_checkpoint()
            self.log(metrics)
            bar.update(1)
        bar.close()
        run.close()

    def _open_run(self, selection: PromptSet, test: PromptSet, param_filter: ParamFilter) -> RunDir:
        """What defines the trajectory: model, noise, data, ES settings, reward and rollout. The test set is part of
        it too: a validation curve measured on two test sets is not one curve."""
        es = self.config.es
        identity = {
            "method": "es",
            "model_fingerprint": fingerprint_files(model_files(self.config.actor_rollout_ref.model.path)),
            "noise_spec_version": noise.NOISE_SPEC,
            "selection_set_hash": hash_rows(selection.identity()),
            "test_set_hash": hash_rows(test.identity()),
            "search": {"seed": int(es.seed), "population_size": int(es.population_size), "sigma": float(es.sigma),
                       "alpha": float(es.alpha), "param_filter": param_filter.to_dict(),
                       "generation": greedy(self.response_length).identity(),
                       "reward": OmegaConf.to_container(self.config.reward.custom_reward_function, resolve=True)},
            "rollout": self.rollout_identity(),
        }
        return RunDir.open(es.run_dir, identity=identity, config=OmegaConf.to_container(self.config, resolve=True))

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
