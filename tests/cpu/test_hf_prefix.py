"""Shared-prefix reuse in the hf engine: in fp32 it gives the tokens (and, to rounding, the log-probs) of the
unshared path, the prefix is encoded once per weight change and never survives one."""

from __future__ import annotations

import pytest
import torch

from randopt_verl.core.population import Candidate
from randopt_verl.cpu.hf_engine import HFEngine, Sampling, common_prefix_len

GREEDY_LP = Sampling.from_params({"temperature": 0, "logprobs": True})
SYSTEM = "You add two numbers. Think, then answer with only the sum, nothing else."


@pytest.fixture(scope="module")
def prompts(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    pairs = [(1, 2), (13, 40), (7, 7), (99, 1), (5, 55), (20, 3), (8, 9)]
    return [tok.apply_chat_template([{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": f"What is {a} + {b}?" + " Be brief." * (a % 3)}],
                                    add_generation_prompt=True, tokenize=True, return_dict=False)
            for a, b in pairs]


def make(tiny_model, share: bool) -> HFEngine:
    # 3 prompts per batch: 7 prompts make 3 chunks of different widths, all reusing one encoded prefix
    return HFEngine(tiny_model, dtype="float32", max_response_length=8, max_batch_size=3, threads=1,
                    share_prefix=share)


@pytest.fixture(scope="module")
def shared(tiny_model):
    return make(tiny_model, True)


@pytest.fixture(scope="module")
def unshared(tiny_model):
    return make(tiny_model, False)


def run(engine, prompts, seed, sampling=GREEDY_LP):
    engine.hold(Candidate(0, seed, 0.5))  # large noise: the tiny random model then answers with varied tokens
    return engine.generate_batch(prompts, sampling)


def assert_same(a, b):
    """Same tokens, log-probs equal to fp32 rounding (positions or context off by one token move them by >1e-2)."""
    assert [x.token_ids for x in a] == [y.token_ids for y in b]
    diff = max(abs(u - v) for x, y in zip(a, b) for u, v in zip(x.log_probs, y.log_probs))
    assert diff < 1e-4, diff


def test_common_prefix_len():
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # each prompt keeps one token of its own
    assert common_prefix_len([[1, 2], [3, 2]]) == 0


def test_fp32_shared_prefix_gives_the_unshared_tokens(shared, unshared, prompts):
    assert common_prefix_len(prompts) >= 16
    for seed in (11, 12, 13):
        before = dict(shared.prefix_stats)
        a, b = run(shared, prompts, seed), run(unshared, prompts, seed)
        assert_same(a, b)
        assert len({tuple(x.token_ids) for x in a}) > 1  # not a degenerate model answering one thing
        # encoded once for this candidate, reused by the two other chunks
        assert shared.prefix_stats["encoded"] == before["encoded"] + 1
        assert shared.prefix_stats["reused"] == before["reused"] + 2
    assert unshared.prefix_stats == {"encoded": 0, "reused": 0, "tokens_saved": 0}


def test_weight_change_invalidates_the_prefix(shared, unshared, prompts):
    run(shared, prompts, 21)
    # same prompts, new weights: a stale prefix cache would give the old candidate's context
    a, b = run(shared, prompts, 22), run(unshared, prompts, 22)
    assert_same(a, b)
    base = dict(shared.pristine)
    shared.load_weights([("model.norm.weight", base["model.norm.weight"] * 2)])
    unshared.load_weights([("model.norm.weight", base["model.norm.weight"] * 2)])
    a, b = shared.generate_batch(prompts, GREEDY_LP), unshared.generate_batch(prompts, GREEDY_LP)
    assert_same(a, b)
    for e in (shared, unshared):
        e.load_weights([("model.norm.weight", base["model.norm.weight"])])


def test_seeded_sampling_is_the_same_shared_or_not(shared, unshared, prompts):
    params = Sampling.from_params({"temperature": 1.0, "seed": 5})
    a, b = run(shared, prompts, 31, params), run(unshared, prompts, 31, params)
    assert [x.token_ids for x in a] == [y.token_ids for y in b]


def test_no_sharing_for_one_prompt_or_a_short_prefix(shared, prompts):
    before = dict(shared.prefix_stats)
    shared.generate_batch(prompts[:1], GREEDY_LP)
    shared.generate_batch([[5, 6, 7], [5, 6, 8]], GREEDY_LP)  # 2 common tokens: below min_shared_prefix
    assert shared.prefix_stats == before
    torch.manual_seed(0)
