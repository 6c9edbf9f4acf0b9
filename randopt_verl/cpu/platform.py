"""A `cpu` platform for verl's PlatformRegistry.

verl 0.9.1 knows nvidia/npu/rocm only and falls back to nvidia when none is found
(`verl/plugin/platform/platform_manager.py::_detect_platform_name`). Registered after the built-ins, this
platform is picked only when every accelerator probe fails, so installing the plugin never changes what a GPU
machine does. verl calls `get_torch_device().<fn>()` (torch.cuda on GPUs) all over; `CPUDeviceModule` answers
those calls for the host.
"""

from __future__ import annotations

import contextlib
import logging
import os
import types
from typing import Any, Optional

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

logger = logging.getLogger(__name__)

# torch.cuda calls verl 0.9.1 makes through get_torch_device() on the trainer path; each answered for the host.
# tests/cpu/test_patches.py greps verl's source for get_torch_device().X and fails if X is not covered here.
_NOOPS = (
    "set_device", "synchronize", "empty_cache", "reset_peak_memory_stats", "ipc_collect", "init",
    "set_per_process_memory_fraction",
)


class CPUDeviceModule(types.ModuleType):
    """Stand-in for `torch.cuda` on the host."""

    def __init__(self) -> None:
        super().__init__("randopt_verl_cpu_device")
        for name in _NOOPS:
            setattr(self, name, lambda *a, **k: None)

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def current_device(self) -> torch.device:
        # verl passes this straight to .to()/device=; a bare int 0 would mean "accelerator 0"
        return torch.device("cpu")

    def device_count(self) -> int:
        return 1

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    def get_rng_state(self, *a, **k) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor, *a, **k) -> None:
        torch.set_rng_state(state)

    # memory statistics: the host has no device allocator; report zero used, host memory for mem_get_info
    def memory_allocated(self, *a, **k) -> int:
        return 0

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    def memory_stats(self, *a, **k) -> dict:
        return {}

    def mem_get_info(self, *a, **k) -> tuple[int, int]:
        import psutil

        vm = psutil.virtual_memory()
        return vm.available, vm.total

    def get_device_name(self, *a, **k) -> str:
        return "CPU"  # verl's flops counter looks this up

    def get_device_properties(self, *a, **k):
        return types.SimpleNamespace(name="CPU", total_memory=self.mem_get_info()[1], major=0, minor=0)

    @contextlib.contextmanager
    def stream(self, *a, **k):
        yield

    def current_stream(self, *a, **k):
        return torch.cpu.current_stream()

    def Stream(self, *a, **k):  # noqa: N802 - mirrors torch.cuda.Stream
        return torch.cpu.Stream()

    def Event(self, *a, **k):  # noqa: N802 - mirrors torch.cuda.Event
        return torch.cpu.Event()

    def __getattr__(self, name: str) -> Any:
        if hasattr(torch.cpu, name):
            return getattr(torch.cpu, name)
        raise AttributeError(
            f"randopt_verl cpu platform: verl asked for torch-device attribute {name!r}, which the CPU stand-in "
            "does not provide. Report it with the traceback; a verl upgrade probably started using it."
        )


DEVICE_MODULE = CPUDeviceModule()


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """The host CPU: gloo collectives, logical Ray 'GPU' slots (see docs/ARCHITECTURE.md, 'verl on CPU')."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self):
        return DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Probed after nvidia/npu/rocm (registration order), so reached only on a machine without them.
        return not torch.cuda.is_available()

    def current_device(self) -> torch.device:
        return torch.device("cpu")

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    def ray_resource_name(self) -> str:
        # verl's resource pools ask Ray for "GPU" (use_gpu=True is hard-coded in 0.9.1); the CPU preset declares
        # logical GPUs with ray_kwargs.ray_init.num_gpus so those requests are satisfiable on a CPU machine.
        return "GPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

    def is_ipc_supported(self) -> bool:
        return False

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def cudart(self) -> Any:
        return None


def rollout_threads(default: int | None = None) -> int:
    """Torch threads for one `hf` rollout server; RANDOPT_VERL_ROLLOUT_THREADS overrides."""
    env = os.environ.get("RANDOPT_VERL_ROLLOUT_THREADS")
    if env:
        return max(1, int(env))
    return max(1, default if default is not None else (os.cpu_count() or 1))
