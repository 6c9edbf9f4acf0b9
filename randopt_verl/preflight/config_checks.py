"""The config checks, one checklist line each: this package's typed schema and cross-tree checks
(randopt_verl/validate.py, randopt_verl/config/schema.py), the reward function called on one test row (doctor only),
verl's own `validate_config` (its messages that do not name a key rewritten to name it), and the config dataclasses
verl's workers build from the tree (actor, ref, rollout, model, checkpoint engine)."""

from __future__ import annotations

import copy
import re

from randopt_verl.config.errors import ConfigError
from randopt_verl.preflight.report import Result, Skip, run_check


def config_report(config, *, check_files: bool = True, call_reward: bool = True) -> list[Result]:
    """Every config check, in order; `config` is absolutized in place first (as the run would). `call_reward`:
    also score one test row with the reward function (doctor only: a run records a sample whose reward raises or
    hangs as that sample's error and goes on, so one bad row must not stop it)."""
    from randopt_verl import validate

    try:
        validate.absolutize(config)
        steps = validate.steps(config, check_files=check_files)
    except ConfigError as exc:
        return [Result("config tree", "fail", str(exc))]
    out = [run_check(name, step) for name, step in steps]
    failed = any(r.status == "fail" for r in out)
    if check_files and call_reward:
        files_ok = all(r.status == "ok" for r in out[:4])
        out.append(run_check("reward function scores one test row", lambda: _reward_row(config, files_ok)))
    out.append(run_check("verl validate_config", lambda: _verl_validate(config)))
    out.append(run_check("verl worker configs (actor, ref, rollout, model, checkpoint engine)",
                    lambda: _verl_dataclasses(config, check_model=check_files and not failed)))
    return out


def _reward_row(config, files_ok: bool, timeout_s: float = 60.0) -> str:
    """The reward on one row, in a daemon thread: a reward that hangs fails this line instead of hanging doctor."""
    import threading

    from randopt_verl import validate

    if not files_ok:
        raise Skip("needs the files above")
    box: dict = {}

    def call():
        try:
            box["score"] = validate.call_reward_on_one_row(config)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=call, daemon=True, name="randopt-verl-doctor-reward")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise ConfigError(f"reward.custom_reward_function did not return within {timeout_s:g} s on the first test row: "
                          "a reward that hangs costs a sample per call (or the run, without a time limit)")
    if "error" in box:
        raise box["error"]
    return f"score {box['score']:g} for the row's own ground truth"


# verl's validate_config messages that do not name the key to change, with the key and the fix
_VERL_MESSAGES = [
    (r"real_train_batch_size \((\d+)\) must be divisible by minimal possible batch size \((\d+)\)",
     "data.train_batch_size x actor_rollout_ref.rollout.n = {0} is not divisible by the {1} GPUs verl splits each "
     "batch over: set data.train_batch_size to a multiple of {1}"),
    (r"train_batch_size \((\d+)\) must be >= actor.ppo_mini_batch_size \((\d+)\)",
     "data.train_batch_size={0} is smaller than actor_rollout_ref.actor.ppo_mini_batch_size={1}: set "
     "actor_rollout_ref.actor.ppo_mini_batch_size <= {0}"),
    (r"Please set at least one of '([^']+)' or '([^']+)'",
     "{1} is not set (verl has no default): set it, e.g. {1}=4 (sequences per GPU pass: memory, not maths)"),
]


def _verl_validate(config) -> str:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    try:
        validate_config(config=config, use_reference_policy=need_reference_policy(config),
                        use_critic=need_critic(config))
    except (AssertionError, ValueError) as exc:
        text = str(exc)
        for pattern, message in _VERL_MESSAGES:
            m = re.search(pattern, text)
            if m:
                raise ConfigError(message.format(*m.groups())) from None
        raise ConfigError(f"verl: {(text.strip().splitlines() or [type(exc).__name__])[0]}") from None
    return ""


def _verl_dataclasses(config, *, check_model: bool) -> str:
    """Build the dataclasses verl's ActorRolloutRefWorker.init_model builds, from a resolved copy of the tree."""
    from omegaconf import OmegaConf, open_dict
    from verl.trainer.ppo.utils import need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass

    from randopt_verl import validate

    c = copy.deepcopy(config)
    OmegaConf.resolve(c)
    arr = c.actor_rollout_ref
    omega_conf_to_dataclass(arr.actor)
    if need_reference_policy(config):
        # init_model's own renaming of the ref node's log-prob keys before it converts it
        with open_dict(arr.ref):
            arr.ref.ppo_mini_batch_size = arr.actor.ppo_mini_batch_size
            arr.ref.ppo_micro_batch_size = arr.ref.pop("log_prob_micro_batch_size", None)
            arr.ref.ppo_micro_batch_size_per_gpu = arr.ref.pop("log_prob_micro_batch_size_per_gpu", None)
            arr.ref.use_dynamic_bsz = arr.ref.pop("log_prob_use_dynamic_bsz", False)
            arr.ref.ppo_max_token_len_per_gpu = arr.ref.pop("log_prob_max_token_len_per_gpu", None)
        omega_conf_to_dataclass(arr.ref)
    rollout = omega_conf_to_dataclass(arr.rollout)
    omega_conf_to_dataclass(arr.rollout.checkpoint_engine)
    model = "model not loaded (fix the checks above first)"
    if check_model:
        try:
            omega_conf_to_dataclass(arr.model)  # reads the HF config and tokenizer from the model folder
        except Exception as exc:  # hydra wraps the loader's error in InstantiationException: one line, no traceback
            cause = exc.__cause__ or exc
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise ConfigError(f"actor_rollout_ref.model.path={arr.model.path}: verl's model config does not load "
                              f"({type(cause).__name__}: {first})") from None
        model = "model config and tokenizer load"
    n = validate.replicas(config)
    return (f"{n} rollout replica(s) = {config.trainer.nnodes} node(s) x {config.trainer.n_gpus_per_node} GPUs / "
            f"(TP {rollout.tensor_model_parallel_size} x DP {rollout.data_parallel_size} x "
            f"PP {rollout.pipeline_model_parallel_size}); {model}")
