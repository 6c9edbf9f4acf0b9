"""Entry point: verl's ppo_trainer config plus `trainer=randopt|es|grpo`, run by verl's own TaskRunner.

    python -m randopt_verl.main trainer=randopt data.train_files=... data.val_files=... actor_rollout_ref.model.path=...

Hardware: any. Without a GPU, `hardware=cpu` is added unless the command line names a hardware preset.
The same config composes under verl's entry point: `python -m verl.trainer.main_ppo --config-name randopt_ppo ...`.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig


def _default_env() -> None:
    # Ray's token auth and wandb both want the network; tokenizers' thread pool fights Ray's fork.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _add_hardware_default(argv: list[str]) -> list[str]:
    if any(a.split("=", 1)[0].lstrip("+~") == "hardware" for a in argv[1:]):
        return argv
    import torch

    if torch.cuda.is_available():
        return argv
    print("randopt_verl: no GPU found, using hardware=cpu (pass hardware=gpu to override)", file=sys.stderr)
    return argv + ["hardware=cpu"]


@hydra.main(config_path="config", config_name="randopt_ppo", version_base=None)
def run(config: DictConfig) -> None:
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from randopt_verl import validate

    # fix-it errors for our keys, files and reward function before Ray starts
    validate.absolutize(config)
    validate.check(config)
    # then verl's own checks, exactly as verl.trainer.main_ppo.main runs them
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    # verl's "file" logger writes into the Ray worker's directory unless told otherwise: put it in the run
    # directory, where `randopt-verl compare` looks (set before ray.init so every Ray process inherits it)
    os.environ.setdefault("VERL_FILE_LOGGER_PATH", os.path.join(_run_dir(config), "metrics.jsonl"))
    run_ppo(config, task_runner_class=TaskRunnerV1)


def _run_dir(config: DictConfig) -> str:
    mode = config.trainer.v1.trainer_mode
    node = config.get(mode) if mode in ("randopt", "es") else None
    path = str(node.run_dir) if node is not None else str(config.trainer.default_local_dir)
    os.makedirs(path, exist_ok=True)
    return path


def main() -> None:
    _default_env()
    sys.argv = _add_hardware_default(sys.argv)
    try:
        run()
    except validate_error_types() as exc:  # a config mistake: the message is the fix, no traceback needed
        print(f"randopt_verl: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def validate_error_types():
    from randopt_verl.validate import ConfigError

    return (ConfigError,)


if __name__ == "__main__":
    main()
