# Command: PYTHONPATH=. python scripts/gpu_check.py [--numel 1500000000] [--peak-gbs 4800]
#   (CPU smoke test of the script itself: TRITON_INTERPRET=1 PYTHONPATH=. python scripts/gpu_check.py --device cpu
#    --numel 20000 --torch-numel 20000 --repeats 1)
# Hardware: one NVIDIA GPU (written for an H200: 141 GB HBM3e, 4.8 TB/s) and a multi-core host; needs only torch
# (CUDA build), triton, numba and numpy plus this repository (no verl, vLLM or Ray). Runs in about 1-3 minutes.
"""The fused CUDA noise kernel on a GPU: its bits, its throughput, and doctor's CUDA noise check, in one run.

1. Bits: the Triton kernel against the CPU numba kernel, bitwise, on the full ``--numel`` stream (fp32), on
   odd offsets and a counter past 2**32, and ``perturbed`` in fp32, bf16 and fp16 plus the in-place update ES uses.
2. Throughput on ``--numel`` elements (default 1.5B, a Qwen2.5-1.5B's worth): ``perturbed`` bf16 -> bf16 and
   fp32 -> fp32, ``noise`` alone (fp32 out) and the in-place fp32 update; bytes moved / time as GB/s and as a
   share of ``--peak-gbs``, next to a plain ``copy_`` of the same bytes (what this GPU reaches in practice) and
   the unfused torch reference path (timed on fewer elements, scaled linearly).
3. ``compare_devices("cuda")``: the check ``randopt-verl doctor`` runs before a GPU job.
4. If pytest is installed: the ``gpu``-marked tests of tests/core.
Exit status 0 only if every bitwise check passed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from randopt_verl.core import noise as N  # noqa: E402
from randopt_verl.core import noise_triton as T  # noqa: E402


def device_time(fn, repeats: int, dev: torch.device) -> float:
    """Best of ``repeats`` runs in seconds after one warm-up call (CUDA events on a GPU)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if dev.type != "cuda":
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return best


def kernel_noise(seed: int, name: str, n: int, offset: int, dev: torch.device) -> torch.Tensor:
    k0, k1 = N.philox_key(seed, name)
    return T.launch(None, torch.empty(n, dtype=torch.float32, device=dev), offset, k0, k1, 0.0)


def kernel_perturbed(w: torch.Tensor, seed: int, name: str, sigma: float, offset: int) -> torch.Tensor:
    k0, k1 = N.philox_key(seed, name)
    return T.launch(w, torch.empty_like(w), offset, k0, k1, sigma)


