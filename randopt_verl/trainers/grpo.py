"""`trainer=grpo`: verl's own synchronous GRPO trainer, plus the cost counters every method logs.

Nothing of GRPO is re-implemented: this is `PPOTrainerSync` with the shared worker class (`SearchWorker`, which
only adds methods) and hooks that count cost on the axis RandOpt and ES use: `step` adds the step's rollouts
(prompt x sample generated for training) and their generated tokens as soon as the step has generated them,
`on_step_begin` / `_compute_metrics` add the step's wall time, and every logged row carries cumulative
`cost/rollouts`, `cost/tokens` and `cost/wall_s`. Validation generations are evaluation, not training cost, for all
three methods.

Resume is verl's own checkpointing, with two additions so a resumed run's cost and history match an uninterrupted
one: the counters (through the step being checkpointed; verl saves mid-step, after the update) are saved as
`cost.json` in each `global_step_N` folder before verl writes its latest-checkpoint tracker, so a checkpoint verl can
see always has them; and the rows of verl's "file" logger up to the restored step are written back after verl
reopens that file with "wb" (which would erase them).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import transfer_queue as tq
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from randopt_verl import preflight
from randopt_verl.trainers.harness import Cost, keep_until
from randopt_verl.workers import use_search_worker

log = logging.getLogger(__name__)
COST_FILE = "cost.json"


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
        self.cost.add(0, 0, float(timing_raw.get("step", 0.0)))
        metrics.update(self.cost.metrics())
        metrics["meta/method"] = "grpo"
        return out

    # -- resume: cost counters and the file logger's rows ---------------------------------------------------
    def _save_checkpoint(self):
        folder = Path(self.config.trainer.default_local_dir) / f"global_step_{self.global_steps}"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (COST_FILE + ".tmp")
        # this step's wall time so far (the rest of the step, after the save, is not in the checkpoint)
        cost = Cost(self.cost.rollouts, self.cost.tokens, self.cost.wall_s + time.perf_counter() - self._step_t0)
        tmp.write_text(json.dumps(vars(cost)))
        os.replace(tmp, folder / COST_FILE)
        super()._save_checkpoint()  # writes verl's latest-checkpoint tracker last

    def _load_checkpoint(self):
        super()._load_checkpoint()  # sets global_steps (0: training from scratch)
        self.cost = Cost()
        self._kept_rows = []
        if self.global_steps == 0:
            return
        if self.config.trainer.resume_mode == "resume_path":
            folder = Path(self.config.trainer.resume_from_path)
        else:
            folder = Path(self.config.trainer.default_local_dir) / f"global_step_{self.global_steps}"
        cost_file = folder / COST_FILE
        if cost_file.exists():
            self.cost = Cost(**json.loads(cost_file.read_text()))
        else:
            log.warning("%s has no %s (saved without randopt_verl?): cost counters restart from 0", folder, COST_FILE)
        if "file" in list(self.config.trainer.logger):
            # rows logged after this checkpoint (before a crash) are dropped: those steps run again
            self._kept_rows = keep_until(_file_logger_path(self.config), "step", self.global_steps)

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
        rows = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in self._kept_rows)  # verl's orjson layout
        Path(file_logger.filepath).write_text(rows)
        file_logger.fp = open(file_logger.filepath, "ab", buffering=0)


def _file_logger_path(config) -> Path:
    """Where verl's FileLogger (verl/utils/tracking.py) writes, by its own rule."""
    if os.getenv("VERL_FILE_LOGGER_PATH"):
        return Path(os.environ["VERL_FILE_LOGGER_PATH"])
    root = Path(os.path.expanduser(os.getenv("VERL_FILE_LOGGER_ROOT", ".")))
    return root / config.trainer.project_name / f"{config.trainer.experiment_name}.jsonl"
