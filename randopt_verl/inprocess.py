"""Run a trainer of this package in the current process, as verl's TaskRunnerV1 would (tests, notebooks):
compose the config, start Ray and TransferQueue, build the trainer (verl's own _setup), hand it back.

    from randopt_verl.inprocess import compose, trainer_session
    with trainer_session(compose(["trainer=randopt", "hardware=cpu", ...])) as trainer:
        fit(trainer)
Hardware: any; on CPU pass hardware=cpu.
"""

from __future__ import annotations

import contextlib


def compose(overrides: list[str]):
    """The config `python -m randopt_verl.main OVERRIDES...` would run, absolutized and checked exactly as main
    checks it (randopt_verl.preflight.prepare: a mistake raises ConfigError). Pass hardware=cpu on CPU."""
    from randopt_verl import preflight

    config = preflight.compose(overrides)
    preflight.prepare(config)
    return config


@contextlib.contextmanager
def trainer_session(config):
    """Yields an initialised trainer of config.trainer.v1.trainer_mode; shuts Ray down afterwards."""
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env
    from verl.trainer.ppo.v1 import get_trainer_cls

    from randopt_verl import preflight

    preflight.default_env()  # the environment randopt_verl.main gives a run, before Ray starts
    ray_init = OmegaConf.to_container(config.ray_kwargs.ray_init, resolve=True)
    # verl's runtime env merged with the config's, as verl.trainer.main_ppo.run_ppo does
    runtime_env = OmegaConf.merge(get_ppo_ray_runtime_env(config), ray_init.get("runtime_env") or {})
    ray.init(num_cpus=ray_init.get("num_cpus"), num_gpus=ray_init.get("num_gpus"),
             runtime_env=OmegaConf.to_container(runtime_env), include_dashboard=False)
    try:
        config.transfer_queue.enable = True
        OmegaConf.resolve(config)
        tq.init(config.transfer_queue)
        try:
            trainer = get_trainer_cls(config.trainer.v1.trainer_mode)(config=config)
            trainer.init()
            yield trainer
        finally:
            tq.close()
    finally:
        ray.shutdown()


def fit(trainer) -> None:
    """trainer.fit with the agent loop manager verl's TaskRunnerV1 builds (GRPO uses it; randopt and es don't)."""
    from verl.utils.import_utils import load_class_from_fqn

    from verl.trainer.ppo.v1 import AgentLoopManagerTQ

    config = trainer.config
    fqn = config.actor_rollout_ref.rollout.get("agent", {}).get("agent_loop_manager_class")
    cls = load_class_from_fqn(fqn, "AgentLoopManager") if fqn else AgentLoopManagerTQ
    manager = cls.create(config=config, llm_client=trainer.get_llm_client(),
                         teacher_client=trainer.get_teacher_client(),
                         reward_loop_worker_handles=trainer.get_reward_handles())
    trainer.fit(manager)
