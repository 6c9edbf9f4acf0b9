"""Config checks that run before Ray starts or any model loads, each failing with a message that says how to fix it.

`check(config)` is called by `randopt_verl.main` on the driver, and again by the randopt/es trainers (so the stock
`python -m verl.trainer.main_ppo --config-name randopt_ppo` entry point gets the same checks before `_setup`).
`absolutize(config)` turns relative file paths absolute: verl's Ray workers do not run in the caller's directory.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict


class ConfigError(ValueError):
    """A config value that cannot work; the message says what to change."""


RANDOPT_KEYS = {
    "population_size", "sigmas", "seed", "top_k", "ensemble_ks", "selection_size", "test_size", "run_dir",
    "perturb_at", "param_filter", "controls", "plots", "consolidate",
}
CONTROLS_KEYS = {"random_k_draws", "population", "base_self_consistency", "temperature"}
ES_KEYS = {"population_size", "sigma", "alpha", "seed", "selection_size", "test_size", "run_dir", "param_filter"}
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


def check(config: DictConfig, *, check_files: bool = True) -> None:
    _check_trainer_node(config)
    mode = config.trainer.v1.trainer_mode
    if check_files:
        _check_model(config)
        _check_data(config, "train_files", "selection set" if mode in ("randopt", "es") else "training data")
        _check_data(config, "val_files", "test set")
        _check_reward(config)
    _check_rollout(config)
    if mode == "randopt":
        _check_randopt(config)
    elif mode == "es":
        _check_es(config)


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


def _check_rollout(config: DictConfig) -> None:
    rollout = config.actor_rollout_ref.rollout
    if rollout.name == "hf":
        if rollout.tensor_model_parallel_size != 1:
            raise ConfigError("the hf rollout runs one process per replica: set "
                              "actor_rollout_ref.rollout.tensor_model_parallel_size=1")
        hf = (rollout.get("engine_kwargs") or {}).get("hf") or {}
        unknown = sorted(set(hf) - {"max_batch_size", "threads", "batch_window_s"})
        if unknown:
            raise ConfigError(f"actor_rollout_ref.rollout.engine_kwargs.hf has unknown key(s) {unknown}; known: "
                              "max_batch_size, threads, batch_window_s")
    if rollout.name == "vllm" and str(config.trainer.device) == "cpu":
        raise ConfigError("vLLM needs a GPU: on a CPU machine use hardware=cpu (rollout.name=hf)")


def _unknown(node: DictConfig, known: set[str], prefix: str) -> None:
    extra = sorted(set(node.keys()) - known)
    if extra:
        raise ConfigError(f"unknown key(s) {[prefix + '.' + k for k in extra]}; known: {sorted(known)}")


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer")
    return value


def _check_filter(node: DictConfig | None, prefix: str) -> None:
    if node is None:
        return
    _unknown(node, {"include", "exclude"}, prefix)
    for key in ("include", "exclude"):
        patterns = node.get(key)
        if patterns is None:
            continue
        if isinstance(patterns, str):
            raise ConfigError(f"{prefix}.{key} must be a list of regexes, e.g. {prefix}.{key}=['mlp']")
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ConfigError(f"{prefix}.{key}: {p!r} is not a valid regex ({exc})") from exc


def _check_sigma(value: Any, key: str) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} must be a number") from None
    if not s > 0 or s != s:
        raise ConfigError(f"{key}={value!r} must be > 0 (typical values 5e-4 .. 3e-3)")
    return s


def _check_sizes(node: DictConfig, prefix: str) -> None:
    for key in ("selection_size", "test_size"):
        if node.get(key) is not None:
            _positive_int(node.get(key), f"{prefix}.{key}")


def _check_randopt(config: DictConfig) -> None:
    ro = config.get("randopt")
    if ro is None:
        raise ConfigError("trainer.v1.trainer_mode=randopt needs the randopt node: use trainer=randopt")
    _unknown(ro, RANDOPT_KEYS, "randopt")
    n = _positive_int(ro.population_size, "randopt.population_size")
    sigmas = ro.sigmas
    if not isinstance(sigmas, (list, ListConfig)) or not sigmas:
        raise ConfigError("randopt.sigmas must be a non-empty list, e.g. randopt.sigmas=[0.001]")
    for s in sigmas:
        _check_sigma(s, "randopt.sigmas[]")
    if isinstance(ro.seed, bool) or not isinstance(ro.seed, int) or ro.seed < 0:
        raise ConfigError(f"randopt.seed={ro.seed!r} must be an integer >= 0")
    k = _positive_int(ro.top_k, "randopt.top_k")
    if k > n:
        raise ConfigError(f"randopt.top_k={k} exceeds randopt.population_size={n}: keep K <= N")
    ks = list(ro.ensemble_ks)
    if not ks:
        raise ConfigError("randopt.ensemble_ks must list at least one k, e.g. [1, 4]")
    for kk in ks:
        _positive_int(kk, "randopt.ensemble_ks[]")
        if kk > k:
            raise ConfigError(f"randopt.ensemble_ks has {kk} > randopt.top_k={k}: every maj@k needs k <= K")
    _check_sizes(ro, "randopt")
    if ro.perturb_at not in ("auto", "server", "sync"):
        raise ConfigError(f"randopt.perturb_at={ro.perturb_at!r}: use auto, server or sync")
    if ro.perturb_at == "server" and config.actor_rollout_ref.rollout.name != "hf":
        raise ConfigError("randopt.perturb_at=server needs the hf rollout; vLLM replicas take perturb_at=sync")
    _check_filter(ro.get("param_filter"), "randopt.param_filter")
    from randopt_verl.trainers.consolidate import KEYS as CONSOLIDATE_KEYS, settings

    if ro.get("consolidate") is not None:
        _unknown(ro.consolidate, set(CONSOLIDATE_KEYS), "randopt.consolidate")
    try:
        merge = settings(ro)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if merge.enabled and merge.over == "top_k" and k < 2:
        raise ConfigError("randopt.consolidate needs at least 2 members: raise randopt.top_k or set "
                          "randopt.consolidate.over=population")
    c = ro.get("controls")
    if c is not None:
        _unknown(c, CONTROLS_KEYS, "randopt.controls")
        if not isinstance(c.random_k_draws, int) or c.random_k_draws < 0:
            raise ConfigError(f"randopt.controls.random_k_draws={c.random_k_draws!r} must be an integer >= 0")
        if c.population is not None:
            p = _positive_int(c.population, "randopt.controls.population")
            if p > n:
                raise ConfigError(f"randopt.controls.population={p} exceeds randopt.population_size={n}")
            if p < max(ks) and c.random_k_draws > 0:
                raise ConfigError(f"randopt.controls.population={p} is smaller than max(randopt.ensemble_ks)="
                                  f"{max(ks)}: random-k needs at least k candidates")
        if float(c.temperature) <= 0 and c.base_self_consistency:
            raise ConfigError("randopt.controls.temperature must be > 0 for base self-consistency sampling")


def _check_es(config: DictConfig) -> None:
    es = config.get("es")
    if es is None:
        raise ConfigError("trainer.v1.trainer_mode=es needs the es node: use trainer=es")
    _unknown(es, ES_KEYS, "es")
    n = _positive_int(es.population_size, "es.population_size")
    if n < 2:
        raise ConfigError("es.population_size must be >= 2: z-scores need at least two members")
    _check_sigma(es.sigma, "es.sigma")
    _check_sigma(es.alpha, "es.alpha")
    _check_sizes(es, "es")
    _check_filter(es.get("param_filter"), "es.param_filter")
    if config.actor_rollout_ref.actor.strategy != "fsdp2":
        raise ConfigError("trainer=es updates FSDP2 parameters by name: set actor_rollout_ref.actor.strategy=fsdp2")


def to_container(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node