def check(label: str, got: torch.Tensor, ref: torch.Tensor, failures: list[str]) -> None:
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[ref.dtype]
    same = torch.equal(got.view(bits), ref.view(bits))
    diff = 0 if same else int((got.view(bits) != ref.view(bits)).sum())
    print(f"  {'OK  ' if same else 'FAIL'} {label}: {ref.numel():,} elements" + ("" if same else f", {diff:,} differ"))
    if not same:
        failures.append(label)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=1_500_000_000, help="elements for the full-size checks and timings")
    ap.add_argument("--peak-gbs", type=float, default=4800.0, help="the GPU's HBM bandwidth in GB/s (H200: 4800)")
    ap.add_argument("--torch-numel", type=int, default=50_000_000, help="elements for the slow unfused torch path")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda",
                    help="cuda; or cpu to smoke-test this script through Triton's interpreter (TRITON_INTERPRET=1, "
                         "small --numel and --torch-numel)")
    a = ap.parse_args()
    n = a.numel
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    if not T.supports(dev):
        print(f"FAIL: the fused kernel does not run on {dev} here (Triton importable: {T.AVAILABLE}, "
              f"interpreter: {T.INTERPRETED}); on CUDA, noise would run the unfused torch path")
        return 1
    print(f"noise spec {N.NOISE_SPEC}")
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        print(f"GPU {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs")
    else:
        print("SMOKE TEST on CPU through Triton's interpreter: figures below say nothing about a GPU")
    print(f"host {platform.processor() or platform.machine()}, {os.cpu_count()} cpus")
    import triton

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, numba "
          f"{numba.__version__} ({numba.get_num_threads()} threads), numpy {np.__version__}")
    print(f"noise(device=cuda) backend: {N.noise_backend('cuda')}  (kernel: {T.BLOCK_PAIRS} pairs x {T.NUM_WARPS} "
          "warps per program, enable_fp_fusion=False)\n")
    failures: list[str] = []

    print(f"1. bits: the Triton kernel on {dev} vs numba on CPU")
    t0 = time.perf_counter()
    seed, name = 1234, "model.embed_tokens.weight"
    check(f"noise, offset 0, n={n:,}", kernel_noise(seed, name, n, 0, dev).cpu(), N.noise(seed, name, n), failures)
    for offset, m in ((1, 10_000_001), ((1 << 33) + 1, 4_000_003), ((1 << 32) - 3, 2_000_000)):
        m = min(m, n)
        check(f"noise, offset {offset}", kernel_noise(seed, name, m, offset, dev).cpu(),
              N.noise(seed, name, m, offset=offset), failures)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(min(n, 200_000_000), generator=g) * 0.02
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        w = base.to(dtype)
        ref = (w.float() + N.noise(seed, name, w.numel(), offset=7) * 1e-3).to(dtype)  # the spec formula
        check(f"perturbed {dtype}, offset 7", kernel_perturbed(w.to(dev), seed, name, 1e-3, 7).cpu(), ref, failures)
    acc = base[: min(n, 50_000_000)].clone()
    on_dev = acc.to(dev, copy=True)
    k0, k1 = N.philox_key(seed, name)
    T.launch(on_dev, on_dev, 3, k0, k1, -0.37)
    check("fp32 in place (ES accumulation)", on_dev.cpu(), N.perturbed(acc, seed, name, -0.37, offset=3), failures)
    del base, acc, on_dev
    print(f"  ({time.perf_counter() - t0:.1f} s)\n")

    print(f"2. throughput on {n:,} elements (best of {a.repeats}; GB/s = bytes read + written / time)")
    rows = []
    src = torch.randn(n, device=dev, dtype=torch.float32).mul_(0.02)
    dst = torch.empty_like(src)
    rows.append(("copy_ fp32 -> fp32 (bandwidth reference)", 8 * n, device_time(lambda: dst.copy_(src), a.repeats, dev)))
    k0, k1 = N.philox_key(seed, name)
    rows.append(("noise() fp32 out", 4 * n, device_time(lambda: T.launch(None, dst, 0, k0, k1, 0.0), a.repeats, dev)))
    rows.append(("perturbed fp32 -> fp32", 8 * n, device_time(lambda: T.launch(src, dst, 0, k0, k1, 1e-3), a.repeats, dev)))
    rows.append(("perturb_ fp32 in place", 8 * n, device_time(lambda: T.launch(dst, dst, 0, k0, k1, 1e-3), a.repeats, dev)))
    del dst
    src16, dst16 = src.to(torch.bfloat16), torch.empty(n, device=dev, dtype=torch.bfloat16)
    del src
    rows.append(("perturbed bf16 -> bf16", 4 * n, device_time(lambda: T.launch(src16, dst16, 0, k0, k1, 1e-3), a.repeats, dev)))
    del src16, dst16
    nt = min(a.torch_numel, n)
    tt = device_time(lambda: N.noise(seed, name, nt, device=dev, backend="torch"), max(1, a.repeats // 2), dev)
    rows.append((f"noise(backend='torch') unfused, {nt:,} elems, scaled", 4 * n, tt * n / nt))
    print(f"  {'path':<52} {'ms':>9} {'GB/s':>8} {'% peak':>7}")
    for label, nbytes, sec in rows:
        gbs = nbytes / sec / 1e9
        print(f"  {label:<52} {sec * 1e3:>9.2f} {gbs:>8.0f} {100 * gbs / a.peak_gbs:>6.1f}%")
    print()

    print(f'3. doctor\'s check: compare_devices("{dev.type}")')
    problems = N.compare_devices(dev) if dev.type == "cuda" else N.compare_devices(dev, numel=10_001)
    print("  OK  CUDA noise equals the CPU noise bit for bit" if not problems else "  FAIL " + "; ".join(problems))
    failures += problems
    print()

    if dev.type != "cuda":
        print("4. (smoke test: the gpu-marked tests need CUDA)")
    elif importlib.util.find_spec("pytest") is not None:
        print("4. pytest -m gpu tests/core")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                               "tests/core/test_noise.py", "tests/core/test_noise_triton.py"], cwd=ROOT)
        if proc.returncode != 0:
            failures.append("pytest -m gpu tests/core")
    else:
        print("4. pytest not installed: the gpu-marked tests were not run (steps 1 and 3 cover the same checks)")
    print("\nRESULT:", "all bitwise checks passed" if not failures else f"FAILED: {failures}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
