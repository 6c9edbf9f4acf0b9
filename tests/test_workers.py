"""SearchWorker's pieces that run without a cluster: the perturbed weight stream (tied aliases perturbed once; the
same weights as the hf server's in-place path), the host thread share of the ES update, and the update itself on
plain and offset shards."""

from __future__ import annotations

import os

import numba
import pytest
import torch
import verl  # noqa: F401  (imported first, as in a worker process: verl loads the plugin, which imports workers)

from randopt_verl import workers as W
from randopt_verl.core.es_update import es_update_
from randopt_verl.core.noise import noise, perturbed
from randopt_verl.core.population import Candidate, Merged, ParamFilter, perturb_module_, tied_aliases


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(11, 4)
        self.layer = torch.nn.Linear(4, 4)
        self.lm_head = torch.nn.Linear(4, 11, bias=False)
        self.lm_head.weight = self.embed_tokens.weight


def _stream(model):
    # what verl's FSDP2 engine yields: state_dict order, every name (aliases included), a new tensor per entry
    return ((n, t.detach().clone()) for n, t in model.state_dict().items())


def test_tied_alias_is_perturbed_once_and_carries_the_canonical_tensor(monkeypatch):
    model = Tied()
    aliases = tied_aliases(model)
    assert aliases == {"lm_head.weight": "embed_tokens.weight"}
    calls = []

    real = W.combined

    def counting(tensor, terms, name, **kw):
        calls.append(name)
        return real(tensor, terms, name, **kw)

    monkeypatch.setattr(W, "combined", counting)
    cand = Candidate(0, 123, 1e-2)
    out = list(W.perturbed_weight_stream(_stream(model), cand, ParamFilter(None, None), aliases))
    assert [n for n, _ in out] == list(model.state_dict())
    assert sorted(calls) == ["embed_tokens.weight", "layer.bias", "layer.weight"]  # lm_head not perturbed again
    got = dict(out)
    assert got["lm_head.weight"] is got["embed_tokens.weight"]
    w = model.embed_tokens.weight.detach()
    assert torch.equal(got["embed_tokens.weight"], perturbed(w, 123, "embed_tokens.weight", 1e-2))
    assert not torch.equal(got["embed_tokens.weight"], w)


def test_alias_first_in_the_stream_and_filters_use_the_canonical_name():
    model = Tied()
    aliases = tied_aliases(model)
    items = list(_stream(model))[::-1]  # the alias now arrives before its canonical name
    cand = Candidate(0, 5, 1e-2)
    got = dict(W.perturbed_weight_stream(iter(items), cand, ParamFilter(["embed"], None), aliases))
    assert got["lm_head.weight"] is got["embed_tokens.weight"]
    assert torch.equal(got["lm_head.weight"], perturbed(model.embed_tokens.weight.detach(), 5, "embed_tokens.weight", 1e-2))
    assert torch.equal(got["layer.weight"], model.layer.weight.detach())  # not selected: passed through


def test_no_candidate_passes_the_stream_through():
    model = Tied()
    items = list(_stream(model))
    out = list(W.perturbed_weight_stream(iter(items), None, ParamFilter(None, None), tied_aliases(model)))
    assert all(a[1] is b[1] for a, b in zip(out, items))


def test_stream_travels_in_the_rollout_dtype_rounded_once():
    """Every floating tensor leaves in bf16 (perturbed or not, tied alias included), integer tensors untouched; a
    perturbed one is bitwise combined(...) in fp32 then rounded to bf16 once, which is what vLLM stores when it
    receives the fp32 tensor and copies it into its bf16 weight."""
    from randopt_verl.core.population import Merged, combined

    model = Tied()
    items = list(_stream(model)) + [("position_ids", torch.arange(5))]
    aliases = tied_aliases(model)
    for cand in (Candidate(0, 5, 1e-2), Merged(0, ((5, 1e-2), (9, -3e-3))), None):
        got = dict(W.perturbed_weight_stream(iter(items), cand, ParamFilter(None, ["layer.bias"]), aliases,
                                             torch.bfloat16))
        assert got["position_ids"].dtype == torch.int64 and torch.equal(got["position_ids"], torch.arange(5))
        for name, tensor in items[:-1]:
            assert got[name].dtype == torch.bfloat16, name
            canonical = aliases.get(name, name)
            selected = cand is not None and canonical != "layer.bias"
            fp32 = combined(tensor, cand.terms(), canonical) if selected else tensor
            assert fp32.dtype == torch.float32
            vllm_stores = torch.empty_like(tensor, dtype=torch.bfloat16).copy_(fp32)  # what vLLM's loader does
            assert torch.equal(got[name].view(torch.int16), vllm_stores.view(torch.int16)), name
        if cand is not None:  # perturbed once, handed out again
            assert got["lm_head.weight"] is got["embed_tokens.weight"]


