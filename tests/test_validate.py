"""Config mistakes stop the run before any model loads, with a message that says how to fix it."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from randopt_verl.inprocess import compose
from randopt_verl.validate import ConfigError

ROOT = Path(__file__).resolve().parents[1]
REWARD = str(ROOT / "tests" / "fixtures" / "toy_reward.py")


@pytest.fixture
def base(tiny_model, toy_data, tmp_path):
    return ["hardware=cpu", f"actor_rollout_ref.model.path={tiny_model}", f"data.train_files={toy_data['train']}",
            f"data.val_files={toy_data['test']}", f"reward.custom_reward_function.path={REWARD}",
            f"trainer.default_local_dir={tmp_path / 'run'}", "data.train_batch_size=4"]


def test_valid_configs_compose_for_all_three_trainers(base):
    for name, mode in (("randopt", "randopt"), ("es", "es"), ("grpo", "grpo")):
        config = compose(base + [f"trainer={name}"])
        assert config.trainer.v1.trainer_mode == mode
        assert config.actor_rollout_ref.rollout.name == "hf"  # the CPU preset applied
        assert isinstance(config.trainer.total_epochs, int)  # verl's trainer node is intact
    # the FSDP engines read their precision from these dataclasses: bf16 compute is ~15x slower on a CPU
    from verl.utils.config import omega_conf_to_dataclass
    for node in (config.actor_rollout_ref.actor.fsdp_config, config.actor_rollout_ref.ref.fsdp_config):
        assert omega_conf_to_dataclass(node).mixed_precision["param_dtype"] == "fp32"


@pytest.mark.parametrize("override, message", [
    ("randopt.top_k=600", "randopt.top_k=600 exceeds randopt.population_size=500"),
    ("randopt.sigmas=[0.0]", "must be > 0"),
    ("randopt.sigmas=[]", "non-empty list"),
    ("randopt.ensemble_ks=[1,80]", "every maj@k needs k <= K"),
    ("+randopt.popsize=3", "unknown key randopt.popsize"),
    ("+randopt.controls.temprature=0.5", "unknown key randopt.controls.temprature (did you mean "
                                         "randopt.controls.temperature?)"),
    ("randopt.population_size=abc", "randopt.population_size='abc' must be an integer"),
    ("randopt.param_filter.include=mlp", "must be a list of regexes"),
    ("randopt.controls.temperature=0", "randopt.controls.temperature=0.0 must be > 0"),
    ("actor_rollout_ref.rollout.temperature=0.7", "rollout.temperature=0.7 has no effect under trainer=randopt"),
    ("actor_rollout_ref.rollout.val_kwargs.n=4", "rollout.val_kwargs.n=4 has no effect under trainer=randopt"),
    ("trainer.val_before_train=false", "trainer.val_before_train=false has no effect under trainer=randopt"),
    ("trainer.n_gpus_per_node=3", "data.train_batch_size x actor_rollout_ref.rollout.n = 4 is not divisible"),

    ("randopt.perturb_at=gpu", "use auto, server or sync"),
    ("randopt.param_filter.include=['(']", "not a valid regex"),
    ("randopt.controls.population=4", "smaller than max(randopt.ensemble_ks)"),
    ("randopt.seed=-1", "integer >= 0"),
    ("randopt.selection.strategy=race", "randopt.selection.strategy='race': use full or halving"),
    ("randopt.selection.block_size=0", "randopt.selection.block_size=0 must be a positive integer"),
    ("randopt.selection.z=-1", "randopt.selection.z=-1.0 must be >= 0"),
    ("+randopt.selection.blocksize=8", "unknown key randopt.selection.blocksize (did you mean "
                                       "randopt.selection.block_size?)"),
    ("randopt.sigma_choice=best", "randopt.sigma_choice='best': use mixed or dev"),
    ("randopt.sigma_choice=dev randopt.sigmas=[0.001]", "randopt.sigma_choice=dev chooses among randopt.sigmas"),
    ("randopt.sigma_choice=dev randopt.dev_size=200", "randopt.dev_size=200 leaves no selection rows"),
    ("randopt.accuracy_vs_n=true randopt.selection.strategy=halving",
     "randopt.accuracy_vs_n=true needs randopt.selection.strategy=full"),
    ("randopt.selection.strategy=halving randopt.selection.block_size=200",
     "randopt.selection.block_size=200 must be below randopt.selection_size=200"),
    ("+actor_rollout_ref.rollout.engine_kwargs.hf.batch=3", "engine_kwargs.hf has unknown key(s) ['batch']"),
    ("reward_guard.timeout_s=-1", "reward_guard.timeout_s must be a number of seconds > 0"),
    ("reward_guard.processes=0", "reward_guard.processes must be an integer >= 1"),
])
def test_randopt_key_errors(base, override, message):
    with pytest.raises(ConfigError) as err:
        compose(base + ["trainer=randopt", *override.split(" ")])
    assert message in str(err.value)
    assert "\n" not in str(err.value)  # one line


@pytest.mark.parametrize("override, message", [
    ("es.population_size=1", "at least two members"),
    ("es.alpha=0", "must be > 0"),
    ("actor_rollout_ref.actor.strategy=fsdp", "set actor_rollout_ref.actor.strategy=fsdp2"),
    ("actor_rollout_ref.rollout.do_sample=true", "rollout.do_sample=True has no effect under trainer=es"),
    ("+es.sigmas=[0.1]", "unknown key es.sigmas (did you mean es.sigma?)"),
])
def test_es_key_errors(base, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose(base + ["trainer=es", override])


def test_file_errors_name_the_fix(base, tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*make_countdown"):
        compose(base + ["trainer=randopt", f"data.train_files={tmp_path / 'nope.parquet'}"])
    bad = tmp_path / "bad.parquet"
    pd.DataFrame([{"question": "1+1", "answer": "2"}]).to_parquet(bad)
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['prompt', 'data_source', 'reward_model'\].*convert"):
        compose(base + ["trainer=randopt", f"data.val_files={bad}"])
    broken = tmp_path / "broken_reward.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ConfigError, match="fails to import"):
        compose(base + ["trainer=randopt", f"reward.custom_reward_function.path={broken}"])
    with pytest.raises(ConfigError, match="defines no function 'score_it'"):
        compose(base + ["trainer=randopt", "reward.custom_reward_function.name=score_it"])
    with pytest.raises(ConfigError, match="randopt_verl.assets.embedded"):
        compose(base + ["trainer=randopt", f"actor_rollout_ref.model.path={tmp_path / 'no_model'}"])


def test_misspelt_key_names_the_closest_known_key(base):
    with pytest.raises(ConfigError, match=r"unknown key randopt.populaton_size \(did you mean randopt.population_size"):
        compose(base + ["trainer=randopt", "randopt.populaton_size=5"])
    with pytest.raises(ConfigError, match=r"trainer=randopt2 is not a preset; choose one of es, grpo, randopt"):
        compose(base + ["trainer=randopt2"])


def test_grpo_steps_that_verl_would_never_run_are_refused(base):
    with pytest.raises(ConfigError, match=r"data.train_batch_size=64 exceeds the 32 rows.*<= 32"):
        compose(base + ["trainer=grpo", "data.train_batch_size=64"])
    # 32 rows / 4 = 8 steps per epoch; 30 epochs (verl's default) stop at 240
    with pytest.raises(ConfigError, match=r"verl stops at 240 steps; set trainer.total_epochs=38"):
        compose(base + ["trainer=grpo", "trainer.total_training_steps=300"])


def test_tp_that_does_not_divide_the_gpus_is_refused(base):
    with pytest.raises(ConfigError, match=r"tensor_model_parallel_size=3 .* does not divide the 8 GPUs.*\[1, 2, 4, 8\]"):
        compose(base + ["trainer=randopt", "hardware=gpu", "trainer.device=cuda", "trainer.n_gpus_per_node=8",
                        "actor_rollout_ref.rollout.tensor_model_parallel_size=3"])


def test_relative_paths_become_absolute(base, toy_data, monkeypatch):
    monkeypatch.chdir(Path(toy_data["train"]).parent)
    config = compose(base + ["trainer=randopt", "data.train_files=train.parquet", "randopt.run_dir=out"])
    assert config.data.train_files == toy_data["train"]
    assert Path(config.randopt.run_dir).is_absolute()


def test_trainer_node_replaced_by_a_string_is_refused():
    from omegaconf import OmegaConf

    from randopt_verl.validate import check

    with pytest.raises(ConfigError, match="replaced the whole node.*--config-name randopt_ppo"):
        check(OmegaConf.create({"trainer": "randopt"}), check_files=False)
