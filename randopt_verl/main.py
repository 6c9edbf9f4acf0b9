"""Entry point: verl's ppo_trainer config plus `trainer=randopt|es|grpo`, run by verl's own TaskRunner.

    python -m randopt_verl.main trainer=randopt data.train_files=... data.val_files=... actor_rollout_ref.model.path=...

Hardware: any. Without a GPU, `hardware=cpu` is added unless the command line names a hardware preset.
The same config composes under verl's entry point: `python -m verl.trainer.main_ppo --config-name randopt_ppo ...`.

Before Ray starts, the config goes through `randopt_verl.preflight.prepare` (the checks `randopt-verl doctor`
prints, minus the machine probes). A config mistake prints one line, `randopt_verl: config error: <what and the
fix>`, and exits with status 2 (no traceback); so does a key that does not exist, naming the closest one.
`console.quiet=true` sends Ray's and verl's output to `<run dir>/console.log` and shows one progress line per phase
(randopt_verl/console.py); an error then prints its message and the log's path and exits with status 1.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from randopt_verl import preflight
from randopt_verl.config.errors import ConfigError


def _add_hardware_default(argv: list[str]) -> list[str]:
    """argv with `hardware=cpu` inserted right after the program name when needed (see preflight)."""
    overrides, _ = preflight.hydra_overrides(argv[1:])
    added = preflight.with_hardware_default(overrides)
    return argv[:1] + added[: len(added) - len(overrides)] + argv[1:]


def _config_error(exc: ConfigError) -> SystemExit:
    print(f"randopt_verl: config error: {exc}", file=sys.stderr)
    return SystemExit(preflight.EXIT_CONFIG)


@hydra.main(config_path="config", config_name="randopt_ppo", version_base=None)
def run(config: DictConfig) -> None:
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo

    # inside hydra's job: hydra reports an Exception as "Error executing job" with a traceback and exit 1, but
    # lets SystemExit through, so a config mistake leaves here as one line and status 2
    try:
        preflight.prepare(config)
    except ConfigError as exc:
        raise _config_error(exc) from None
    if not config.console.quiet:
        run_ppo(config, task_runner_class=TaskRunnerV1)
        return
    from randopt_verl.console import Quiet

    try:
        with Quiet(run_dir(config)):
            run_ppo(config, task_runner_class=TaskRunnerV1)
    except Exception:
        # Quiet printed the error's message and the log's path (the traceback is in the log): no second traceback
        raise SystemExit(1) from None


def run_dir(config: DictConfig) -> str:
    """Where a run writes: the method's run_dir (randopt, es) or verl's trainer.default_local_dir (grpo)."""
    node = config.get(str(config.trainer.v1.trainer_mode))
    return str(node.run_dir) if node is not None and node.get("run_dir") else str(config.trainer.default_local_dir)


def main() -> None:
    preflight.default_env()
    sys.argv = _add_hardware_default(sys.argv)
    overrides, _ = preflight.hydra_overrides(sys.argv[1:])
    other_config = {"--multirun", "-m", "--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd"}
    if not other_config & {a.split("=", 1)[0] for a in sys.argv[1:]}:
        # compose once with hydra's compose API first: a key that does not exist is reported with the closest
        # known key (hydra would print "Key ... is not in struct" and exit 1)
        try:
            preflight.compose(overrides)
        except ConfigError as exc:
            raise _config_error(exc) from None
    run()


if __name__ == "__main__":
    main()