def test_stream_leaves_its_inputs_untouched_and_passes_unselected_tensors(tied_lm):
    model = tied_lm(torch.float32)
    sd = model.state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    aliases = tied_aliases(model)
    out = dict(W.perturbed_weight_stream(iter(sd.items()), Candidate(0, 99, 1e-2), ParamFilter(exclude=["norm"]),
                                         aliases))
    assert all(torch.equal(sd[k], before[k]) for k in sd)  # the FSDP tensors are never modified
    assert list(out) == list(sd)
    assert out["position_ids"] is sd["position_ids"]  # integer buffer: not selected
    assert out["norm.weight"] is sd["norm.weight"]  # excluded
    assert torch.equal(out["proj.weight"], perturbed(sd["proj.weight"], 99, "proj.weight", 1e-2))
    assert torch.equal(out["embed_tokens.weight"], perturbed(sd["embed_tokens.weight"], 99, "embed_tokens.weight", 1e-2))


def test_alias_follows_its_canonical_names_filter_decision(tied_lm):
    model = tied_lm(torch.float32)
    out = dict(W.perturbed_weight_stream(iter(model.state_dict().items()), Candidate(0, 5, 1e-2),
                                         ParamFilter(exclude=["lm_head"]), tied_aliases(model)))
    assert out["lm_head.weight"] is out["embed_tokens.weight"]  # excluding the alias's own name changes nothing
    assert not torch.equal(out["embed_tokens.weight"], model.embed_tokens.weight)


@pytest.mark.parametrize("holder", [Candidate(4, 31337, 1e-3), Merged(0, ((31337, 1e-3), (7, -4e-4), (99, 2e-4)))],
                         ids=["candidate", "merged"])
@pytest.mark.parametrize("rollout_dtype", [torch.float32, torch.bfloat16])
def test_stream_path_equals_the_hf_servers_module_path(holder, rollout_dtype, tied_lm):
    """The two production ways of giving a replica a candidate build the same weights: the perturb-at-sync stream
    (SearchWorker wraps the FSDP engine's get_per_tensor_param: fp32 tensors under HF names, the tied alias
    included; perturbed_weight_stream casts them to the rollout dtype) and the hf server's in-place path
    (HFEngine.hold: perturb_module_ on a model in the rollout dtype from an fp32 pristine copy)."""
    pf = ParamFilter(exclude=[r"^proj\.bias$"])
    actor = tied_lm(torch.float32)
    fsdp_stream = ((n, t.detach().clone()) for n, t in actor.state_dict().items())  # every name, a new tensor each
    travel = None if rollout_dtype == torch.float32 else rollout_dtype
    streamed = dict(W.perturbed_weight_stream(fsdp_stream, holder, pf, tied_aliases(actor), travel))
    # the hf server: fp32 pristine copy of the parameters (a tied weight once), the model in the rollout dtype
    served = tied_lm(torch.float32)
    pristine = {n: p.detach().clone() for n, p in served.named_parameters()}
    served.to(rollout_dtype)
    perturb_module_(served, Candidate(0, 1, 5e-2), pf, pristine)  # whatever was held before does not matter
    perturb_module_(served, holder, pf, pristine)
    held = served.state_dict()
    assert list(streamed) == list(held)
    for name, t in streamed.items():
        assert t.dtype == held[name].dtype and torch.equal(held[name], t), name
    assert torch.equal(held["proj.bias"], pristine["proj.bias"].to(rollout_dtype))
    assert not torch.equal(held["proj.weight"], pristine["proj.weight"].to(rollout_dtype))


def test_travel_dtype_follows_the_rollout():
    from omegaconf import OmegaConf

    assert W.travel_dtype(OmegaConf.create({"name": "vllm", "dtype": "bfloat16"})) == torch.bfloat16
    assert W.travel_dtype(OmegaConf.create({"name": "vllm", "dtype": "float16"})) == torch.float16
    assert W.travel_dtype(OmegaConf.create({"name": "vllm", "dtype": "auto"})) is None
    # the hf server keeps an fp32 pristine copy of what arrives (its in-place candidates start from it)
    assert W.travel_dtype(OmegaConf.create({"name": "hf", "dtype": "bfloat16"})) is None


