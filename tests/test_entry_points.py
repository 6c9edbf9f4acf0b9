"""The two entry points compose the same config, `trainer=<name>` never becomes a string, and a plugin that fails
to load says so loudly (verl itself would only log it at DEBUG)."""

from __future__ import annotations

import subprocess
import sys

from randopt_verl.main import _add_hardware_default


def _cfg(args: list[str]) -> str:
    out = subprocess.run([sys.executable, *args, "--cfg", "job"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_verls_entry_point_and_ours_compose_the_same_randopt_config():
    ours = _cfg(["-m", "randopt_verl.main", "trainer=randopt", "hardware=cpu"])
    verls = _cfg(["-m", "verl.trainer.main_ppo", "--config-name", "randopt_ppo", "trainer=randopt", "hardware=cpu"])
    assert ours == verls
    assert "trainer_mode: randopt" in ours and "name: hf" in ours and "population_size: 500" in ours


def test_trainer_override_on_verls_own_config_does_not_silently_become_a_string():
    out = subprocess.run([sys.executable, "-m", "verl.trainer.main_ppo", "trainer=randopt", "--cfg", "job"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 or "trainer: randopt" not in out.stdout


def test_hardware_defaults_to_cpu_without_a_gpu():
    import torch

    argv = _add_hardware_default(["main", "trainer=randopt"])
    assert argv[-1] == ("trainer=randopt" if torch.cuda.is_available() else "hardware=cpu")
    assert _add_hardware_default(["main", "hardware=gpu"]) == ["main", "hardware=gpu"]


def test_plugin_failure_is_loud():
    code = "import sys; sys.modules['randopt_verl.trainers'] = None; import verl"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "randopt_verl: the verl plugin failed to load" in out.stderr


def test_any_trainer_module_can_be_imported_first():
    # a fresh interpreter whose first import of verl comes from inside a trainer module (as in the benchmarks)
    for module in ("harness", "es", "grpo", "randopt"):
        code = (f"import randopt_verl.trainers.{module}\n"
                "from verl.trainer.ppo.v1.trainer_base import get_trainer_cls\n"
                "print(*(get_trainer_cls(n).__name__ for n in ('randopt', 'es', 'grpo')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert "plugin failed to load" not in out.stderr, (module, out.stderr[-2000:])
        assert out.returncode == 0 and out.stdout.split()[-3:] == ["RandOptTrainer", "ESTrainer", "GRPOTrainer"], (
            module, out.stderr[-2000:])
