"""randopt_verl/reward_guard.py: a reward that hangs on one sample costs that sample (an error), not the run.

Exercised through verl 0.9.1's own loader (`get_custom_reward_fn`, as the plugin installs it) and its own
`NaiveRewardManager` (the object RewardLoopWorker delegates each sample to), without Ray."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from randopt_verl import reward_guard as rg

ROOT = Path(__file__).resolve().parents[1]

REWARD = textwrap.dedent(
    """
    import os, time

    def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
        if solution_str == "hang":        # sleeps forever (releases the GIL)
            while True:
                time.sleep(1)
        if solution_str == "spin":        # holds the GIL in one C call for minutes
            10 ** (10 ** 9)
        if solution_str == "boom":
            raise ValueError("boom on purpose")
        if solution_str == "die":
            os._exit(3)
        if solution_str == "pid":
            return {"score": 0.0, "pid": os.getpid()}
        ok = float(solution_str == ground_truth)
        return {"score": ok, "acc": ok, "pred": solution_str, "k": kwargs.get("k")}

    async def compute_score_async(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
        import asyncio
        if solution_str == "hang":
            await asyncio.sleep(3600)
        return 1.0
    """
)


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("reward") / "hanging_reward.py"
    path.write_text(REWARD)
    return str(path)


def config(path, name="compute_score", guard=None, **extra):
    cfg = {"reward": {"custom_reward_function": {"path": path, "name": name, "reward_kwargs": {"k": 7}},
                      "reward_manager": {"source": "register", "name": "naive"}}, **extra}
    if guard is not None:
        cfg["reward_guard"] = guard
    c = OmegaConf.create(cfg)
    OmegaConf.set_struct(c, True)  # as hydra hands it over
    return c


@pytest.fixture(scope="module")
def get_custom_reward_fn():
    from verl.trainer.ppo import reward as vr

    rg.install()  # the plugin has done it already when verl was imported; idempotent
    assert vr.get_custom_reward_fn.__wrapped__ is not None
    return vr.get_custom_reward_fn


def call(fn, response, gt="5"):
    return fn(data_source="x", solution_str=response, ground_truth=gt, extra_info={"index": 0})


def test_verl_still_calls_the_function_the_hook_wraps():
    rg._guard_hook()


def test_the_plugin_installs_the_hook_in_a_fresh_process():
    code = "from verl.trainer.ppo import reward as vr; print(getattr(vr.get_custom_reward_fn, '_randopt_guarded', False))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split()[-1] == "True", out.stderr[-2000:]


def test_settings_and_their_errors():
    assert rg.settings(OmegaConf.create({})) is None  # stock verl config: verl's function unchanged
    assert rg.settings(OmegaConf.create({"reward_guard": {"timeout_s": None}})) is None
    assert rg.settings(OmegaConf.create({"reward_guard": {"timeout_s": 2.5}})) == (2.5, 4)
    assert rg.settings(OmegaConf.create({"reward_guard": {"timeout_s": 3, "processes": 2}})) == (3.0, 2)
    for bad, match in [({"timeout_s": 0}, "timeout_s must be a number"), ({"timeout_s": "10"}, "timeout_s must"),
                       ({"timeout_s": True}, "timeout_s must"), ({"timeout_s": 1, "processes": 0}, "processes must"),
                       ({"timeout_s": 1, "processes": 1.5}, "processes must"),
                       ({"timeout": 1}, r"unknown key\(s\) \['reward_guard.timeout'\]")]:
        with pytest.raises(ValueError, match=match):
            rg.check(OmegaConf.create({"reward_guard": bad}))
    with pytest.raises(ValueError, match="must be a mapping"):
        rg.check(OmegaConf.create({"reward_guard": 5}))


def test_the_shipped_config_sets_a_limit():
    from hydra import compose, initialize_config_module

    with initialize_config_module("randopt_verl.config", version_base=None):
        cfg = compose("randopt_ppo", overrides=["trainer=randopt", "hardware=cpu"])
    assert rg.settings(cfg) == (float(cfg.reward_guard.timeout_s), int(cfg.reward_guard.processes))


def test_without_the_node_verls_function_is_returned(get_custom_reward_fn, reward_file):
    fn = get_custom_reward_fn(config(reward_file))
    assert not isinstance(fn, rg.GuardedReward)
    assert call(fn, "5") == {"score": 1.0, "acc": 1.0, "pred": "5", "k": 7}
    assert get_custom_reward_fn(config(reward_file, guard={"timeout_s": None})).func is fn.func


def test_a_hang_costs_one_sample_and_the_rest_are_scored(get_custom_reward_fn, reward_file):
    fn = get_custom_reward_fn(config(reward_file, guard={"timeout_s": 2, "processes": 3}))
    assert isinstance(fn, rg.GuardedReward)
    try:
        assert call(fn, "5") == {"score": 1.0, "acc": 1.0, "pred": "5", "k": 7}  # reward_kwargs applied
        responses = ["5", "hang", "6", "boom", "spin", "5", "die", "7", "5"]
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(len(responses)) as pool:  # verl's executor threads
            futures = [pool.submit(call, fn, r) for r in responses]
            outcomes = []
            for f in futures:
                try:
                    outcomes.append(f.result(timeout=60))
                except Exception as exc:
                    outcomes.append(exc)
        wall = time.monotonic() - t0
        by = dict(zip(range(len(responses)), outcomes))
        assert isinstance(by[1], rg.RewardTimeout) and "timeout_s=2" in str(by[1])
        assert isinstance(by[4], rg.RewardTimeout)  # holds the GIL: only a process boundary stops it
        assert isinstance(by[3], ValueError) and str(by[3]) == "boom on purpose"  # re-raised unchanged
        assert isinstance(by[6], rg.RewardProcessDied) and "exit code 3" in str(by[6])
        for i in (0, 2, 5, 7, 8):
            ok = float(responses[i] == "5")
            assert by[i] == {"score": ok, "acc": ok, "pred": responses[i], "k": 7}
        assert wall < 30, wall  # two limits of 2 s, three processes, not minutes
        # the same hanging input again: refused at once (the harness re-scores a chunk that raised one by one)
        t0 = time.monotonic()
        with pytest.raises(rg.RewardTimeout, match="same input timed out before"):
            call(fn, "hang")
        assert time.monotonic() - t0 < 1
        assert call(fn, "6", gt="6")["acc"] == 1.0  # the pool was refilled
        assert fn._count <= 3
    finally:
        fn.close()


def test_children_are_reused_and_bounded(get_custom_reward_fn, reward_file):
    fn = get_custom_reward_fn(config(reward_file, guard={"timeout_s": 5, "processes": 2}))
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            pids = {r["pid"] for r in pool.map(lambda _: call(fn, "pid"), range(40))}
        assert 1 <= len(pids) <= 2 and os.getpid() not in pids
    finally:
        fn.close()


def test_async_reward_gets_a_wait_for(get_custom_reward_fn, reward_file):
    import inspect

    fn = get_custom_reward_fn(config(reward_file, name="compute_score_async", guard={"timeout_s": 1}))
    assert inspect.iscoroutinefunction(fn)  # verl's managers await it in their loop
    assert asyncio.run(fn(data_source="x", solution_str="5", ground_truth="5", extra_info={})) == 1.0
    with pytest.raises(rg.RewardTimeout):
        asyncio.run(fn(data_source="x", solution_str="hang", ground_truth="5", extra_info={}))


class _Tokenizer:
    """Just what NaiveRewardManager uses: decode(ids) -> text. Token i is the i-th word below."""

    words = ["", "5", "hang", "6", "boom"]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.words[int(i)] for i in ids)


def _dataproto(token_ids: list[int]):
    from verl import DataProto

    n = len(token_ids)
    return DataProto.from_dict(
        tensors={"responses": torch.tensor([[t] for t in token_ids]), "attention_mask": torch.ones(n, 2, dtype=torch.long)},
        non_tensors={"data_source": np.array(["x"] * n, dtype=object),
                     "reward_model": np.array([{"ground_truth": "5"}] * n, dtype=object),
                     "extra_info": np.array([{"index": i} for i in range(n)], dtype=object)},
    )


def test_verls_reward_manager_records_the_hang_as_that_samples_error(reward_file):
    # the object RewardLoopWorker.compute_score delegates to, built by verl's load_reward_manager
    from verl.trainer.ppo.reward import load_reward_manager

    rg.install()
    manager = load_reward_manager(config(reward_file, guard={"timeout_s": 2, "processes": 2}), _Tokenizer())
    assert isinstance(manager.compute_score, rg.GuardedReward) and not manager.is_async_reward_score
    data = _dataproto([1, 2, 3, 1, 4])

    async def score_all():
        manager.loop = asyncio.get_running_loop()
        return await asyncio.gather(*(manager.run_single(data[i : i + 1]) for i in range(len(data))),
                                    return_exceptions=True)

    t0 = time.monotonic()
    try:
        out = asyncio.run(score_all())
    finally:
        manager.compute_score.close()
    assert time.monotonic() - t0 < 30
    assert isinstance(out[1], rg.RewardTimeout) and isinstance(out[4], ValueError)
    assert [o["reward_score"] for o in (out[0], out[2], out[3])] == [1.0, 0.0, 1.0]
    assert out[0]["reward_extra_info"]["pred"] == "5"


def test_overhead_per_call_is_small(get_custom_reward_fn):
    # the countdown reward (microseconds a call): in-process vs through a child, measured side by side
    path = str(ROOT / "reward_fns" / "countdown.py")
    raw = get_custom_reward_fn(config(path))
    guarded = get_custom_reward_fn(config(path, guard={"timeout_s": 10, "processes": 1}))
    args = {"data_source": "countdown", "solution_str": "x</think>\n<answer>3 * 8 * 1</answer>",
            "ground_truth": '{"target": 24, "numbers": [3, 8, 1]}', "extra_info": {}}
    try:
        assert guarded(**args) == raw(**args)
        n = 300
        t0 = time.perf_counter()
        for _ in range(n):
            raw(**args)
        t_raw = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            guarded(**args)
        t_guarded = (time.perf_counter() - t0) / n
    finally:
        guarded.close()
    print(f"\nreward call: in-process {t_raw * 1e6:.0f} us, guarded {t_guarded * 1e6:.0f} us "
          f"(+{(t_guarded - t_raw) * 1e6:.0f} us; loaded shared machine)")
    assert t_guarded - t_raw < 5e-3  # a pipe round trip, not a process start per call
