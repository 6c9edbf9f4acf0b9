"""The few places where verl 0.9.1 cannot run on the host without a change, each patched in isolation.

Every patch names the verl line it works around and has a guard in `GUARDS`: a check that what it patches still
looks the way the patch expects. tests/cpu/test_patches.py runs every guard, so a verl upgrade that moves or
changes one of these places fails loudly instead of silently running unpatched code. Patches apply only on the
cpu platform; on a GPU machine none of them runs.
"""

from __future__ import annotations

import inspect
import logging

logger = logging.getLogger(__name__)


# -- 1. process-group backend --------------------------------------------------------------------------------
# verl/utils/distributed.py::initialize_global_process_group_ray builds
#   backend = backend or f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"
# which on the cpu platform is "cpu:gloo,cpu:gloo": torch rejects the duplicate device. Changing the function's
# default `backend` argument reaches every `from verl.utils.distributed import ...` alias at once.
def _guard_dist_backend() -> None:
    from verl.utils import distributed as vd

    src = inspect.getsource(vd.initialize_global_process_group_ray)
    params = list(inspect.signature(vd.initialize_global_process_group_ray).parameters)
    assert params == ["timeout_second", "backend"], f"signature changed: {params}"
    assert 'f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"' in src, "backend string changed"


def _patch_dist_backend() -> None:
    from verl.utils import distributed as vd

    vd.initialize_global_process_group_ray.__defaults__ = (None, "cpu:gloo")


# -- 2. FSDP engines for the cpu device ----------------------------------------------------------------------
# verl/workers/engine/fsdp/transformer_impl.py registers FSDPEngineWithLMHead / FSDPEngineWithValueHead with
# device=["cuda", "npu"]; EngineRegistry then has no engine for "cpu". Register the same classes for "cpu".
def _guard_engines() -> None:
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp import transformer_impl as ti

    assert hasattr(ti, "FSDPEngineWithLMHead") and hasattr(ti, "FSDPEngineWithValueHead")
    assert isinstance(EngineRegistry._engines, dict), "EngineRegistry._engines layout changed"
    assert "register" in vars(EngineRegistry), "EngineRegistry.register missing"


def _patch_engines() -> None:
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, cls in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        if "cpu" not in EngineRegistry._engines.get(model_type, {}).get("fsdp2", {}):
            EngineRegistry.register(model_type=model_type, backend=["fsdp", "fsdp2"], device="cpu")(cls)


# -- 3. pinned-memory offload of the reference engine --------------------------------------------------------
# transformer_impl.py::FSDPEngine._build_fsdp_module hard-codes `CPUOffloadPolicy(pin_memory=True)` for
# forward-only (reference) engines; pinning needs an accelerator ("Cannot access accelerator device when none
# is available"). Swap the module-global class for one that never pins.
def _guard_offload_policy() -> None:
    from verl.workers.engine.fsdp import transformer_impl as ti

    assert getattr(ti, "CPUOffloadPolicy", None) is not None, "CPUOffloadPolicy no longer a module global"
    assert "CPUOffloadPolicy(pin_memory=True)" in inspect.getsource(ti.FSDPEngine), "offload call changed"


def _patch_offload_policy() -> None:
    from verl.workers.engine.fsdp import transformer_impl as ti

    base = ti.CPUOffloadPolicy
    if getattr(base, "_randopt_verl_nopin", False):
        return

    class NoPinCPUOffloadPolicy(base):
        _randopt_verl_nopin = True

        def __init__(self, pin_memory: bool = True):
            super().__init__(pin_memory=False)

    ti.CPUOffloadPolicy = NoPinCPUOffloadPolicy


# -- 4. the `hf` rollout backend -------------------------------------------------------------------------------
# verl/workers/rollout/base.py keeps worker-side adapters in the private dict _ROLLOUT_REGISTRY keyed by
# (name, mode); replicas go through the public RolloutReplicaRegistry. Add ("hf", "async") to the former.
def _guard_rollout_registry() -> None:
    from verl.workers.rollout import base as rb

    assert isinstance(rb._ROLLOUT_REGISTRY, dict) and ("vllm", "async") in rb._ROLLOUT_REGISTRY
    assert "_ROLLOUT_REGISTRY[(rollout_name, mode)]" in inspect.getsource(rb.get_rollout_class)


def _patch_rollout_registry() -> None:
    from verl.workers.rollout import base as rb
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    rb._ROLLOUT_REGISTRY[("hf", "async")] = "randopt_verl.cpu.hf_rollout.HFServerAdapter"

    def _load_hf():
        from randopt_verl.cpu.hf_rollout import HFReplica

        return HFReplica

    RolloutReplicaRegistry.register("hf", _load_hf)


# The `hf` backend is registered on every platform (it is a valid, slow, rollout on a GPU too); the rest only on
# the cpu platform.
ALWAYS = [_patch_rollout_registry]
CPU_ONLY = [_patch_dist_backend, _patch_engines, _patch_offload_policy]
GUARDS = {
    "dist_backend": _guard_dist_backend,
    "engines": _guard_engines,
    "offload_policy": _guard_offload_policy,
    "rollout_registry": _guard_rollout_registry,
}


def apply(on_cpu: bool) -> None:
    for patch in ALWAYS + (CPU_ONLY if on_cpu else []):
        patch()
        logger.debug("randopt_verl: applied %s", patch.__name__)
