"""Fixtures for the trainer tests: the command-line overrides every test shares. Each test runs verl's trainer
in process (randopt_verl.inprocess); the hf servers use one torch thread each, so outputs do not depend on how many
replicas share the cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOY_REWARD = str(ROOT / "tests" / "fixtures" / "toy_reward.py")

os.environ["RANDOPT_VERL_ROLLOUT_THREADS"] = "1"


@pytest.fixture(scope="session")
def common(tiny_model, toy_data):
    def make(run_dir: Path, n_ranks: int) -> list[str]:
        return [
            "hardware=cpu",
            f"actor_rollout_ref.model.path={tiny_model}",
            f"data.train_files={toy_data['train']}",
            f"data.val_files={toy_data['test']}",
            f"reward.custom_reward_function.path={TOY_REWARD}",
            "data.max_prompt_length=64",
            "data.max_response_length=8",
            "data.train_batch_size=4",
            f"trainer.n_gpus_per_node={n_ranks}",
            f"trainer.default_local_dir={run_dir}",
            "trainer.logger=[console]",
            "trainer.project_name=randopt_verl_tests",
            f"trainer.experiment_name={run_dir.name}",
        ]

    return make
