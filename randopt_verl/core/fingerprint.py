"""Fingerprints: what identifies a model checkpoint (`model_files`, `fingerprint_files`) and a prompt set
(`hash_rows`) in a run's manifest.

Plain data, no Ray, no verl.

`fingerprint_files` hashes the *full bytes* of every file (sha256, streamed in 8 MiB blocks), plus each
file's name and size. Measured on this project's 2-core CPU machine (SHA-NI, file in page cache): 0.43-0.55 s
per 500 MB with a bare hashlib loop, 0.7-1.3 s per 500 MB through `fingerprint_files`, i.e. roughly 20-40 s
for a 7B bf16 checkpoint (15 GB), paid once per start or resume of a search that runs for hours.
A cheaper "config + safetensors header + sizes" fingerprint was rejected: a fine-tuned checkpoint of the
same architecture has exactly the same header and sizes, and telling it apart from its base model is the
point of the fingerprint. `model_files` lists the files of an HF model directory that can change results
(weights, configs, tokenizer and chat template).

`hash_rows` hashes a list of JSON-serialisable rows (the selection or test set) in order, canonically (sorted
keys, numpy scalars/arrays converted), so the same parquet rows give the same hash on any machine.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

from .jsonio import canonical_json

_HASH_BLOCK = 8 << 20
_MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".jinja", ".tiktoken", ".gguf")
_MODEL_SKIP = {"readme.md", "license", "license.txt", ".gitattributes"}


def model_files(model_dir: str | os.PathLike) -> list[Path]:
    """The files of an HF model directory that can change results: weights, configs, tokenizer, template.

    Top level only (HF layout), sorted; skips README/LICENSE and hidden files.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    out = [
        p
        for p in sorted(model_dir.iterdir())
        if p.is_file()
        and not p.name.startswith(".")
        and p.name.lower() not in _MODEL_SKIP
        and p.name.lower().endswith(_MODEL_SUFFIXES)
    ]
    if not out:
        raise FileNotFoundError(f"no model files (weights, config, tokenizer) in {model_dir}")
    return out


def fingerprint_files(paths: Iterable[str | os.PathLike]) -> str:
    """``"sha256:<hex>"`` over every file's name, size and full bytes (streamed), sorted by name.

    Names are base names, so the same checkpoint copied to another directory has the same fingerprint.
    Two files with the same base name are an error (ambiguous order). See the module docstring for why
    the full bytes are hashed.
    """
    files = sorted((Path(p) for p in paths), key=lambda p: p.name)
    names = [p.name for p in files]
    if len(set(names)) != len(names):
        raise ValueError(f"fingerprint_files: duplicate file names in {names}")
    if not files:
        raise ValueError("fingerprint_files: no files given")
    total = hashlib.sha256()
    for p in files:
        h = hashlib.sha256()
        size = 0
        with open(p, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                h.update(block)
                size += len(block)
        total.update(f"{p.name}\0{size}\0{h.hexdigest()}\n".encode())
    return "sha256:" + total.hexdigest()


def hash_rows(rows: Iterable[Any]) -> str:
    """``"sha256:<hex>"`` of the rows in order, each as canonical JSON (sorted keys) on its own line."""
    h = hashlib.sha256()
    n = 0
    for row in rows:
        h.update(canonical_json(row).encode())
        h.update(b"\n")
        n += 1
    h.update(f"#rows={n}".encode())
    return "sha256:" + h.hexdigest()
