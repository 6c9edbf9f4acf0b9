"""The machine checks (doctor without --config-only): torch and CUDA, visible GPUs against trainer.n_gpus_per_node, Ray,
and the canonical noise on CUDA equal bit for bit to the CPU noise."""

from __future__ import annotations

import os

from randopt_verl.config.errors import ConfigError
from randopt_verl.preflight.install_checks import installed
from randopt_verl.preflight.report import Result, Skip, run_check


def _check_torch(config) -> str:
    import torch

    cuda = torch.cuda.is_available()
    desc = f"torch {torch.__version__}, CUDA {'available (' + str(torch.version.cuda) + ')' if cuda else 'not available'}"
    if str(config.trainer.device) == "cuda" and not cuda:
        raise ConfigError(f"{desc}, but trainer.device=cuda: install a CUDA build of torch, or run on CPU with "
                          "hardware=cpu")
    return desc


def _check_gpus(config) -> str:
    import torch

    if str(config.trainer.device) == "cpu":
        raise Skip("trainer.device=cpu (GPUs are logical Ray slots)")
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    want = int(config.trainer.n_gpus_per_node)
    if seen < want:
        raise ConfigError(f"trainer.n_gpus_per_node={want} but this machine shows {seen} GPU(s) (CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): set trainer.n_gpus_per_node={seen} "
                          "(and a tensor_model_parallel_size that divides it)")
    note = " (this node; every node needs as many)" if int(config.trainer.nnodes) > 1 else ""
    return f"{seen} visible, {want} used{note}"


def _check_ray(config) -> str:
    got = installed("ray")
    if got is None:
        raise ConfigError("Ray is not installed: pip install -e . (verl installs ray[default])")
    import ray  # noqa: F401  (an import that fails here would fail the run)

    address = os.environ.get("RAY_ADDRESS")
    return f"ray {got}" + (f", joins the cluster at RAY_ADDRESS={address}" if address else ", starts a local cluster")


def check_cuda_noise(numel: int = (1 << 20) + 7, offset: int = 12345) -> str:
    """The canonical noise and perturbed fp32/bf16 tensors computed on CUDA equal the CPU ones bit for bit."""
    import torch

    from randopt_verl.core import noise

    if not torch.cuda.is_available():
        raise Skip("no CUDA on this machine (the CPU noise is tested in CI)")
    seed, name, sigma = 1234, "model.layers.0.mlp.up_proj.weight", 0.002
    cpu = noise.noise(seed, name, numel, offset=offset, device="cpu")
    gpu = noise.noise(seed, name, numel, offset=offset, device="cuda").cpu()
    bad = int((cpu.view(torch.int32) != gpu.view(torch.int32)).sum())
    base = torch.linspace(-1, 1, numel, dtype=torch.float32)
    for dtype in (torch.float32, torch.bfloat16):
        t = base.to(dtype)
        a = noise.perturbed(t, seed, name, sigma, offset=offset)
        b = noise.perturbed(t.cuda(), seed, name, sigma, offset=offset).cpu()
        view = torch.int32 if dtype == torch.float32 else torch.int16
        bad += int((a.view(view) != b.view(view)).sum())
    if bad:
        raise ConfigError(f"{bad} of {3 * numel} elements of the CUDA noise differ from the CPU noise: candidates would "
                          "not be the ones the ledger names; report it with `python -m pytest tests/core -m gpu`")
    return f"{numel} elements at offset {offset}: noise, fp32 and bf16 perturbation bitwise equal"


def machine_report(config) -> list[Result]:
    return [run_check("torch and CUDA", lambda: _check_torch(config)),
            run_check("GPUs visible vs trainer.n_gpus_per_node", lambda: _check_gpus(config)),
            run_check("Ray", lambda: _check_ray(config)),
            run_check("canonical noise: CUDA equals CPU bit for bit", check_cuda_noise)]
