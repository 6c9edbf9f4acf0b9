"""Config checks that run before Ray starts or any model loads, each failing with a message that says how to fix it.

This module holds the checks that look across verl's tree, at files and at the reward function; each key of this
package's own nodes (randopt.*, es.*) is typed and checked by its dataclass in randopt_verl/config/schema.py.
`check(config)` runs both; randopt_verl.preflight runs it (with verl's own checks) for `randopt_verl.main`,
`randopt-verl doctor` and `inprocess`, and the trainers run it again in verl's TaskRunner (so the stock
`python -m verl.trainer.main_ppo --config-name randopt_ppo` entry point gets the same checks before `_setup`).
`absolutize(config)` turns relative file paths absolute: verl's Ray workers do not run in the caller's directory.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict


from randopt_verl.config.errors import ConfigError

__all__ = ["ConfigError", "absolutize", "check", "replicas"]

REQUIRED_COLUMNS = ("prompt", "data_source", "reward_model")


def _files(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value]
    return [str(value)]


def absolutize(config: DictConfig) -> None:
    """Make data, model and reward paths absolute against the current directory (when they exist there)."""

    def fix(p: str) -> str:
        if p and not os.path.isabs(p) and "://" not in p and os.path.exists(p):
            return os.path.abspath(p)
        return p

    with open_dict(config):
        for key in ("train_files", "val_files"):
            files = _files(config.data.get(key))
            if files:
                fixed = [fix(f) for f in files]
                config.data[key] = fixed if isinstance(config.data[key], (list, ListConfig)) else fixed[0]
        model = config.actor_rollout_ref.model
        model.path = fix(str(model.path))
        if model.get("tokenizer_path"):
            model.tokenizer_path = fix(str(model.tokenizer_path))
        crf = config.reward.custom_reward_function
        if crf.get("path"):
            crf.path = fix(str(crf.path))
        # outputs: absolute against the caller's directory whether or not they exist yet
        config.trainer.default_local_dir = os.path.abspath(str(config.trainer.default_local_dir))
        for node in ("randopt", "es"):
            if config.get(node) is not None and config[node].get("run_dir") is not None:
                config[node].run_dir = os.path.abspath(str(config[node].run_dir))


def steps(config: DictConfig, *, check_files: bool = True) -> list[tuple[str, Callable[[], None]]]:
    """The checks of `check`, named, in order (randopt-verl doctor prints one line per step)."""
    _check_trainer_node(config)  # every other step reads verl's trainer node
    mode = config.trainer.v1.trainer_mode
    out = []
    if check_files:
        train = "selection set" if mode in ("randopt", "es") else "training data"
        out += [
            ("model folder (actor_rollout_ref.model.path)", lambda: _check_model(config)),
            (f"{train} (data.train_files)", lambda: _check_data(config, "train_files", train)),
            ("test set (data.val_files)", lambda: _check_data(config, "val_files", "test set")),
            ("reward function imports (reward.custom_reward_function)", lambda: _check_reward(config)),
        ]
        if mode not in ("randopt", "es"):
            out.append(("training steps (data.train_batch_size, trainer.total_epochs)", lambda: _check_steps(config)))
    out.append(("rollout backend and replicas (actor_rollout_ref.rollout)", lambda: _check_rollout(config)))
    out.append(("reward time limit (reward_guard)", lambda: _check_reward_guard(config)))
    if mode == "randopt":
        out.append(("randopt.* (RandOptConfig) and the keys it fixes", lambda: _check_randopt(config)))
    elif mode == "es":
        out.append(("es.* (ESConfig) and the keys it fixes", lambda: _check_es(config)))
    return out


def check(config: DictConfig, *, check_files: bool = True) -> None:
    """Raise ConfigError (its message names the key and the fix) at the first check that fails."""
    for _, step in steps(config, check_files=check_files):
        step()


def _check_trainer_node(config: DictConfig) -> None:
    node = config.get("trainer")
    if not isinstance(node, DictConfig):
        raise ConfigError(
            f"`trainer` is {node!r}, not verl's trainer config: `trainer=<name>` replaced the whole node. Run "
            "`python -m randopt_verl.main trainer=<name> ...` or add `--config-name randopt_ppo` to verl's "
            "entry point, which make trainer=randopt|es|grpo a config group."
        )


def _check_model(config: DictConfig) -> None:
    path = str(config.actor_rollout_ref.model.path)
    looks_local = path.startswith((".", "/", "~")) or os.sep in path.strip("/").split("/", 1)[-1]
    if os.path.isdir(path):
        if not (Path(path) / "config.json").exists():
            raise ConfigError(f"actor_rollout_ref.model.path={path} has no config.json: point it at a Hugging Face "
                              "model folder (save_pretrained output)")
    elif looks_local or os.path.exists(path):
        raise ConfigError(
            f"actor_rollout_ref.model.path={path} does not exist. Pass a local model folder; for the embedded "
            "default model run `python -m randopt_verl.assets.embedded` and use the path it prints."
        )
    else:
        _check_hub_model(path)


def _check_hub_model(repo_id: str) -> None:
    """A Hugging Face model id (verl downloads it when it loads the model): fine when its config.json is in the local
    cache or the hub answers. Otherwise one line with the fix now, before anything loads: without network
    transformers retries for over a minute, then fails inside verl's model config with a traceback."""
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # huggingface_hub's HFValidationError: not a repo id either
        raise ConfigError(f"actor_rollout_ref.model.path={repo_id} is neither a local folder nor a Hugging Face model "
                          "id (owner/name): pass a local model folder") from None
    if isinstance(cached, str):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not offline and _reachable(constants.ENDPOINT):
        return
    why = "HF_HUB_OFFLINE is set" if offline else f"{constants.ENDPOINT} cannot be reached from this machine"
    raise ConfigError(
        f"actor_rollout_ref.model.path={repo_id} is a Hugging Face model id that is not in the local cache "
        f"({constants.HF_HUB_CACHE}) and {why}: download it where there is network (`hf download {repo_id} "
        f"--local-dir DIR`), copy DIR here and pass actor_rollout_ref.model.path=DIR (or fill HF_HOME's cache and "
        "set HF_HUB_OFFLINE=1)")


