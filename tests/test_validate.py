"""Config mistakes stop the run before any model loads, with a message that says how to fix it."""

from __future__ import annotations

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
            f"trainer.default_local_dir={tmp_path / 'run'}"]


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
    ("+randopt.popsize=3", "unknown key(s) ['randopt.popsize']"),
    ("randopt.perturb_at=gpu", "use auto, server or sync"),
    ("randopt.param_filter.include=['(']", "not a valid regex"),
    ("randopt.controls.population=4", "smaller than max(randopt.ensemble_ks)"),
    ("randopt.seed=-1", "integer >= 0"),
    ("+actor_rollout_ref.rollout.engine_kwargs.hf.batch=3", "engine_kwargs.hf has unknown key(s) ['batch']"),
])
def test_randopt_key_errors(base, override, message):
    with pytest.raises(ConfigError) as err:
        compose(base + ["trainer=randopt", override])
    assert message in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("es.population_size=1", "at least two members"),
    ("es.alpha=0", "must be > 0"),
    ("actor_rollout_ref.actor.strategy=fsdp", "set actor_rollout_ref.actor.strategy=fsdp2"),
])
def test_es_key_errors(base, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
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
