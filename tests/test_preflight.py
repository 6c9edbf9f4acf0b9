"""`randopt-verl doctor --config-only` on every documented GPU command and every recipe, found by reading the README
and the recipe scripts (a new recipe is covered without editing this file); bad values exit non-zero naming the
key and its fix. Model and data paths are pointed at the tiny model and toy data; everything else is the command's
own. No GPU, no Ray."""

from __future__ import annotations

import io
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from randopt_verl import preflight
from randopt_verl.config.errors import ConfigError
from randopt_verl.preflight import config_checks, install_checks, machine_checks

ROOT = Path(__file__).resolve().parents[1]
REWARD = str(ROOT / "tests" / "fixtures" / "toy_reward.py")
SWAPPED = ("actor_rollout_ref.model.path", "data.train_files", "data.val_files")


@pytest.fixture(scope="module")
def big_toy_data(tmp_path_factory) -> dict[str, str]:
    """Toy addition rows, as many as verl's default data.train_batch_size (1024) needs for one GRPO step."""
    out = tmp_path_factory.mktemp("big_toy_data")
    rows = [{"data_source": "toy_addition", "prompt": [{"role": "user", "content": f"What is {i % 20} + {i % 17}?"}],
             "ability": "math", "reward_model": {"style": "rule", "ground_truth": str(i % 20 + i % 17)},
             "extra_info": {"index": i}} for i in range(2048)]
    pd.DataFrame(rows).to_parquet(out / "train.parquet")
    pd.DataFrame(rows[:16]).to_parquet(out / "test.parquet")
    return {"train": str(out / "train.parquet"), "test": str(out / "test.parquet")}


def _pointed(overrides: list[str], model: str, data: dict[str, str], out: Path) -> list[str]:
    values = {"actor_rollout_ref.model.path": model, "data.train_files": data["train"], "data.val_files": data["test"]}
    kept = [o for o in overrides if o.split("=", 1)[0] not in SWAPPED + ("trainer.default_local_dir",)]
    return kept + [f"{k}={v}" for k, v in values.items()] + [f"trainer.default_local_dir={out}"]


