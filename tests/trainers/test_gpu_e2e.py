"""GPU end-to-end (verl special_e2e style): one small RandOpt search and one ES iteration with vLLM replicas and
perturb-at-sync. Needs a CUDA GPU and vLLM (pip install -e '.[gpu]'); skipped cleanly otherwise."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from randopt_verl.inprocess import compose, trainer_session
from randopt_verl.core.rundir import Ledger, read_json

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM (pip install -e '.[gpu]')"),
]


def _gpu(common, run_dir):
    args = [a for a in common(run_dir, n_ranks=1) if a != "hardware=cpu"]
    return args + ["hardware=gpu", "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
                   "actor_rollout_ref.rollout.gpu_memory_utilization=0.3", "actor_rollout_ref.model.use_remove_padding=false"]


def test_randopt_one_gpu_vllm(common, tmp_path):
    config = compose(_gpu(common, tmp_path) + [
        "trainer=randopt", "randopt.population_size=2", "randopt.sigmas=[0.02]", "randopt.top_k=2",
        "randopt.ensemble_ks=[1,2]", "randopt.selection_size=8", "randopt.test_size=4",
        "randopt.controls.population=2"])
    assert config.actor_rollout_ref.rollout.name == "vllm"
    with trainer_session(config) as trainer:
        base = trainer.actor_rollout_wg.named_weights()[0]
        trainer.fit(None)
        after = trainer.actor_rollout_wg.named_weights()[0]
    assert all(torch.equal(base[n], after[n]) for n in base)
    assert sorted(Ledger(tmp_path / "ledger.jsonl").read().by_index) == [-1, 0, 1]
    assert "maj_at_k" in read_json(tmp_path / "results.json")


def test_es_one_gpu_vllm(common, tmp_path):
    config = compose(_gpu(common, tmp_path) + [
        "trainer=es", "es.population_size=2", "es.selection_size=4", "es.test_size=4",
        "trainer.total_training_steps=1", "trainer.save_freq=-1", "trainer.val_before_train=false"])
    with trainer_session(config) as trainer:
        base = trainer.actor_rollout_wg.named_weights()[0]
        trainer.fit(None)
        after = trainer.actor_rollout_wg.named_weights()[0]
    assert any(not torch.equal(base[n], after[n]) for n in base)
