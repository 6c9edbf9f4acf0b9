"""trainer=es through verl's real path on CPU: the update equals a hand computation from the recorded seeds and
z-scores, 1 and 2 FSDP ranks give the same weights, and a run resumed from verl's checkpoint ends where an
uninterrupted run ends."""

from __future__ import annotations

import json

import pytest
import torch

from randopt_verl.core.es_update import es_update_
from randopt_verl.inprocess import compose, trainer_session

pytestmark = pytest.mark.slow

ES = [
    "trainer=es",
    "es.population_size=4",
    "es.sigma=0.05",
    "es.alpha=0.02",
    "es.selection_size=6",
    "es.test_size=4",
    "trainer.save_freq=1",
    "trainer.test_freq=1",
    "trainer.val_before_train=false",
]
FINAL: dict[str, dict] = {}


def _iterations(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "es_iterations.jsonl").read_text().splitlines()]


def _by_hand(base: dict, iterations: list[dict]) -> dict:
    w = {n: t.clone() for n, t in base.items()}
    for it in iterations:
        for n in w:
            es_update_(w[n], n, it["seeds"], it["z"], it["alpha"])
    return w


def test_es_two_ranks_matches_hand_computation(common, tmp_path):
    config = compose(ES + common(tmp_path, n_ranks=2) + ["trainer.total_training_steps=2"])
    with trainer_session(config) as trainer:
        base = trainer.actor_rollout_wg.named_weights()[0]
        trainer.fit(None)
        final = trainer.actor_rollout_wg.named_weights()[0]
    its = _iterations(tmp_path)
    assert [it["iteration"] for it in its] == [1, 2]
    expected = _by_hand(base, its)
    for n in base:
        torch.testing.assert_close(final[n], expected[n], rtol=0, atol=1e-7)
    assert any(not torch.equal(final[n], base[n]) for n in base)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "val/acc" in rows[-1]["data"]
    assert rows[-1]["data"]["cost/rollouts"] == 2 * 4 * 6  # iterations x members x selection prompts
    FINAL["two_ranks"] = {"base": base, "final": final}


def test_es_one_rank_resumed_equals_uninterrupted(common, tmp_path):
    # iteration 1, checkpointed by verl; then a new trainer resumes it and runs iteration 2
    with trainer_session(compose(ES + common(tmp_path, n_ranks=1) + ["trainer.total_training_steps=1"])) as t:
        base = t.actor_rollout_wg.named_weights()[0]
        t.fit(None)
    assert (tmp_path / "global_step_1").is_dir()
    with trainer_session(compose(ES + common(tmp_path, n_ranks=1) + ["trainer.total_training_steps=2"])) as t:
        assert t.global_steps == 1, "verl did not resume from the iteration-1 checkpoint"
        t.fit(None)
        final = t.actor_rollout_wg.named_weights()[0]
    its = _iterations(tmp_path)
    assert [it["iteration"] for it in its] == [1, 2]
    expected = _by_hand(base, its)
    for n in base:
        torch.testing.assert_close(final[n], expected[n], rtol=0, atol=1e-7)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[-1]["data"]["cost/rollouts"] == 2 * 4 * 6  # the resumed run kept iteration 1's cost
    if "two_ranks" in FINAL:
        ref = FINAL["two_ranks"]
        assert all(torch.equal(base[n], ref["base"][n]) for n in base)
        for n in base:
            torch.testing.assert_close(final[n], ref["final"][n], rtol=0, atol=1e-7)