def _doctor(overrides: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    status = preflight.doctor(overrides, config_only=True, out=out)
    return status, out.getvalue()


# --------------------------------------------------------------------------------------- README's GPU commands


def readme_gpu_commands() -> list[list[str]]:
    """Every `python -m randopt_verl.main ... hardware=gpu ...` command in README.md (continuation lines joined)."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("python -m randopt_verl.main") and "hardware=gpu" in line:
            commands.append(shlex.split(line.split("#", 1)[0])[3:])
    return commands


def test_readme_has_gpu_commands_for_all_three_trainers():
    trainers = {a for cmd in readme_gpu_commands() for a in cmd if a.startswith("trainer=")}
    assert trainers == {"trainer=randopt", "trainer=es", "trainer=grpo"}


@pytest.mark.parametrize("command", readme_gpu_commands(), ids=lambda c: " ".join(c)[:60])
def test_readme_gpu_commands_pass_doctor(command, tiny_model, big_toy_data, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the README's relative paths (reward_fns/...) are from the repository root
    assert "<" not in " ".join(command), "a README command must run as written"
    status, text = _doctor(_pointed(command, tiny_model, big_toy_data, tmp_path))
    assert status == 0, text


def test_done_when_commands_pass_with_only_paths_given(tiny_model, big_toy_data, tmp_path):
    import ray

    for trainer in ("randopt", "es", "grpo"):
        status, text = _doctor([f"trainer={trainer}", "hardware=gpu", "trainer.n_gpus_per_node=8",
                                f"reward.custom_reward_function.path={REWARD}",
                                *_pointed([], tiny_model, big_toy_data, tmp_path / trainer)])
        assert status == 0, text
        assert "8 rollout replica(s)" in text and "rollout=vllm" in text
    assert not ray.is_initialized()


# --------------------------------------------------------------------------------------------------- recipes


def recipe_runs() -> list[tuple[Path, list[str]]]:
    """(script, arguments) for every runnable recipe: a script whose first comment line is its command,
    `# bash recipes/<name>/<script>.sh [ARGS]  -- hardware`. `[a|b]` runs once per choice; an UPPERCASE word is a
    path the script takes (a temporary folder)."""
    runs = []
    for script in sorted((ROOT / "recipes").rglob("*.sh")):
        lines = script.read_text().splitlines()
        header = next((ln for ln in lines[:3] if ln.startswith("# bash ")), None)
        if not lines or not lines[0].startswith("#!") or header is None:
            continue  # sourced helpers (common.sh)
        words = header[len("# bash "):].split("--", 1)[0].split()[1:]
        variants = [[]]
        for w in words:
            if w.startswith("[") and w.endswith("]"):
                variants = [v + [choice] for v in variants for choice in w[1:-1].split("|")]
            else:
                variants = [v + ["@PATH@"] for v in variants]
        runs += [(script, v) for v in variants]
    return runs


def _recorded_command(script: Path, args: list[str], tmp_path: Path) -> list[str]:
    """Run the recipe with a `python` that records the arguments of `python -m randopt_verl.main` (and does nothing
    else: no data is generated, nothing is written into the repository)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python"
    fake.write_text('#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "randopt_verl.main" ]; then shift 2; '
                    'printf "%s\\0" "$@" > "$RECORD"; fi\nexit 0\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    record = tmp_path / "record"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RECORD": str(record),
           "MODEL": str(tmp_path / "model"), "DATA": str(tmp_path / "data")}
    args = [str(tmp_path) if a == "@PATH@" else a for a in args]
    out = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert record.exists(), f"{script} ran no `python -m randopt_verl.main` command"
    return [a for a in record.read_text().split("\0") if a]


def test_every_recipe_is_found():
    names = {s.relative_to(ROOT / "recipes").as_posix() for s, _ in recipe_runs()}
    assert {"countdown_qwen2.5-1.5b/randopt.sh", "countdown_qwen2.5-1.5b/es.sh", "countdown_qwen2.5-1.5b/grpo.sh",
            "gsm8k_qwen2.5-0.5b/randopt.sh", "tiny_cpu/run.sh"} <= names


@pytest.mark.parametrize("script, args", recipe_runs(),
                         ids=lambda v: v.relative_to(ROOT / "recipes").as_posix() if isinstance(v, Path) else "-".join(v))
def test_every_recipe_passes_doctor(script, args, tiny_model, big_toy_data, tmp_path):
    command = _recorded_command(script, args, tmp_path)
    status, text = _doctor(_pointed(command, tiny_model, big_toy_data, tmp_path / "run"))
    assert status == 0, f"{script.name} {args}: {command}\n{text}"


def test_recipes_state_replicas_and_cite_nothing_outside_the_repository():
    for path in (ROOT / "recipes").rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"ANCHORS\.md|DESIGN decision|/work/shared", text), path
    readme = (ROOT / "recipes" / "countdown_qwen2.5-1.5b" / "README.md").read_text()
    assert "replicas" in readme


# ----------------------------------------------------------------------------------------- bad values, exit codes


@pytest.mark.parametrize("override, key, fix", [
    ("randopt.top_k=600", "randopt.top_k=600", "keep K <= N"),
    ("actor_rollout_ref.rollout.tensor_model_parallel_size=3", "tensor_model_parallel_size=3", "use one of [1, 2, 4, 8]"),
    ("reward.custom_reward_function.path=/nonexistent/reward.py", "reward.custom_reward_function.path=/nonexistent",
     "reward_fns/ holds the bundled ones"),
    ("randopt.populaton_size=5", "randopt.populaton_size", "did you mean randopt.population_size?"),
])
def test_bad_values_exit_2_naming_the_key_and_fix(override, key, fix, tiny_model, big_toy_data, tmp_path):
    status, text = _doctor(["trainer=randopt", "hardware=gpu", "trainer.n_gpus_per_node=8",
                            f"reward.custom_reward_function.path={REWARD}",
                            *_pointed([], tiny_model, big_toy_data, tmp_path), override])
    assert status == preflight.EXIT_CONFIG, text
    fails = [line for line in text.splitlines() if line.startswith("[FAIL]")]
    assert any(key in line and fix in line for line in fails), text


def _doctor_cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "randopt_verl.tools.cli", "doctor", "--config-only", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def _model_with_heads(src: str, dst: Path, heads: int, kv: int) -> str:
    """The tiny model's folder with its config.json claiming other head counts (only the config is read)."""
    import json
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(num_attention_heads=heads, num_key_value_heads=kv)
    (dst / "config.json").write_text(json.dumps(cfg))
    return str(dst)