def test_host_threads_per_rank_divides_the_cores(monkeypatch):
    monkeypatch.setattr(W.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("RAY_LOCAL_WORLD_SIZE", "8")  # what verl's RayWorkerGroup sets; LOCAL_WORLD_SIZE it does not
    assert W.host_threads_per_rank() == 2
    monkeypatch.setenv("RAY_LOCAL_WORLD_SIZE", "32")
    assert W.host_threads_per_rank() == 1
    monkeypatch.delenv("RAY_LOCAL_WORLD_SIZE")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's, for a process verl did not start
    assert W.host_threads_per_rank() == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert W.host_threads_per_rank() == 16


_RAY_WORKERS_CHILD = """
import os
os.environ["RAY_ADDRESS"] = "local"
import ray
from verl.single_controller.base import Worker
from verl.single_controller.base.decorator import Dispatch, register
from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup

class Probe(Worker):
    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def share(self):
        import randopt_verl.workers as W
        return len(os.sched_getaffinity(0)), W.host_threads_per_rank()

ray.init(num_cpus=2, include_dashboard=False)
pool = RayResourcePool(process_on_nodes=[2], use_gpu=False, max_colocate_count=1)
wg = RayWorkerGroup(pool, RayClassWithInitArgs(cls=ray.remote(Probe)))
print(wg.share())
ray.shutdown()
"""


def test_verl_workers_on_one_host_split_its_cores():
    """Two ranks that verl's RayWorkerGroup starts on one node get half the cores each (a fresh process: Ray)."""
    import ast
    import subprocess
    import sys

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: every share is 1 with or without the split")
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_WORLD_SIZE", "RAY_LOCAL_WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", _RAY_WORKERS_CHILD], capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    shares = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert len(shares) == 2
    assert all(threads == max(1, cores // 2) for cores, threads in shares), shares


_THREAD_SHARE_CHILD = """
import verl  # noqa: F401  (verl first: it imports the plugin, which imports the workers module)
import numba, torch
import randopt_verl.workers as W

@numba.njit(parallel=True)
def threads_in_use(n):
    out = 0
    for _ in numba.prange(n):
        out = max(out, numba.get_num_threads())
    return out

before = (numba.get_num_threads(), torch.get_num_threads())
with W.host_thread_share(1) as t:
    seen = (t, numba.get_num_threads(), torch.get_num_threads(), threads_in_use(4))
print(seen, (numba.get_num_threads(), torch.get_num_threads()) == before)
"""


def test_host_thread_share_sets_and_restores_both_pools():
    # a fresh process: an in-process Ray/verl session earlier in the test run leaves numba's threading layer unable
    # to type get_num_threads inside a parallel loop, which is the process's state, not this function's behaviour
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _THREAD_SHARE_CHILD], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "(1, 1, 1, 1) True", out.stdout[-2000:]


def test_es_update_shards_equals_the_formula_on_full_and_offset_shards():
    torch.manual_seed(0)
    full = {"a.weight": torch.randn(6, 5), "b.bias": torch.randn(7)}
    seeds, z, alpha = [3, 4, 9], [0.5, -1.25, 0.75], 0.01
    expected = {n: es_update_(t.clone(), n, seeds, z, alpha) for n, t in full.items()}
    params = [(n, torch.nn.Parameter(t.clone())) for n, t in full.items()]
    n = W.es_update_shards(params, seeds, z, alpha, ParamFilter(None, ["bias"]), threads=1)
    assert n == 30
    got = dict(params)
    assert torch.equal(got["a.weight"].detach(), expected["a.weight"])
    assert torch.equal(got["b.bias"].detach(), full["b.bias"])  # excluded
    # by hand: theta + (alpha / N) * sum z_n eps_n, accumulated in fp32
    acc = sum(noise(s, "a.weight", 30) * zz for s, zz in zip(seeds, z))
    assert torch.allclose(got["a.weight"].detach().reshape(-1), full["a.weight"].reshape(-1) + alpha / 3 * acc, atol=1e-6)


def test_es_update_shards_refuses_bf16():
    with pytest.raises(ValueError, match="model_dtype=fp32"):
        W.es_update_shards([("w", torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16)))], [1], [1.0], 0.1,
                           ParamFilter(None, None), threads=1)
