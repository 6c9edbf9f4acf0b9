"""Fixtures for the trainer tests: the command-line overrides every test shares. Each test runs verl's trainer
in process (randopt_verl.inprocess); the hf servers use one torch thread each, so outputs do not depend on how many
replicas share the cores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOY_REWARD = str(ROOT / "tests" / "fixtures" / "toy_reward.py")

os.environ["RANDOPT_VERL_ROLLOUT_THREADS"] = "1"


@pytest.fixture(scope="session")
def common(tiny_model, toy_data):
    def make(run_dir: Path, n_ranks: int) -> list[str]:
        return [
            "hardware=cpu",
            f"actor_rollout_ref.model.path={tiny_model}",
            f"data.train_files={toy_data['train']}",
            f"data.val_files={toy_data['test']}",
            f"reward.custom_reward_function.path={TOY_REWARD}",
            "data.max_prompt_length=64",
            "data.max_response_length=8",
            "data.train_batch_size=4",
            f"trainer.n_gpus_per_node={n_ranks}",
            f"trainer.default_local_dir={run_dir}",
            "trainer.logger=[console]",
            "trainer.project_name=randopt_verl_tests",
            f"trainer.experiment_name={run_dir.name}",
        ]

    return make


def _gone(pgid: int, timeout: float = 60.0) -> bool:
    """True once no process of the group is left (the group's Ray processes die with it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def _kill_then_resume(args: list[str], run_dir: Path, rows_file: Path, rows: int, wait_s: float = 400,
                      resume_s: float = 600) -> int:
    """Run `python -m randopt_verl.main ARGS` in a session of its own (its Ray processes die with its process group),
    SIGKILL it once ``rows_file`` has ``rows`` rows (within ``wait_s``), check nothing survived and no top-K was
    written, then finish the run with verl's own entry point (within ``resume_s``). Returns the rows on disk when it
    was killed."""
    from randopt_verl.core.ledger import Ledger

    # RAY_ADDRESS=local: a Ray cluster private to this run, never another one on the machine
    env = dict(os.environ, RANDOPT_VERL_ROLLOUT_THREADS="1", RAY_ADDRESS="local")
    proc = subprocess.Popen([sys.executable, "-m", "randopt_verl.main", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + wait_s
        while time.time() < deadline:
            if rows_file.exists() and rows_file.read_text().count("\n") >= rows:
                break
            time.sleep(0.05)
            assert proc.poll() is None, "the search exited before it could be killed"
        else:
            pytest.fail(f"no {rows} rows in {rows_file.name} within {wait_s} s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _gone(proc.pid), "processes of the killed run survived their process group's SIGKILL"
    on_disk = Ledger(rows_file).read()
    assert not on_disk.duplicates, "a row was written twice"
    assert not (run_dir / "topk.json").exists()
    done = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", "--config-name", "randopt_ppo", *args],
        env=dict(env, RAY_AUTH_MODE="disabled", WANDB_MODE="disabled"), capture_output=True, text=True,
        timeout=resume_s, start_new_session=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return len(on_disk.by_index)


@pytest.fixture
def kill_then_resume():
    """`_kill_then_resume`: SIGKILL a search mid-run, then finish it through verl's own entry point."""
    return _kill_then_resume