@pytest.mark.parametrize("heads, kv, tp, fails", [
    (2, 1, 4, "does not divide the model's 2 attention heads"),
    (12, 8, 4, None),  # KV heads 8 split over 4 ranks
    (12, 2, 4, None),  # 2 KV heads, each replicated twice over 4 ranks
    (12, 4, 8, "does not divide the model's 12 attention heads"),
    (24, 3, 2, "3 KV heads"),  # 2 ranks can neither split nor replicate 3 KV heads evenly
])
def test_rollout_tp_must_fit_the_models_heads(heads, kv, tp, fails, tiny_model, big_toy_data, tmp_path):
    model = _model_with_heads(tiny_model, tmp_path / "model", heads, kv)
    proc = _doctor_cli(["trainer=randopt", "hardware=gpu", "trainer.n_gpus_per_node=8",
                        f"actor_rollout_ref.rollout.tensor_model_parallel_size={tp}",
                        f"reward.custom_reward_function.path={REWARD}",
                        *_pointed([], model, big_toy_data, tmp_path / "run")])
    fail_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[FAIL]")]
    if fails is None:
        assert not any("tensor_model_parallel_size" in ln for ln in fail_lines), proc.stdout
        return
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert any(f"tensor_model_parallel_size={tp}" in ln and fails in ln and "use one of" in ln
               for ln in fail_lines), proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("trainer", ["randopt", "es"])
def test_fsdp1_actor_is_refused_for_randopt_and_es(trainer, tiny_model, big_toy_data, tmp_path):
    proc = _doctor_cli([f"trainer={trainer}", "hardware=gpu", "trainer.n_gpus_per_node=8",
                        "actor_rollout_ref.actor.strategy=fsdp", f"reward.custom_reward_function.path={REWARD}",
                        *_pointed([], tiny_model, big_toy_data, tmp_path)])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert any(ln.startswith("[FAIL]") and "set actor_rollout_ref.actor.strategy=fsdp2" in ln
               for ln in proc.stdout.splitlines()), proc.stdout
    assert "Traceback" not in proc.stderr


