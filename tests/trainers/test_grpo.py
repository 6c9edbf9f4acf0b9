"""trainer=grpo: verl's own GRPO on CPU through the plugin, 2 FSDP ranks and 2 hf replicas: one step checkpointed
by verl, then a new trainer resumes it and runs step 2 (weights restored bitwise, cost and logged rows carried on).
verl's file logger writes the run directory's metrics.jsonl with no environment variable set by the caller."""

from __future__ import annotations

import json
import os

import pytest
import ray
import torch

from randopt_verl.inprocess import compose, fit, trainer_session

pytestmark = pytest.mark.slow


def test_grpo_resumes_and_updates_actor_and_rollout(common, tmp_path, monkeypatch):
    monkeypatch.delenv("VERL_FILE_LOGGER_PATH", raising=False)
    log = tmp_path / "run" / "metrics.jsonl"  # the run directory (trainer.default_local_dir)

    def config(steps):
        return compose(common(tmp_path / "run", n_ranks=2) + [
            "trainer=grpo",
            f"trainer.total_training_steps={steps}",
            "trainer.save_freq=1",
            "trainer.val_before_train=false",
            "trainer.test_freq=-1",
            "trainer.logger=[console,file]",
            "actor_rollout_ref.rollout.n=2",
            "actor_rollout_ref.actor.optim.lr=1e-3",
        ])

    with trainer_session(config(1)) as trainer:
        fit(trainer)
        step1 = trainer.actor_rollout_wg.named_weights()[0]
    assert "VERL_FILE_LOGGER_PATH" not in os.environ  # set for verl's logger only while fit runs
    first_row = json.loads(log.read_text().splitlines()[0])
    # a row logged after the checkpoint, as a crash mid-step-2 would leave it: the resumed run must drop it
    with open(log, "a") as f:
        f.write(json.dumps({"step": 2, "data": {"cost/rollouts": 999}}) + "\n")

    with trainer_session(config(2)) as trainer:
        assert trainer.global_steps == 1, "verl did not resume from the step-1 checkpoint"
        resumed = trainer.actor_rollout_wg.named_weights()[0]
        for n in step1:
            assert torch.equal(resumed[n], step1[n]), f"{n} not restored bitwise"
        assert trainer.cost.rollouts == 8
        fit(trainer)
        after = trainer.actor_rollout_wg.named_weights()[0]
        changed = [n for n in step1 if not torch.equal(step1[n], after[n])]
        assert changed, "the resumed GRPO step left every actor weight unchanged"
        # verl's weight sync carried the trained weights into both rollout replicas (rounded once to its dtype)
        for rep in trainer.llm_server_manager.get_replicas():
            served = ray.get(rep.server_handle.get_weights.remote())
            for n in changed:
                assert torch.equal(served[n], after[n].to(served[n].dtype)), n

    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows[0] == first_row and [r["step"] for r in rows] == [1, 2]
    # 4 prompts x 2 samples per step, counted cumulatively across the resume like randopt and es
    assert [r["data"]["cost/rollouts"] for r in rows] == [8, 16]
    assert rows[1]["data"]["cost/tokens"] > rows[0]["data"]["cost/tokens"] > 0
    assert rows[1]["data"]["cost/wall_s"] > rows[0]["data"]["cost/wall_s"] > 0
    # the cost definition: verl's step time (weights-in included) less its checkpoint save
    d = rows[0]["data"]
    assert d["cost/wall_s"] == pytest.approx(d["timing_s/step"] - d["timing_s/save_checkpoint"], abs=2e-3)
    assert rows[1]["data"]["meta/method"] == "grpo"
    assert any(k.startswith("actor/") for k in rows[0]["data"])
