"""trainer=randopt on CPU with a reward that sleeps forever on one selection item: with `reward_guard.timeout_s`
that sample is recorded as an error in every ledger row, and the search finishes. (ES scores through the same
`harness.score`; GRPO through the same verl reward function, see tests/test_reward_guard.py.)"""

from __future__ import annotations

import time

import pytest

from randopt_verl.core.rundir import Ledger, read_json
from randopt_verl.inprocess import compose, trainer_session

from .conftest import ROOT

pytestmark = pytest.mark.slow

HANGING_REWARD = str(ROOT / "tests" / "fixtures" / "hanging_reward.py")


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
