"""Each verl patch's guard: fails loudly if a verl upgrade changes what a patch works around."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from randopt_verl.cpu import patches


@pytest.mark.parametrize("name", sorted(patches.GUARDS))
def test_guard(name):
    patches.GUARDS[name]()


def test_patches_applied_on_this_cpu_machine():
    import randopt_verl.plugin  # noqa: F401  (verl loads it too; importing twice is a no-op)
    from verl.utils import distributed as vd
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp import transformer_impl as ti
    from verl.workers.rollout import base as rb
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    assert vd.initialize_global_process_group_ray.__defaults__ == (None, "cpu:gloo")
    assert "cpu" in EngineRegistry._engines["language_model"]["fsdp2"]
    assert getattr(ti.CPUOffloadPolicy, "_randopt_verl_nopin", False)
    assert rb._ROLLOUT_REGISTRY[("hf", "async")].endswith("HFServerAdapter")
    assert RolloutReplicaRegistry.get("hf").__name__ == "HFReplica"


def test_cpu_device_module_covers_every_call_verl_makes():
    """verl calls get_torch_device().X(); the CPU stand-in must answer every X verl 0.9.1 uses."""
    import verl

    from randopt_verl.cpu.platform import DEVICE_MODULE

    root = Path(verl.__file__).parent
    used = set()
    for f in root.rglob("*.py"):
        used |= set(re.findall(r"get_torch_device\(\)\.([A-Za-z_]+)", f.read_text(errors="ignore")))
    missing = sorted(n for n in used if not hasattr(DEVICE_MODULE, n))
    assert not missing, f"verl calls get_torch_device().{missing} which the cpu platform does not provide"


@pytest.mark.cpu_only
def test_platform_resolves_to_cpu():
    from verl.utils.device import get_device_id, get_device_name

    import torch

    assert get_device_name() == "cpu"
    assert get_device_id() == torch.device("cpu")
