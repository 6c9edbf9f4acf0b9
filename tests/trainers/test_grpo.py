"""trainer=grpo: verl's own GRPO on CPU through the plugin, 2 FSDP ranks and 2 hf replicas, 2 steps."""

from __future__ import annotations

import json
import os

import pytest
import ray
import torch

from randopt_verl.inprocess import compose, fit, trainer_session

pytestmark = pytest.mark.slow


def test_grpo_two_steps_updates_actor_and_rollout(common, tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(log))
    config = compose(common(tmp_path, n_ranks=2) + [
        "trainer=grpo",
        "trainer.total_training_steps=2",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.logger=[console,file]",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.actor.optim.lr=1e-3",
    ])
    with trainer_session(config) as trainer:
        before = trainer.actor_rollout_wg.named_weights()[0]
        fit(trainer)
        after = trainer.actor_rollout_wg.named_weights()[0]
        changed = [n for n in before if not torch.equal(before[n], after[n])]
        assert changed, "two GRPO steps left every actor weight unchanged"
        # verl's weight sync carried the trained weights into both rollout replicas
        for rep in trainer.llm_server_manager.get_replicas():
            served = ray.get(rep.server_handle.get_weights.remote())
            for n in changed:
                torch.testing.assert_close(served[n], after[n], rtol=0, atol=1e-6)

    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    # 4 prompts x 2 samples per step, counted cumulatively like randopt and es
    assert [r["data"]["cost/rollouts"] for r in rows] == [8, 16]
    assert rows[1]["data"]["cost/tokens"] > 0 and rows[1]["data"]["meta/method"] == "grpo"
    assert any(k.startswith("actor/") for k in rows[0]["data"])
