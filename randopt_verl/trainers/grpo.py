"""`trainer=grpo`: verl's own synchronous GRPO trainer, plus the cost counters every method logs.

Nothing of GRPO is re-implemented: this is `PPOTrainerSync` with the shared worker class (`SearchWorker`, which
only adds methods) and hooks that count cost by the definition RandOpt and ES use (randopt_verl.trainers.harness):
`step` adds the step's rollouts (prompt x sample generated for training) and their generated tokens as soon as the
step has generated them; `_compute_metrics` adds the wall time of verl's "step" timer (generation, reward, log-probs,
update, and the weight sync into the replicas in `on_step_end`) less its "save_checkpoint" part; validation runs
outside that timer. Every logged row carries cumulative `cost/rollouts`, `cost/tokens` and `cost/wall_s`.

verl's "file" logger writes the run directory's metrics.jsonl (trainer.default_local_dir; name from
randopt_verl.core.rundir) whichever entry point started the run: `fit` points VERL_FILE_LOGGER_PATH there before verl
creates the logger, so `randopt-verl compare RUN_DIR` finds it.

Resume is verl's own checkpointing, with two additions so a resumed run's cost and history match an uninterrupted
one: the counters (through the step being checkpointed; verl saves mid-step, after the update, so that step's
weight sync is not in them) are saved as `cost.json` in each `global_step_N` folder (`RunDir.checkpoint_cost_path`) before verl writes its
latest-checkpoint tracker, so a checkpoint verl can see always has them; and the rows of verl's "file" logger up to
the restored step are written back after verl reopens that file with "wb" (which would erase them).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import transfer_queue as tq
from omegaconf import OmegaConf
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from randopt_verl import preflight
from randopt_verl.core.cost import Cost
from randopt_verl.core.jsonio import atomic_write_json, keep_until, read_json, write_jsonl
from randopt_verl.core.rundir import RunDir
from randopt_verl.workers import use_search_worker

log = logging.getLogger(__name__)
_FILE_LOGGER_ENV = "VERL_FILE_LOGGER_PATH"  # read by verl.utils.tracking.FileLogger


@register_trainer("grpo")
class GRPOTrainer(PPOTrainerSync):
    def __init__(self, config):
        preflight.trainer_init(config)  # checks and runtime defaults, whatever entry point composed the config
        super().__init__(config)

    def _init_resource_pool_mgr(self):
        # SearchWorker adds methods only (named_weights for tests, an inactive stream wrapper): GRPO is unchanged,
        # and the same worker class serves all three methods
        super()._init_resource_pool_mgr()
        use_search_worker(self)

    @property
    def run(self) -> RunDir:
        return RunDir(self.config.trainer.default_local_dir)

    def fit(self, agent_loop_manager):
        # verl's FileLogger reads VERL_FILE_LOGGER_PATH when fit creates it: the run directory's metrics.jsonl, also
        # under verl's own entry point (which does not run randopt_verl.main)
        path = str(self.run.metrics_path)
        before = os.environ.get(_FILE_LOGGER_ENV)
        if before not in (None, path):
            log.warning("%s=%s is replaced by %s (the run directory, where randopt-verl compare reads it)",
                        _FILE_LOGGER_ENV, before, path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # the resolved config beside the metrics: `randopt-verl compare` groups runs that differ only in their seeds
        self.run.write_config(OmegaConf.to_container(self.config, resolve=True))
        os.environ[_FILE_LOGGER_ENV] = path
        try:
            return super().fit(agent_loop_manager)
        finally:
            if before is None:
                os.environ.pop(_FILE_LOGGER_ENV, None)
            else:
                os.environ[_FILE_LOGGER_ENV] = before

    # -- cost -------------------------------------------------------------------------------------------------
    def on_step_begin(self):
        super().on_step_begin()
        self._step_t0 = time.perf_counter()

    def step(self, metrics, timing_raw):
        batch = super().step(metrics, timing_raw)
        # counted here, not at logging: verl saves this step's checkpoint before it logs the step
        real = [not tag.get("is_padding", False) for tag in batch.tags]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["responses"])
        lengths = data["responses"].offsets().diff().tolist()
        self.cost.add(sum(real), sum(n for n, r in zip(lengths, real) if r), 0.0)
        return batch

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        out = super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        # the cost definition's wall time: the step's work, weights-in included, checkpoint I/O excluded
        self.cost.add(0, 0, float(timing_raw.get("step", 0.0)) - float(timing_raw.get("save_checkpoint", 0.0)))
        metrics.update(self.cost.metrics())
        metrics["meta/method"] = "grpo"
        return out

    # -- resume: cost counters and the file logger's rows ---------------------------------------------------
    def _save_checkpoint(self):
        path = self.run.checkpoint_cost_path(self.global_steps)
        path.parent.mkdir(parents=True, exist_ok=True)
        # this step's wall time so far (the rest of the step, after the save, is not in the checkpoint)
        atomic_write_json(path, vars(Cost(self.cost.rollouts, self.cost.tokens,
                                          self.cost.wall_s + time.perf_counter() - self._step_t0)))
        super()._save_checkpoint()  # writes verl's latest-checkpoint tracker last

    def _load_checkpoint(self):
        super()._load_checkpoint()  # sets global_steps (0: training from scratch)
        self.cost = Cost()
        self._kept_rows = []
        if self.global_steps == 0:
            return
        cost_file = self.run.checkpoint_cost_path(self.global_steps)
        if self.config.trainer.resume_mode == "resume_path":
            cost_file = Path(self.config.trainer.resume_from_path) / cost_file.name
        if cost_file.exists():
            self.cost = Cost(**read_json(cost_file))
        else:
            log.warning("%s does not exist (saved without randopt_verl?): cost counters restart from 0", cost_file)
        if "file" in list(self.config.trainer.logger):
            # rows logged after this checkpoint (before a crash) are dropped: those steps run again
            self._kept_rows = keep_until(self.run.metrics_path, "step", self.global_steps)

    # verl's fit() creates its Tracking as `self.logger = Tracking(...)`; its "file" backend has just truncated
    # the metrics file, so write the kept rows back and continue appending
    @property
    def logger(self):
        return self._tracking

    @logger.setter
    def logger(self, tracking):
        self._tracking = tracking
        file_logger = tracking.logger.get("file")  # Tracking's backends by name
        if file_logger is None or not self._kept_rows:  # _kept_rows: set by _load_checkpoint in verl's _setup
            return
        file_logger.fp.close()
        write_jsonl(file_logger.filepath, self._kept_rows)
        file_logger.fp = open(file_logger.filepath, "ab", buffering=0)
