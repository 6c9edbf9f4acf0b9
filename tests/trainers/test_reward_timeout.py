"""trainer=randopt on CPU with a reward that sleeps forever on one selection item: with `reward_guard.timeout_s`
that sample is recorded as an error in every ledger row, and the search finishes (ES scores through the same
`harness.score`). trainer=grpo with the same reward: verl's agent loop gets RewardTimeout for that sample, marks its
group failed, and the step finishes."""

from __future__ import annotations

import json
import time

import pytest

from randopt_verl.core.jsonio import read_json
from randopt_verl.core.ledger import Ledger
from randopt_verl.inprocess import compose, fit, trainer_session

from .conftest import ROOT

pytestmark = pytest.mark.slow

HANGING_REWARD = str(ROOT / "tests" / "fixtures" / "hanging_reward.py")


# without the guard these runs never end: fail instead of hanging CI
@pytest.mark.timeout(600)
def test_a_reward_that_hangs_on_one_sample_costs_that_sample(common, tmp_path):
    args = common(tmp_path, n_ranks=1) + [
        "trainer=randopt",
        f"reward.custom_reward_function.path={HANGING_REWARD}",
        "reward_guard.timeout_s=3",
        "randopt.population_size=2",
        "randopt.sigmas=[0.02]",
        "randopt.top_k=1",
        "randopt.ensemble_ks=[1]",
        "randopt.selection_size=8",
        "randopt.test_size=4",
        "randopt.controls.population=2",
        "randopt.controls.random_k_draws=2",
        "randopt.plots=false",
    ]
    t0 = time.monotonic()
    with trainer_session(compose(args)) as trainer:
        trainer.fit(None)
    wall = time.monotonic() - t0
    rows = Ledger(tmp_path / "ledger.jsonl").read().rows
    assert sorted(r["index"] for r in rows) == [-1, 0, 1]
    for row in rows:
        # selection item 0 (ground truth "0") timed out, items 2 and 5 ("19") raised: three errors, scored 0
        timeouts = [e for e in row["errors"] if "reward_guard.timeout_s=3" in e["error"]]
        assert [e["prompt"] for e in timeouts] == [0], row["errors"]
        assert row["n_errors"] == 3 and row["scores"][0] == 0.0
    assert "maj_at_k" in read_json(tmp_path / "results.json")
    print(f"\nrandopt with one hanging sample per row: {wall:.0f} s")


@pytest.mark.timeout(600)
def test_grpo_step_finishes_with_a_hanging_sample(common, tmp_path):
    # verl's agent loop scores each sample through RewardLoopWorker.compute_score: the guarded function raises
    # RewardTimeout for the hanging one, verl marks that prompt group failed and the step goes on
    log = tmp_path / "run" / "metrics.jsonl"  # the run directory: GRPOTrainer.fit points verl's file logger there
    args = common(tmp_path / "run", n_ranks=1) + [
        "trainer=grpo",
        f"reward.custom_reward_function.path={HANGING_REWARD}",
        "reward_guard.timeout_s=3",
        "data.shuffle=false",  # the first batch holds item 0, whose ground truth "0" hangs
        "trainer.total_training_steps=1",
        "trainer.save_freq=-1",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.logger=[console,file]",
        "actor_rollout_ref.rollout.n=2",
    ]
    t0 = time.monotonic()
    with trainer_session(compose(args)) as trainer:
        fit(trainer)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    assert rows[0]["data"]["training/rollout_failure/evicted_samples"] > 0  # the hung (and the raising) groups
    print(f"\ngrpo step with a hanging sample: {time.monotonic() - t0:.0f} s")
