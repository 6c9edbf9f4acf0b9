"""`trainer=grpo`: verl's own synchronous GRPO trainer, plus the cost counters every method logs.

Nothing of GRPO is re-implemented: this is `PPOTrainerSync` with the shared worker class (`SearchWorker`, which
only adds methods) and one hook, `_compute_metrics`, extended to add
cumulative `cost/rollouts` (prompt x sample generated for training), `cost/tokens` (their generated tokens) and
`cost/wall_s` (training step time) to each logged row, the same axis RandOpt and ES use. Validation generations
are evaluation, not training cost, for all three methods.
"""

from __future__ import annotations

from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from randopt_verl.trainers.harness import Cost
from randopt_verl.workers import use_search_worker


@register_trainer("grpo")
class GRPOTrainer(PPOTrainerSync):
    def _init_resource_pool_mgr(self):
        # SearchWorker adds methods only (named_weights for tests, an inactive stream wrapper): GRPO is unchanged,
        # and the same worker class serves all three methods
        super()._init_resource_pool_mgr()
        use_search_worker(self)

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        out = super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        if not hasattr(self, "cost"):
            self.cost = Cost()
        rollouts = int(self.config.data.train_batch_size) * int(self.config.actor_rollout_ref.rollout.n)
        tokens = float(metrics.get("response_length/mean", 0.0)) * rollouts
        self.cost.add(rollouts, round(tokens), float(timing_raw.get("step", 0.0)))
        metrics.update(self.cost.metrics())
        metrics["meta/method"] = "grpo"
        return out
