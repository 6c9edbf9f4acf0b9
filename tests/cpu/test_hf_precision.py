"""bf16 in the hf engine: the candidate is formed in fp32 from fp32 pristine weights and rounded once, by either
path (in place or through verl's weight stream); outputs do not depend on the thread count; "auto" follows the
CPU's bf16 instructions."""

from __future__ import annotations

import pytest
import torch

from randopt_verl.core import noise
from randopt_verl.core.population import Candidate, ParamFilter, tied_aliases
from randopt_verl.cpu import hf_engine
from randopt_verl.cpu.hf_engine import HFEngine, Sampling, resolve_dtype

GREEDY_LP = Sampling.from_params({"temperature": 0, "logprobs": True})
SEED, SIGMA = 1234, 0.05


@pytest.fixture(scope="module")
def fp32_state(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    return list(model.state_dict().items())  # includes the tied alias lm_head.weight, as verl's stream does


@pytest.fixture(scope="module")
def engine(tiny_model):
    return HFEngine(tiny_model, dtype="bfloat16", max_response_length=8, max_batch_size=8, threads=1)


def expected_candidate(fp32_state, seed, sigma) -> dict[str, torch.Tensor]:
    base = dict(fp32_state)
    return {n: noise.perturbed(base[n], seed, n, sigma).to(torch.bfloat16) for n in base if base[n].is_floating_point()}


def test_candidate_is_bf16_of_the_fp32_sum(engine, fp32_state):
    assert engine.dtype == torch.bfloat16
    base = dict(fp32_state)
    # the pristine copy is the checkpoint's fp32 values, the model holds them rounded once
    assert all(torch.equal(engine.pristine[n], base[n]) for n in engine.pristine)
    assert all(p.dtype == torch.bfloat16 for p in engine.model.parameters())
    engine.hold(_cand())
    got = engine.named_weights()
    want = expected_candidate(fp32_state, SEED, SIGMA)
    for name, w in got.items():
        assert torch.equal(w, want[name]), name
    # not the same as adding the noise to the bf16 base (rounding twice): the test can tell the two apart
    name = "model.layers.0.mlp.up_proj.weight"
    twice = noise.perturbed(base[name].to(torch.bfloat16), SEED, name, SIGMA)
    assert not torch.equal(got[name], twice)
    engine.hold(None)
    assert all(torch.equal(w, base[n].to(torch.bfloat16)) for n, w in engine.named_weights().items())


def test_weight_sync_follows_the_same_rule(engine, fp32_state):
    """perturb-at-sync: verl's fp32 stream, perturbed, lands as bf16(fp32 base + σ·ε), as the in-place path."""
    import verl  # noqa: F401  (first, as in a worker process: verl loads the plugin, which imports the workers)

    from omegaconf import OmegaConf

    from randopt_verl import workers

    aliases = tied_aliases(fp32_state)
    # the stream SearchWorker hands verl's update_weights, in the dtype it travels in to the hf backend (fp32: None)
    stream = workers.perturbed_weight_stream(iter(fp32_state), _cand(), ParamFilter(None, None), aliases,
                                             workers.travel_dtype(OmegaConf.create({"name": "hf"})))
    engine.load_weights(stream)
    want = expected_candidate(fp32_state, SEED, SIGMA)
    assert all(torch.equal(w, want[n]) for n, w in engine.named_weights().items())
    # the stream's fp32 values are the new pristine weights, exactly
    assert torch.equal(engine.pristine["model.norm.weight"],
                       noise.perturbed(dict(fp32_state)["model.norm.weight"], SEED, "model.norm.weight", SIGMA))
    engine.load_weights(iter(fp32_state))  # back to the base
    engine.hold(_cand())
    assert all(torch.equal(w, want[n]) for n, w in engine.named_weights().items())
    engine.hold(None)


def test_partial_stream_during_a_candidate_restores_the_rest(engine, fp32_state):
    base = dict(fp32_state)
    engine.hold(_cand())
    engine.load_weights([("model.norm.weight", base["model.norm.weight"] + 1.0)])
    got = engine.named_weights()
    assert torch.equal(got["model.norm.weight"], (base["model.norm.weight"] + 1.0).to(torch.bfloat16))
    assert torch.equal(got["model.layers.0.mlp.up_proj.weight"],
                       base["model.layers.0.mlp.up_proj.weight"].to(torch.bfloat16))
    engine.load_weights([("model.norm.weight", base["model.norm.weight"])])


def _cand():
    return Candidate(index=0, seed=SEED, sigma=SIGMA)


def test_outputs_do_not_depend_on_the_thread_count(tiny_model):
    """One replica gets all cores, two split them: a candidate must score the same either way."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"What is {a} + {b}?"}],
                                       add_generation_prompt=True, tokenize=True, return_dict=False)
               for a, b in [(1, 2), (13, 40), (7, 7), (99, 1), (5, 55), (20, 3), (8, 9), (60, 6)]]
    runs = []
    for threads in (1, 2):
        eng = HFEngine(tiny_model, dtype="bfloat16", max_response_length=8, max_batch_size=8, threads=threads)
        eng.hold(Candidate(0, SEED, 0.5))  # large noise: varied tokens, so equality is not trivial
        outs = eng.generate_batch(prompts, GREEDY_LP)
        runs.append(([o.token_ids for o in outs], [o.log_probs for o in outs]))
    torch.set_num_threads(1)
    assert len({tuple(t) for t in runs[0][0]}) > 1
    assert runs[0] == runs[1]


def test_auto_dtype_follows_the_cpus_bf16_instructions(monkeypatch):
    monkeypatch.setattr(hf_engine, "_cpuinfo_flags", lambda: {"avx2", "avx512_bf16"})
    assert hf_engine.bf16_matmul_unit() == "avx512_bf16" and resolve_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(hf_engine, "_cpuinfo_flags", lambda: {"avx2", "amx_tile", "amx_bf16"})
    assert hf_engine.bf16_matmul_unit() == "amx"
    monkeypatch.setattr(hf_engine, "_cpuinfo_flags", lambda: {"avx2", "fma"})
    assert hf_engine.bf16_matmul_unit() is None and resolve_dtype("auto") == torch.float32
    # an explicit dtype wins over detection
    assert resolve_dtype("bfloat16") == torch.bfloat16 and resolve_dtype("float32") == torch.float32
    with pytest.raises(ValueError, match="use auto or one of"):
        resolve_dtype("int8")
