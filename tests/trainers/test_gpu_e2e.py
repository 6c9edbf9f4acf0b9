"""GPU end-to-end (verl special_e2e style): perturb-at-sync into vLLM changes what a replica generates and restores
the base exactly, one small RandOpt search, one ES iteration. Needs a CUDA GPU and vLLM (pip install -e '.[gpu]');
skipped cleanly otherwise. The configs these tests run are checked on every CPU run too: they must pass the
project's and verl's validation (test_gpu_configs_pass_verl_validation), and the ES one must move the weights on the
hf backend (test_es_config_updates_on_cpu, `slow`), so that the GPU test's final assertion can hold."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from randopt_verl.core.es_update import es_update_
from randopt_verl.core.population import Candidate
from randopt_verl.core.jsonio import read_json, read_jsonl
from randopt_verl.core.ledger import Ledger
from randopt_verl.core.rundir import RunDir
from randopt_verl.inprocess import compose, trainer_session

VARIED_REWARD = str(Path(__file__).resolve().parents[1] / "fixtures" / "varied_reward.py")


def gpu(test):
    """gpu marker, skipped cleanly without a CUDA GPU or vLLM."""
    test = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM (pip install -e '.[gpu]')")(test)
    test = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test)
    return pytest.mark.gpu(test)


def _gpu(common, run_dir):
    """The shared test overrides on one GPU with vLLM. Explicit here so the test does not depend on defaults:
    - rollout.name=vllm: verl's default is the mandatory "???";
    - FSDP2 actor (perturb-at-sync and the ES update address weights by HF name and shard offset);
    - batch sizes verl's validate_config demands even of a trainer that never runs a PPO update: mini-batch <=
      data.train_batch_size (4 here), and every micro-batch size set;
    - sdpa attention and no remove-padding: the actor never needs flash-attn for a forward-only search."""
    args = [a for a in common(run_dir, n_ranks=1) if a != "hardware=cpu"]
    return args + [
        "hardware=gpu",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.3",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.ref.strategy=fsdp2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.model.use_remove_padding=false",
        "++actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    ]


RANDOPT = ["trainer=randopt", "randopt.population_size=2", "randopt.sigmas=[0.02]", "randopt.top_k=2",
           "randopt.ensemble_ks=[1,2]", "randopt.selection_size=8", "randopt.test_size=4", "randopt.controls.population=2"]
# ES's update is (alpha/N)·Σ z_n ε_n with z the members' z-scored rewards: with toy_reward the tiny random model writes
# no digit, every member scores 0, z is all zero and the update exactly 0. varied_reward scores any text, and
# sigma=0.05 makes the two members answer differently, so z = ±1.
ES = ["trainer=es", "es.population_size=2", "es.sigma=0.05", "es.selection_size=4", "es.test_size=4",
      "trainer.total_training_steps=1", "trainer.save_freq=-1", "trainer.val_before_train=false"]


def _varied(args: list[str]) -> list[str]:
    return [f"reward.custom_reward_function.path={VARIED_REWARD}" if a.startswith("reward.custom_reward_function.path=")
            else a for a in args]


def _assert_es_update_landed(run_dir, base: dict, after: dict) -> None:
    """The members scored differently, and the weights moved by exactly the recorded update."""
    its = read_jsonl(RunDir(run_dir).es_iterations_path)
    assert len(its) == 1, its
    it = its[0]
    assert any(z != 0 for z in it["z"]), f"every member scored alike (z = {it['z']}): the update is zero"
    for n in base:
        expected = es_update_(base[n].clone(), n, it["seeds"], it["z"], it["alpha"])
        torch.testing.assert_close(after[n], expected, rtol=0, atol=1e-7)
    assert any(not torch.equal(base[n], after[n]) for n in base)


@pytest.mark.parametrize("method", [RANDOPT, ES], ids=["randopt", "es"])
def test_gpu_configs_pass_verl_validation(common, tmp_path, method):
    """CPU check of the configs below: the project's config checks (doctor --config-only's: without vLLM installed
    here, the install checks of main would stop it) and verl's validate_config, as main runs them."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from randopt_verl import preflight
    from randopt_verl.preflight import config_checks

    args = _gpu(common, tmp_path)
    config = preflight.compose((_varied(args) if method is ES else args) + method)  # as the tests below compose
    failed = [r.line() for r in config_checks.config_report(config, call_reward=False) if r.status == "fail"]
    assert not failed, failed
    assert config.actor_rollout_ref.rollout.name == "vllm"
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))


def _tokens(trainer, prompts, sampling):
    return [o.token_ids for o in trainer.generate({0: prompts}, sampling)[0]]


@gpu
def test_randopt_one_gpu_vllm(common, tmp_path):
    from randopt_verl.trainers.harness import greedy

    config = compose(_gpu(common, tmp_path) + RANDOPT)
    with trainer_session(config) as trainer:
        base = trainer.actor_rollout_wg.named_weights()[0]
        # perturb-at-sync must reach vLLM: a large-sigma candidate changes greedy outputs, the base comes back exactly
        sel = trainer.prompts(trainer.train_dataset, 8)
        sampling = greedy(int(config.data.max_response_length))
        trainer.load_candidates({}, how="sync", param_filter={})
        base_out = _tokens(trainer, sel.ids, sampling)
        trainer.load_candidates({0: Candidate(0, 7, 0.05)}, how="sync", param_filter={})
        cand_out = _tokens(trainer, sel.ids, sampling)
        trainer.load_candidates({}, how="sync", param_filter={})
        again = _tokens(trainer, sel.ids, sampling)
        assert cand_out != base_out, "a sigma=0.05 candidate generated exactly what the base did: the sync did not perturb"
        assert again == base_out, "the base weights did not come back after a candidate"
        trainer.fit(None)
        after = trainer.actor_rollout_wg.named_weights()[0]
    assert all(torch.equal(base[n], after[n]) for n in base)  # the FSDP weights are never modified
    assert sorted(Ledger(tmp_path / "ledger.jsonl").read().by_index) == [-1, 0, 1]
    results = read_json(tmp_path / "results.json")
    assert "maj_at_k" in results


@gpu
def test_es_one_gpu_vllm(common, tmp_path):
    from randopt_verl.trainers.harness import greedy

    config = compose(_varied(_gpu(common, tmp_path)) + ES)
    with trainer_session(config) as trainer:
        base = trainer.actor_rollout_wg.named_weights()[0]
        sel = trainer.prompts(trainer.train_dataset, 4)
        sampling = greedy(int(config.data.max_response_length))
        trainer.load_candidates({}, how="sync", param_filter={})
        base_out = _tokens(trainer, sel.ids, sampling)
        trainer.load_candidates({0: Candidate(0, 11, 0.05)}, how="sync", param_filter={})
        assert _tokens(trainer, sel.ids, sampling) != base_out, "an ES member equalled the base on vLLM"
        trainer.fit(None)
        after = trainer.actor_rollout_wg.named_weights()[0]
    _assert_es_update_landed(tmp_path, base, after)


@pytest.mark.slow
def test_es_config_updates_on_cpu(common, tmp_path):
    """The GPU ES test's settings (population, sigma, reward, tiny model) on the hf backend: z is not all zero and
    the weights move by the recorded update. With toy_reward and the default sigma every member scored 0 here too."""
    config = compose(_varied(common(tmp_path, n_ranks=1)) + ES)
    with trainer_session(config) as trainer:
        base = trainer.actor_rollout_wg.named_weights()[0]
        trainer.fit(None)
        after = trainer.actor_rollout_wg.named_weights()[0]
    _assert_es_update_landed(tmp_path, base, after)
