"""The two entry points compose the same config, `trainer=<name>` never becomes a string, and a plugin that fails
to load says so loudly (verl itself would only log it at DEBUG)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from randopt_verl.main import _add_hardware_default

REWARD = str(Path(__file__).resolve().parent / "fixtures" / "toy_reward.py")


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
    # hydra refuses it (no `trainer` group in verl's own defaults list) instead of composing `trainer: randopt`
    assert out.returncode != 0, out.stdout[-2000:]
    assert "Could not override 'trainer'" in out.stderr
    assert "trainer: randopt" not in out.stdout


def test_hardware_defaults_to_cpu_without_a_gpu():
    import torch

    argv = _add_hardware_default(["main", "trainer=randopt", "--cfg", "job"])
    cpu = not torch.cuda.is_available()
    # inserted before hydra's own flags: `--cfg job hardware=cpu` is refused by hydra's argument parser
    assert argv == (["main", "hardware=cpu", "trainer=randopt", "--cfg", "job"] if cpu
                    else ["main", "trainer=randopt", "--cfg", "job"])
    assert _add_hardware_default(["main", "hardware=gpu"]) == ["main", "hardware=gpu"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the automatic hardware=cpu needs a CPU machine")
def test_hydra_flags_after_the_overrides_work_on_a_cpu_machine():
    out = _cfg(["-m", "randopt_verl.main", "trainer=grpo"])  # `... trainer=grpo --cfg job`
    assert "trainer_mode: grpo" in out and "name: hf" in out


def _main(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "randopt_verl.main", "hardware=cpu", *args],
                          capture_output=True, text=True, timeout=300)


def test_config_mistakes_leave_main_as_one_line_and_status_2(tiny_model, toy_data, tmp_path):
    paths = [f"actor_rollout_ref.model.path={tiny_model}", f"data.train_files={toy_data['train']}",
             f"data.val_files={toy_data['test']}", f"reward.custom_reward_function.path={REWARD}",
             f"trainer.default_local_dir={tmp_path}"]
    for args, message in [
        (["trainer=randopt", "randopt.populaton_size=5"],
         "unknown key randopt.populaton_size (did you mean randopt.population_size?)"),
        (["trainer=randopt", *paths, "randopt.top_k=600"], "randopt.top_k=600 exceeds randopt.population_size=500"),
        (["trainer=randopt", *paths, f"reward.custom_reward_function.path={tmp_path / 'nope.py'}"],
         "reward.custom_reward_function.path=" + str(tmp_path / "nope.py") + " does not exist"),
    ]:
        out = _main(args)
        assert out.returncode == 2, (args, out.stderr[-2000:])
        errors = [line for line in out.stderr.splitlines() if line.startswith("randopt_verl: config error:")]
        assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]
        assert "Traceback" not in out.stderr and "Error executing job" not in out.stderr


def test_verls_own_entry_point_gets_the_same_environment():
    # verl's driver imports verl (and so the plugin) before its ray.init: the defaults randopt_verl.main sets
    code = ("import os\nfor k in ('RAY_AUTH_MODE', 'WANDB_MODE', 'TOKENIZERS_PARALLELISM'): os.environ.pop(k, None)\n"
            "import verl\nprint(os.environ['RAY_AUTH_MODE'], os.environ['WANDB_MODE'], os.environ['TOKENIZERS_PARALLELISM'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split()[-3:] == ["disabled", "disabled", "false"], out.stderr[-2000:]


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