def test_hub_model_id_without_network_or_cache_exits_2_with_the_fix(big_toy_data, tmp_path):
    """A hub id that is neither cached nor downloadable (offline here) fails the model line at once, before verl's
    model config would try the network for a minute and end in a traceback."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))  # an empty cache
    data = _pointed([], "Qwen/Qwen2.5-0.5B-Instruct", big_toy_data, tmp_path / "run")
    proc = _doctor_cli(["trainer=randopt", "hardware=gpu", "trainer.n_gpus_per_node=8",
                        f"reward.custom_reward_function.path={REWARD}", *data], env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("[FAIL] model folder"))
    assert "actor_rollout_ref.model.path=Qwen/Qwen2.5-0.5B-Instruct" in line and "HF_HUB_OFFLINE is set" in line
    assert "--local-dir DIR" in line and "actor_rollout_ref.model.path=DIR" in line


def test_hub_model_id_unreachable_hub_fails_without_waiting(monkeypatch, tmp_path):
    from randopt_verl import validate

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(validate, "_reachable", lambda url, timeout_s=5.0: False)
    with pytest.raises(validate.ConfigError, match="cannot be reached from this machine"):
        validate._check_hub_model("someone/not-cached-model-xyz")
    monkeypatch.setattr(validate, "_reachable", lambda url, timeout_s=5.0: True)
    validate._check_hub_model("someone/not-cached-model-xyz")  # online: verl downloads it


def test_doctor_cli_exit_status_and_checklist(tiny_model, big_toy_data, tmp_path):
    base = [sys.executable, "-m", "randopt_verl.tools.cli", "doctor", "--config-only", "trainer=es", "hardware=gpu",
            "trainer.n_gpus_per_node=8", f"reward.custom_reward_function.path={REWARD}",
            *_pointed([], tiny_model, big_toy_data, tmp_path)]
    bad = subprocess.run(base + ["es.population_size=1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "[FAIL] es.* (ESConfig)" in bad.stdout and "es.population_size must be >= 2" in bad.stdout
    assert "Traceback" not in bad.stderr


def test_machine_checks_report_without_failing_the_config(tiny_model, toy_data, tmp_path):
    """Without --config-only doctor probes this machine; on CPU with hardware=cpu everything needed is here."""
    out = io.StringIO()
    status = preflight.doctor(["trainer=randopt", "hardware=cpu", f"reward.custom_reward_function.path={REWARD}",
                               *_pointed([], tiny_model, toy_data, tmp_path)], out=out)
    text = out.getvalue()
    assert status == 0, text
    assert "[ok]   torch and CUDA" in text and "[ok]   Ray" in text
    assert re.search(r"\[(ok|skip)\] +canonical noise: CUDA equals CPU", text)


@pytest.mark.gpu
def test_cuda_noise_equals_cpu_noise():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    assert "bitwise equal" in machine_checks.check_cuda_noise()


def test_install_checks_name_the_package_and_the_fix(tiny_model, big_toy_data, tmp_path):
    from importlib.util import find_spec

    gpu = ["hardware=gpu", "trainer.n_gpus_per_node=8", *_pointed([], tiny_model, big_toy_data, tmp_path)]
    grpo = {r.name: r for r in install_checks.install_report(preflight.compose(["trainer=grpo", *gpu]))}
    randopt = {r.name: r for r in install_checks.install_report(preflight.compose(["trainer=randopt", *gpu]))}
    flash = "flash-attn (FSDP actor attention)"
    assert randopt[flash].status == "skip"  # the randopt/es actor never runs a forward pass
    if find_spec("flash_attn") is None:
        assert grpo[flash].status == "fail"
        assert "pip install --no-build-isolation flash-attn==2.8.3" in grpo[flash].detail
        assert "attn_implementation=sdpa" in grpo[flash].detail
    if find_spec("vllm") is None:
        vllm = randopt["vLLM (rollout backend)"]
        assert vllm.status == "fail" and f"vllm=={install_checks.verl_pin('vllm', 'vllm')}" in vllm.detail
    cpu = preflight.compose(["trainer=grpo", "hardware=cpu", *_pointed([], tiny_model, big_toy_data, tmp_path)])
    assert {r.status for r in install_checks.install_report(cpu)} == {"skip"}


def test_reward_on_one_row_is_doctors_and_a_hang_fails_its_line(tiny_model, toy_data, tmp_path):
    from randopt_verl.inprocess import compose

    raising = tmp_path / "raising.py"
    raising.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                       "    raise RuntimeError('broken reward')\n")
    hanging = tmp_path / "hanging.py"
    hanging.write_text("import time\n\ndef compute_score(**kwargs):\n    time.sleep(30)\n")
    base = ["trainer=randopt", "hardware=cpu", *_pointed([], tiny_model, toy_data, tmp_path / "run")]
    # a run records a raising sample's error and goes on: compose (main's checks) accepts it, doctor flags it
    compose(base + [f"reward.custom_reward_function.path={raising}"])
    status, text = _doctor(base + [f"reward.custom_reward_function.path={raising}"])
    assert status == 2 and "[FAIL] reward function scores one test row: " in text and "broken reward" in text
    config = preflight.compose(base + [f"reward.custom_reward_function.path={hanging}"])
    with pytest.raises(ConfigError, match="did not return within 1 s"):
        config_checks._reward_row(config, True, timeout_s=1)


# ------------------------------------------------------------------------------------- the CPU head-to-head


def test_head_to_head_script_writes_its_data_and_its_three_commands_pass_doctor(tiny_model, big_toy_data, tmp_path):
    """scripts/head_to_head_cpu.sh with a `python` that records each `python -m randopt_verl.main` command and
    answers the embedded-model lookup with the tiny model; the script's own data step runs for real (it once called
    a helper whose signature had changed and would have stopped before its first run)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record"
    (bin_dir / "python").write_text(
        '#!/bin/sh\n'
        'if [ "$1" = "-m" ] && [ "$2" = "randopt_verl.main" ]; then shift 2; printf "%s\\0" "$@" >> "$RECORD"; '
        'printf "\\n" >> "$RECORD"; exit 0; fi\n'
        f'if [ "$1" = "-m" ] && [ "$2" = "randopt_verl.assets.embedded" ]; then echo "{tiny_model}"; exit 0; fi\n'
        f'exec "{sys.executable}" "$@"\n')
    (bin_dir / "randopt-verl").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RECORD": str(record),
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "head_to_head_cpu.sh"), str(tmp_path / "h2h")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    commands = [[a for a in line.split("\0") if a] for line in record.read_text().splitlines() if line]
    assert [next(a for a in c if a.startswith("trainer=")) for c in commands] == [
        "trainer=randopt", "trainer=es", "trainer=grpo"]
    for command in commands:
        values = dict(a.split("=", 1) for a in command if "=" in a)
        train, test = pd.read_parquet(values["data.train_files"]), pd.read_parquet(values["data.val_files"])
        assert (len(train), len(test)) == (128, 100)
        assert values["actor_rollout_ref.model.path"] == str(tiny_model)
        status, text = _doctor(_pointed(command, str(tiny_model), big_toy_data, tmp_path / "run"))
        assert status == 0, f"{command}\n{text}"
