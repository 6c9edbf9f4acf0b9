"""trainer=es through verl's real path on CPU: the update equals a hand computation from the recorded seeds and
z-scores, 1 and 2 FSDP ranks give the same weights and the same validation (its test prompts spread over the
replicas: the hf engine's batch is 2 prompts, so 4 test prompts make two blocks), and a run resumed from verl's
checkpoint ends where an uninterrupted run ends. Both runs are made in one fixture, so the cross-run assertions hold
whatever order the tests run in."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from randopt_verl.core.es_update import es_update_
from randopt_verl.core.jsonio import read_jsonl
from randopt_verl.core.manifest import ManifestMismatch
from randopt_verl.core.rundir import RunDir
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
    "actor_rollout_ref.rollout.engine_kwargs.hf.max_batch_size=2",
]


def _by_hand(base: dict, iterations: list[dict]) -> dict:
    w = {n: t.clone() for n, t in base.items()}
    for it in iterations:
        for n in w:
            es_update_(w[n], n, it["seeds"], it["z"], it["alpha"])
    return w


@pytest.fixture(scope="module")
def es_runs(common, tmp_path_factory) -> dict:
    out = {}
    # two ranks, two iterations in one go
    run_dir = tmp_path_factory.mktemp("es_r2")
    with trainer_session(compose(ES + common(run_dir, n_ranks=2) + ["trainer.total_training_steps=2"])) as t:
        base = t.actor_rollout_wg.named_weights()[0]
        t.fit(None)
        out["r2"] = dict(run_dir=run_dir, base=base, final=t.actor_rollout_wg.named_weights()[0])
    # one rank: iteration 1, checkpointed by verl; then a new trainer resumes it and runs iteration 2
    run_dir = tmp_path_factory.mktemp("es_r1")
    with trainer_session(compose(ES + common(run_dir, n_ranks=1) + ["trainer.total_training_steps=1"])) as t:
        base = t.actor_rollout_wg.named_weights()[0]
        t.fit(None)
    assert (run_dir / "global_step_1").is_dir()
    with trainer_session(compose(ES + common(run_dir, n_ranks=1) + ["trainer.total_training_steps=2"])) as t:
        resumed_at = t.global_steps
        t.fit(None)
        final = t.actor_rollout_wg.named_weights()[0]
        # the same run directory with another ES setting: refused, naming the key
        OmegaConf.update(t.config, "es.alpha", 0.5)
        t.read_settings()  # what its next fit would read
        with pytest.raises(ManifestMismatch) as refused:
            t._open_run(t.prompts(t.train_dataset, 6), t.prompts(t.val_dataset, 4))
    out["r1"] = dict(run_dir=run_dir, base=base, final=final, resumed_at=resumed_at)
    out["refused"] = str(refused.value)
    return out


@pytest.mark.parametrize("which", ["r2", "r1"])
def test_es_update_matches_hand_computation(es_runs, which):
    run = es_runs[which]
    its = read_jsonl(RunDir(run["run_dir"]).es_iterations_path)
    assert [it["iteration"] for it in its] == [1, 2]
    expected = _by_hand(run["base"], its)
    for n in run["base"]:
        torch.testing.assert_close(run["final"][n], expected[n], rtol=0, atol=1e-7)
    assert any(not torch.equal(run["final"][n], run["base"][n]) for n in run["base"])


@pytest.mark.parametrize("which", ["r2", "r1"])
def test_es_metrics_carry_cost_across_resume(es_runs, which):
    rows = read_jsonl(RunDir(es_runs[which]["run_dir"]).metrics_path)
    assert [r["step"] for r in rows] == [1, 2] and "val/acc" in rows[-1]["data"]
    assert rows[-1]["data"]["val/n"] == 4  # es.test_size: what `compare` computes the interval from
    assert rows[-1]["data"]["cost/rollouts"] == 2 * 4 * 6  # iterations x members x selection prompts
    assert rows[-1]["data"]["cost/wall_s"] > rows[0]["data"]["cost/wall_s"] > 0
    assert rows[0]["data"]["meta/method"] == "es"


def test_resumed_from_verls_checkpoint(es_runs):
    assert es_runs["r1"]["resumed_at"] == 1, "verl did not resume from the iteration-1 checkpoint"


def test_one_and_two_ranks_give_one_run(es_runs):
    r1, r2 = es_runs["r1"], es_runs["r2"]
    assert all(torch.equal(r1["base"][n], r2["base"][n]) for n in r1["base"])
    for n in r1["base"]:
        torch.testing.assert_close(r1["final"][n], r2["final"][n], rtol=0, atol=1e-7)
    its1, its2 = (read_jsonl(RunDir(r["run_dir"]).es_iterations_path) for r in (r1, r2))
    assert [(i["seeds"], i["rewards"]) for i in its1] == [(i["seeds"], i["rewards"]) for i in its2]
    val1, val2 = ([(r["data"]["val/acc"], r["data"]["val/score"]) for r in read_jsonl(RunDir(r["run_dir"]).metrics_path)]
                  for r in (r1, r2))
    assert val1 == val2  # validation spread over 2 replicas answers as 1 replica does


def test_changed_settings_are_refused_naming_the_key(es_runs):
    assert "search.alpha: old 0.02 -> new 0.5" in es_runs["refused"]
