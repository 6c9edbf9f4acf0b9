"""`pip install -e '.[gpu]'` resolves on a GPU node (Linux x86_64, Python 3.12): the project's dependencies plus its
`gpu` extra, read from pyproject.toml, resolved by pip against PyPI for this Linux x86_64 machine's Python
(`--dry-run --report`: metadata is downloaded, nothing is installed). The project itself is a source folder, so
its requirement list is resolved rather than `.`; that is what pip resolves for `.[gpu]` after building it. Not
`--platform manylinux... --python-version 3.12`: pip allows those only with `--only-binary=:all:`, and hydra-core's
antlr4-python3-runtime==4.9.* exists only as an sdist, so that resolution is impossible for any install.

    python -m pytest --network tests/test_install.py      (needs PyPI; about 1.5 minutes on 2 cores)

It asserts what broke before: no flash-attn (verl's fsdp extra pins flash-attn==2.8.3, which has no wheel and whose
isolated source build fails), vLLM at verl 0.9.1's pin, torch at verl's pin for its vllm extra."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _requirements(extra: str) -> list[str]:
    tomllib = pytest.importorskip("tomllib", reason="needs Python 3.11+ (tomllib)")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"][extra])


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


@pytest.mark.network
def test_gpu_extra_resolves_for_a_gpu_node_without_flash_attn(tmp_path):
    from randopt_verl.preflight.install_checks import verl_pin

    if not (sys.platform == "linux" and platform.machine() == "x86_64" and (3, 10) <= sys.version_info[:2] <= (3, 12)):
        pytest.skip("resolves for this machine: needs Linux x86_64 and Python 3.10-3.12, like the GPU nodes")
    reqs = _requirements("gpu")
    assert not any(_name(r) in ("flash-attn", "flash-attention") for r in reqs)
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report)]
    # PyPI as a GPU node sees it: no pip config files (this machine's constraints and local wheel folders)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    proc = subprocess.run(cmd + reqs, capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    got = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
           for item in json.loads(report.read_text())["install"]}
    assert "flash-attn" not in got
    assert got["verl"] == "0.9.1"
    assert got["vllm"] == verl_pin("vllm", "vllm") == "0.24.0"
    assert got["torch"] == verl_pin("torch", "vllm")
    # the rest of verl's fsdp extra came along
    for name in ("trl", "liger-kernel", "flash-linear-attention", "cupy-cuda13x"):
        assert name in got, name
