"""export_expert: the exported checkpoint is, bit for bit, the candidate the rollout engine scored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from randopt_verl.core import noise
from randopt_verl.cpu.hf_engine import HFEngine, Sampling
from randopt_verl.tools.export import EXPERT_RECORD, export_expert
from randopt_verl.core.fingerprint import fingerprint_files, model_files
from randopt_verl.core.population import Candidate, Merged, ParamFilter

EXPERTS = [
    {"rank": 1, "index": 7, "seed": 123456, "sigma": 0.02, "selection_score": 0.5, "selection_acc": 0.5},
    {"rank": 2, "index": 3, "seed": 987654321, "sigma": 0.02, "selection_score": 0.4, "selection_acc": 0.4},
]
EXCLUDE = ["norm"]  # a non-trivial filter: the export must apply the run's filter, not perturb everything
GREEDY = Sampling.from_params({"temperature": 0})
MAX_TOKENS = 12


def fake_run(root: Path, model: str, *, spec: str = noise.NOISE_SPEC, topk: bool = True) -> Path:
    """A run directory as the randopt trainer leaves it, reduced to what export reads."""
    root.mkdir(parents=True)
    manifest = {
        "format": "randopt_verl.core.rundir/1",
        "identity": {"model_fingerprint": fingerprint_files(model_files(model)), "noise_spec_version": spec,
                     "selection_set_hash": "sha256:x", "search": {}},
        "n_candidates": 10,
        "config": {"actor_rollout_ref": {"model": {"path": model}},
                   "randopt": {"param_filter": {"include": None, "exclude": EXCLUDE}}},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    if topk:
        (root / "topk.json").write_text(json.dumps({"k": 2, "experts": EXPERTS}))
    return root


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory) -> Path:
    return fake_run(tmp_path_factory.mktemp("export") / "run", tiny_model)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    return export_expert(run, 1, tmp_path_factory.mktemp("out") / "expert1")


@pytest.fixture(scope="module")
def engine(tiny_model):
    e = HFEngine(tiny_model, max_response_length=MAX_TOKENS, max_batch_size=8, threads=1)
    e.hold(Candidate(EXPERTS[0]["index"], EXPERTS[0]["seed"], EXPERTS[0]["sigma"]), ParamFilter(None, EXCLUDE))
    return e


def test_exported_weights_equal_engine_candidate_bitwise(exported, engine, tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(exported)
    got = {n: p.detach() for n, p in model.named_parameters()}
    want = engine.named_weights()
    assert set(got) == set(want)
    for n in want:
        assert got[n].dtype == torch.float32
        assert torch.equal(got[n], want[n]), n
    # the candidate is a real perturbation, filtered as the run says, tied weights shared
    base = {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(tiny_model).named_parameters()}
    assert not torch.equal(got["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert torch.equal(got["model.norm.weight"], base["model.norm.weight"])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_exported_greedy_generation_equals_engine(exported, engine):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(exported)  # the tokenizer travels with the expert
    texts = [f"What is {a} + {b}?" for a, b in [(1, 2), (13, 40), (7, 7), (99, 1)]]
    prompts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False) for t in texts]
    want = [g.token_ids for g in engine.generate_batch(prompts, GREEDY)]

    model = AutoModelForCausalLM.from_pretrained(exported).eval()
    eos = model.generation_config.eos_token_id
    assert eos == tok.eos_token_id  # generation_config exported
    got = []
    for p in prompts:  # one at a time, no padding: independent of the engine's batching
        with torch.no_grad():
            out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=MAX_TOKENS, do_sample=False)[0, len(p):].tolist()
        got.append(out[: out.index(eos) + 1] if eos in out else out)
    assert got == want


def test_record_travels_with_the_expert(exported, run):
    rec = json.loads((exported / EXPERT_RECORD).read_text())
    assert (rec["rank"], rec["index"], rec["seed"], rec["sigma"]) == (1, 7, 123456, 0.02)
    assert rec["noise_spec"] == noise.NOISE_SPEC
    assert rec["run_dir"] == str(run.resolve())
    assert rec["base_model_fingerprint"].startswith("sha256:")
    assert rec["param_filter"] == {"include": None, "exclude": EXCLUDE}
    assert not list(exported.parent.glob(".*tmp*"))  # the build directory was renamed into place


def test_refusals(run, tiny_model, tmp_path):
    with pytest.raises(ValueError, match="has 2 experts"):
        export_expert(run, 3, tmp_path / "a")
    with pytest.raises(ValueError, match="has 2 experts"):
        export_expert(run, 0, tmp_path / "a")

    unfinished = fake_run(tmp_path / "unfinished", tiny_model, topk=False)
    with pytest.raises(FileNotFoundError, match="has not finished"):
        export_expert(unfinished, 1, tmp_path / "a")

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty.*--force"):
        export_expert(run, 1, busy)

    old_noise = fake_run(tmp_path / "old_noise", tiny_model, spec="philox/v0")
    with pytest.raises(ValueError, match="cannot be rebuilt exactly"):
        export_expert(old_noise, 1, tmp_path / "a")

    with pytest.raises(ValueError, match="pick another"):
        export_expert(run, 1, tiny_model, force=True)  # never over the base checkpoint

    other = tmp_path / "other_model"  # a different checkpoint: same files, one weight byte changed
    shutil.copytree(tiny_model, other)
    weights = other / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not the one the search ran on"):
        export_expert(run, 1, tmp_path / "a", model_path=other)
    assert not (tmp_path / "a").exists()


def test_force_replaces_weights_and_keeps_other_files(run, exported, tmp_path):
    out = tmp_path / "forced"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model-00001-of-00002.safetensors").write_bytes(b"stale shard")
    export_expert(run, 2, out, force=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "model-00001-of-00002.safetensors").exists()
    assert json.loads((out / EXPERT_RECORD).read_text())["rank"] == 2


# -- the consolidated model ------------------------------------------------------------------------------------------


def consolidated_run(root: Path, model: str) -> tuple[Path, dict]:
    """A run directory with a consolidation record as the RandOpt trainer writes it (core/merge.py)."""
    from randopt_verl.core.rundir import RunDir
    from randopt_verl.core import merge

    fake_run(root, model)
    rows = [dict(e, score=e["selection_score"]) for e in EXPERTS] + [
        {"index": 9, "seed": 55, "sigma": 0.01, "score": 0.1}]
    record = merge.plan(rows, rows, weighting="zscore", over="top_k", scales=[1.0, 3.0], shuffled_control=True,
                        population_seed=0)
    record["chosen"] = {"weighted": 1, "shuffled": 2}  # scale 3.0 of the weighted models; 1.0 of the control
    RunDir(root).write_consolidated(record)
    return root, record


@pytest.fixture(scope="module")
def merged_run(tiny_model, tmp_path_factory):
    return consolidated_run(tmp_path_factory.mktemp("export_merged") / "run", tiny_model)


@pytest.fixture(scope="module")
def merged_engine(tiny_model, merged_run):

    _, record = merged_run
    e = HFEngine(tiny_model, max_response_length=MAX_TOKENS, max_batch_size=8, threads=1)
    e.hold(Merged.from_dict(record["models"][1]), ParamFilter(None, EXCLUDE))
    return e


def test_consolidated_checkpoint_equals_the_engines_weights_and_greedy_outputs(merged_run, merged_engine, tiny_model,
                                                                                tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from randopt_verl.tools.export import CONSOLIDATED_RECORD, export_consolidated

    run, record = merged_run
    out = export_consolidated(run, tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    want = merged_engine.named_weights()
    got = {n: p.detach() for n, p in model.named_parameters()}
    assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)
    base = {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(tiny_model).named_parameters()}
    assert not torch.equal(got["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert torch.equal(got["model.norm.weight"], base["model.norm.weight"])  # the run's filter applies

    tok = AutoTokenizer.from_pretrained(out)
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"What is {a} + {b}?"}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False) for a, b in [(3, 4), (20, 22)]]
    engine_out = [g.token_ids for g in merged_engine.generate_batch(prompts, GREEDY)]
    eos = model.generation_config.eos_token_id
    for p, want_ids in zip(prompts, engine_out):
        with torch.no_grad():
            ids = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=MAX_TOKENS, do_sample=False)[0, len(p):].tolist()
        assert (ids[: ids.index(eos) + 1] if eos in ids else ids) == want_ids

    rec = json.loads((out / CONSOLIDATED_RECORD).read_text())
    assert rec["terms"] == record["models"][1]["terms"] and rec["scale"] == 3.0 and rec["variant"] == "weighted"
    assert len(rec["terms"]) == 3 and rec["members"] == record["members"]

    # bf16: the fp32 weights rounded once, which is what a bf16 hf engine holds for the same merged model

    out16 = export_consolidated(run, tmp_path / "merged16", dtype="bf16")
    m16 = AutoModelForCausalLM.from_pretrained(out16, dtype=torch.bfloat16)
    e16 = HFEngine(tiny_model, dtype=torch.bfloat16, max_response_length=MAX_TOKENS, max_batch_size=8, threads=1)
    e16.hold(Merged.from_dict(record["models"][1]), ParamFilter(None, EXCLUDE))
    want16 = e16.named_weights()
    for n, p in m16.named_parameters():
        assert p.dtype == torch.bfloat16 and torch.equal(p.detach(), want[n].to(torch.bfloat16)), n
        assert torch.equal(p.detach(), want16[n]), n
    ctl = export_consolidated(run, tmp_path / "control", variant="shuffled")
    assert json.loads((ctl / CONSOLIDATED_RECORD).read_text())["terms"] == record["models"][2]["terms"]


def test_consolidated_refusals(run, tmp_path):
    from randopt_verl.tools.export import export_consolidated

    with pytest.raises(FileNotFoundError, match="randopt-verl consolidate"):
        export_consolidated(run, tmp_path / "x")
    with pytest.raises(ValueError, match="fp32 or bf16"):
        export_expert(run, 1, tmp_path / "y", dtype="int8")