def _reachable(url: str, timeout_s: float = 5.0) -> bool:
    """Whether a TCP connection to the URL's host opens within `timeout_s` (no request is sent)."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout_s):
            return True
    except OSError:
        return False


def model_config_json(config: DictConfig) -> Optional[dict]:
    """The model's config.json (a local folder's, or a hub id's from the local cache), None when neither is here;
    reads no network."""
    import json

    path = str(config.actor_rollout_ref.model.path)
    file = Path(path) / "config.json"
    if not file.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(path, "config.json")
        except ValueError:
            return None
        if not isinstance(cached, str):
            return None
        file = Path(cached)
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return None


def _check_data(config: DictConfig, key: str, what: str) -> None:
    files = _files(config.data.get(key))
    if not files:
        raise ConfigError(f"data.{key} is not set: pass the {what} as a verl-format parquet file "
                          "(scripts/make_countdown.py or scripts/convert_dataset.py write one)")
    import pyarrow.parquet as pq

    for f in files:
        if not os.path.exists(f):
            raise ConfigError(f"data.{key}={f} does not exist (relative paths are taken from the current "
                              "directory; scripts/make_countdown.py writes example data)")
        try:
            schema = pq.read_schema(f)
        except Exception as exc:
            raise ConfigError(f"data.{key}={f} is not a readable parquet file ({exc})") from exc
        missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
        if missing:
            raise ConfigError(
                f"data.{key}={f} lacks column(s) {missing} (it has {schema.names}). verl rows need "
                "data_source, prompt (chat messages) and reward_model{ground_truth}: convert with "
                "scripts/convert_dataset.py"
            )


def _check_steps(config: DictConfig) -> None:
    """verl's trainer loop runs len(train_files) // data.train_batch_size steps per epoch (drop_last) and stops after
    trainer.total_epochs epochs even when trainer.total_training_steps asks for more."""
    import pyarrow.parquet as pq

    rows = sum(pq.read_metadata(f).num_rows for f in _files(config.data.train_files))
    batch = int(config.data.train_batch_size)
    per_epoch = rows // batch
    if per_epoch == 0:
        raise ConfigError(f"data.train_batch_size={batch} exceeds the {rows} rows of data.train_files: verl would run "
                          f"no training step; set data.train_batch_size <= {rows}")
    steps = config.trainer.get("total_training_steps")
    epochs = int(config.trainer.total_epochs)
    if steps is not None and per_epoch * epochs < int(steps):
        need = -(-int(steps) // per_epoch)
        raise ConfigError(f"trainer.total_training_steps={steps} needs {need} epochs of {per_epoch} steps ({rows} rows "
                          f"/ data.train_batch_size={batch}) but trainer.total_epochs={epochs}: verl stops at "
                          f"{per_epoch * epochs} steps; set trainer.total_epochs={need}")


def _check_reward_guard(config: DictConfig) -> None:
    # checked here, before Ray starts; otherwise a bad value would surface only when a reward worker starts
    from randopt_verl import reward_guard

    try:
        reward_guard.check(config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_reward(config: DictConfig) -> None:
    crf = config.reward.custom_reward_function
    path = crf.get("path")
    if not path:
        return  # verl's default_compute_score dispatches on data_source
    if path.startswith("pkg://"):
        module = path[len("pkg://"):]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"reward.custom_reward_function.path={path}: module {module} is not importable")
        return
    if not os.path.exists(path):
        raise ConfigError(f"reward.custom_reward_function.path={path} does not exist (reward_fns/ holds the "
                          "bundled ones, e.g. reward_fns/countdown.py)")
    name = crf.get("name") or "compute_score"
    spec = importlib.util.spec_from_file_location("_randopt_verl_reward_check", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"reward.custom_reward_function.path={path} fails to import: {exc!r}") from exc
    if not callable(getattr(module, name, None)):
        raise ConfigError(f"reward.custom_reward_function.path={path} defines no function {name!r}; set "
                          "reward.custom_reward_function.name to the scoring function's name")


def call_reward_on_one_row(config: DictConfig) -> float:
    """Load the reward function as verl's reward loop does and score the first test row, answered with its own
    ground truth; returns the score. A function that raises or returns no number fails here, not mid-run."""
    import asyncio
    import inspect

    import pyarrow.parquet as pq

    files = _files(config.data.get("val_files"))
    row = pq.read_table(files[0]).slice(0, 1).to_pylist()[0]
    ground_truth = (row.get("reward_model") or {}).get("ground_truth")
    crf = config.reward.custom_reward_function
    if crf.get("path"):
        from verl.trainer.ppo.reward import get_custom_reward_fn

        fn, what = get_custom_reward_fn(config), f"reward.custom_reward_function.path={crf.path}"
    else:
        from verl.utils.reward_score import default_compute_score as fn

        what = "verl's default_compute_score (reward.custom_reward_function.path is not set)"
    # the keyword arguments verl's naive reward manager passes
    extra_info = {**dict(row.get("extra_info") or {}), "num_turns": None, "rollout_reward_scores": {}}
    try:
        out = fn(data_source=row["data_source"], solution_str=str(ground_truth), ground_truth=ground_truth,
                 extra_info=extra_info)
        if inspect.isawaitable(out):
            out = asyncio.run(out)
    except Exception as exc:
        fix = ("point reward.custom_reward_function.path at a scoring function for it (reward_fns/ holds examples)"
               if not crf.get("path") else "fix the function or the data")
        raise ConfigError(f"{what} raised {type(exc).__name__}: {exc} on the first row of {files[0]} "
                          f"(data_source={row['data_source']!r}): {fix}") from None
    score = out.get("score") if isinstance(out, dict) else out
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise ConfigError(f"{what} returned {out!r} on the first row of {files[0]}: it must return a number or a "
                          "dict with a numeric 'score'")
    return float(score)


def _check_rollout(config: DictConfig) -> None:
    rollout = config.actor_rollout_ref.rollout
    if OmegaConf.is_missing(rollout, "name"):
        raise ConfigError("actor_rollout_ref.rollout.name is not set: pass hardware=gpu (vLLM) or hardware=cpu (hf)")
    if rollout.name == "hf":
        if rollout.tensor_model_parallel_size != 1:
            raise ConfigError("the hf rollout runs one process per replica: set "
                              "actor_rollout_ref.rollout.tensor_model_parallel_size=1")
        # the engine's own lists: a new engine option or dtype needs no change here
        from randopt_verl.cpu.hf_engine import HFOptions, resolve_dtype

        try:
            resolve_dtype(rollout.get("dtype", "auto"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            HFOptions.of(rollout)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
    if rollout.name == "vllm" and str(config.trainer.device) == "cpu":
        _check_vllm_on_cpu(rollout)
    _check_replicas(config)
    _check_tp_heads(config)


def _check_tp_heads(config: DictConfig) -> None:
    """vLLM splits attention heads over the tensor-parallel ranks of a replica, and refuses (after the model loaded)
    a TP size that does not divide the attention heads, or the KV heads (more KV heads than ranks: each rank holds
    KV heads // TP of them) or is not a multiple of them (fewer: each KV head is replicated TP // KV heads times)."""
    tp = int(config.actor_rollout_ref.rollout.tensor_model_parallel_size)
    hf = model_config_json(config) if tp > 1 else None
    if hf is None:
        return
    hf = hf.get("text_config") or hf  # multimodal configs nest the language model's
    heads = hf.get("num_attention_heads")
    if not heads:
        return
    kv = hf.get("num_key_value_heads") or heads
    key = "actor_rollout_ref.rollout.tensor_model_parallel_size"
    fits = [d for d in range(1, heads + 1) if heads % d == 0 and (kv % d == 0 if kv >= d else d % kv == 0)]
    if heads % tp:
        raise ConfigError(f"{key}={tp} does not divide the model's {heads} attention heads (num_attention_heads in "
                          f"its config.json; vLLM refuses it after loading the model): use one of {fits}")
    if (kv % tp if kv >= tp else tp % kv):
        raise ConfigError(f"{key}={tp} and the model's {kv} KV heads (num_key_value_heads): vLLM needs TP to divide "
                          f"them, or to be a multiple of them when TP is larger: use one of {fits}")


def _check_vllm_on_cpu(rollout) -> None:
    """vLLM on the host runs through vLLM's CPU build (randopt_verl/cpu/vllm_cpu.py), one process per replica."""
    if int(rollout.tensor_model_parallel_size) != 1:
        raise ConfigError("vLLM on the CPU runs one process per replica here (the tested layout): set "
                          "actor_rollout_ref.rollout.tensor_model_parallel_size=1")
    if rollout.get("enable_sleep_mode", True) or rollout.get("free_cache_engine", True):
        raise ConfigError("vLLM's CPU backend has no sleep mode: set actor_rollout_ref.rollout.enable_sleep_mode=false "
                          "actor_rollout_ref.rollout.free_cache_engine=false (hardware=cpu sets both)")


def replicas(config: DictConfig) -> int:
    """Rollout replicas verl builds: all GPUs / (tensor * data * pipeline parallel size of one replica)."""
    rollout = config.actor_rollout_ref.rollout
    gpus = int(config.trainer.n_gpus_per_node) * int(config.trainer.nnodes)
    per_replica = (int(rollout.tensor_model_parallel_size) * int(rollout.get("data_parallel_size", 1) or 1)
                   * int(rollout.get("pipeline_model_parallel_size", 1) or 1))
    return gpus // per_replica if per_replica and gpus % per_replica == 0 else 0


def _check_replicas(config: DictConfig) -> None:
    rollout = config.actor_rollout_ref.rollout
    gpus = int(config.trainer.n_gpus_per_node) * int(config.trainer.nnodes)
    tp = int(rollout.tensor_model_parallel_size)
    dp = int(rollout.get("data_parallel_size", 1) or 1)
    pp = int(rollout.get("pipeline_model_parallel_size", 1) or 1)
    if gpus < 1:
        raise ConfigError(f"trainer.n_gpus_per_node * trainer.nnodes = {gpus}: at least one GPU (CPU: Ray slot)")
    if min(tp, dp, pp) < 1 or gpus % (tp * dp * pp):
        fits = [d for d in range(1, gpus + 1) if gpus % (d * dp * pp) == 0]
        raise ConfigError(
            f"actor_rollout_ref.rollout.tensor_model_parallel_size={tp} (x data_parallel_size={dp} x "
            f"pipeline_model_parallel_size={pp}) does not divide the {gpus} GPUs (trainer.n_gpus_per_node x "
            f"trainer.nnodes): every rollout replica needs the same GPUs; use one of {fits}")


def _check_greedy_rollout(config: DictConfig, mode: str) -> None:
    """randopt and es answer greedily (harness.greedy); the rollout sampling keys must say so, not mislead."""
    rollout = config.actor_rollout_ref.rollout
    want = {"n": 1, "temperature": 0, "do_sample": False, "top_k": -1, "top_p": 1,
            "val_kwargs.n": 1, "val_kwargs.temperature": 0, "val_kwargs.do_sample": False}
    for key, value in want.items():
        got = OmegaConf.select(rollout, key)
        if got is not None and got != value:
            extra = (" Base self-consistency samples take randopt.controls.temperature." if mode == "randopt"
                     else "")
            raise ConfigError(
                f"actor_rollout_ref.rollout.{key}={got!r} has no effect under trainer={mode}: every candidate "
                f"answers greedily, once per prompt. Remove the override (it must stay {value!r}).{extra}")


def _check_randopt(config: DictConfig) -> None:
    from randopt_verl.config.schema import typed  # imports verl: not at module level (see config/errors.py)

    ro = typed(config, "randopt")
    if ro.perturb_at == "server" and config.actor_rollout_ref.rollout.name != "hf":
        raise ConfigError("randopt.perturb_at=server needs the hf rollout; vLLM replicas take randopt.perturb_at=sync "
                          "(or auto)")
    if config.trainer.get("val_before_train") is False:
        raise ConfigError("trainer.val_before_train=false has no effect under trainer=randopt: the base model is "
                          "always scored (the reference row of the results table). Remove the override.")
    _check_fsdp2(config, "randopt", "perturbs the weight stream by HF parameter name (perturb-at-sync)")
    _check_greedy_rollout(config, "randopt")


def _check_es(config: DictConfig) -> None:
    from randopt_verl.config.schema import typed

    typed(config, "es")
    _check_fsdp2(config, "es", "updates the FSDP parameters by HF name and shard offset")
    _check_greedy_rollout(config, "es")


def _check_fsdp2(config: DictConfig, mode: str, why: str) -> None:
    """SearchWorker refuses FSDP1 (flat parameters hide the HF names) at the first weight sync; refuse it here."""
    strategy = config.actor_rollout_ref.actor.strategy
    if strategy != "fsdp2":
        raise ConfigError(f"actor_rollout_ref.actor.strategy={strategy}: trainer={mode} {why}, which needs FSDP2 "
                          "(FSDP1 exposes flat parameters); set actor_rollout_ref.actor.strategy=fsdp2")
