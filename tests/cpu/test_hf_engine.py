"""The hf rollout engine: batching must not change greedy outputs, candidates are exact and restorable (fp32 here;
bf16 weights and dtype selection: test_hf_precision.py; shared-prefix reuse: test_hf_prefix.py)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from randopt_verl.core.population import Candidate
from randopt_verl.cpu.hf_engine import Batcher, HFEngine, Sampling

GREEDY = Sampling.from_params({"temperature": 0})


@pytest.fixture(scope="module")
def engine(tiny_model):
    return HFEngine(tiny_model, dtype="float32", max_response_length=12, max_batch_size=8, threads=1)


@pytest.fixture(scope="module")
def prompts(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    texts = [f"What is {a} + {b}?" for a, b in [(1, 2), (13, 40), (7, 7), (99, 1), (5, 55), (20, 3)]]
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False) for t in texts]


def test_batched_greedy_equals_one_at_a_time(engine, prompts):
    batched = engine.generate_batch(prompts, GREEDY)
    single = [engine.generate_batch([p], GREEDY)[0] for p in prompts]
    assert [b.token_ids for b in batched] == [s.token_ids for s in single]
    assert all(len(b.token_ids) >= 1 for b in batched)


def test_batcher_groups_concurrent_requests(engine, prompts):
    async def run():
        batcher = Batcher(engine, window_s=0.01)
        outs = await asyncio.gather(*[batcher.submit(p, {"temperature": 0}) for p in prompts])
        return batcher, outs

    batcher, outs = asyncio.run(run())
    assert batcher.requests == len(prompts)
    assert batcher.batches < len(prompts)  # several requests shared a forward pass
    assert [o.token_ids for o in outs] == [g.token_ids for g in engine.generate_batch(prompts, GREEDY)]


def test_max_tokens_and_logprobs(engine, prompts):
    outs = engine.generate_batch(prompts[:2], Sampling.from_params({"temperature": 0, "logprobs": True}), [3, 5])
    assert len(outs[0].token_ids) <= 3 and len(outs[1].token_ids) <= 5
    assert all(lp <= 0 for o in outs for lp in o.log_probs)
    assert len(outs[1].log_probs) == len(outs[1].token_ids)


def test_sampling_differs_from_greedy_and_is_valid(engine, prompts):
    torch.manual_seed(0)
    sampled = engine.generate_batch(prompts, Sampling.from_params({"temperature": 1.5}))
    greedy = engine.generate_batch(prompts, GREEDY)
    vocab = engine.model.config.vocab_size
    assert any(s.token_ids != g.token_ids for s, g in zip(sampled, greedy))
    assert all(0 <= t < vocab for s in sampled for t in s.token_ids)


def test_candidate_then_restore_is_bitwise_pristine(engine):
    from randopt_verl.core import noise

    before = engine.named_weights()
    engine.hold(Candidate(0, seed=123, sigma=0.01))  # what the hf server calls (hf_rollout)
    during = engine.named_weights()
    name = "model.layers.0.mlp.up_proj.weight"
    expected = noise.perturbed(before[name], 123, name, 0.01)
    assert torch.equal(during[name], expected)
    engine.hold(None)
    after = engine.named_weights()
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_tied_embedding_perturbed_once(engine):
    assert engine.model.config.tie_word_embeddings
    engine.hold(Candidate(0, seed=5, sigma=0.02))
    assert engine.model.lm_head.weight.data_ptr() == engine.model.model.embed_tokens.weight.data_ptr()
    engine.hold(None)


def test_load_weights_becomes_new_pristine(engine):
    base = engine.named_weights()
    name = "model.norm.weight"
    engine.load_weights([(name, base[name] + 1.0)])
    engine.hold(Candidate(0, seed=1, sigma=0.01))
    engine.hold(None)
    assert torch.equal(engine.named_weights()[name], base[name] + 1.0)
    engine.load_weights([(name, base[name])])
    with pytest.raises(KeyError, match="not a parameter"):
        engine.load_weights([("no.such.weight", base[name])])


def test_seeded_sampling_is_reproducible(engine, prompts):
    params = {"temperature": 1.5, "seed": 7}
    a = engine.generate_batch(prompts, Sampling.from_params(params))
    engine.generate_batch(prompts, Sampling.from_params({"temperature": 1.5}))  # advance the global stream
    b = engine.generate_batch(prompts, Sampling.from_params(params))
    c = engine.generate_batch(prompts, Sampling.from_params({"temperature": 1.5, "seed": 8}))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_grouped_eager_attention_matches_sdpa(tiny_model, prompts):
    """The CPU attention without K/V head expansion computes what transformers' sdpa path does (fp32, to rounding)."""
    from randopt_verl.cpu.hf_engine import GQA_ATTENTION

    lp = Sampling.from_params({"temperature": 0, "logprobs": True})
    outs = []
    for attn in ("sdpa", GQA_ATTENTION):
        eng = HFEngine(tiny_model, dtype="float32", max_response_length=8, max_batch_size=4, threads=1,
                       attn_implementation=attn)
        assert eng.model.config.num_attention_heads > eng.model.config.num_key_value_heads  # grouped heads
        eng.hold(Candidate(0, seed=3, sigma=0.5))  # varied tokens
        outs.append(eng.generate_batch(prompts, lp))
    assert [o.token_ids for o in outs[0]] == [o.token_ids for o in outs[1]]
    assert len({tuple(o.token_ids) for o in outs[0]}) > 1
    diff = max(abs(u - v) for a, b in zip(*outs) for u, v in zip(a.log_probs, b.log_probs))
    assert diff < 1e-4, diff
