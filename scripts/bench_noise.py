# Command: .venv/bin/python scripts/bench_noise.py   (measured on 2 vCPU AMD EPYC, AVX2, no GPU; torch 2.13.0+cpu, numba 0.68.1)
"""Cost of the canonical noise (randopt_verl.core.noise) against torch's own Gaussian sampler, on CPU.

(The CUDA kernel's throughput and bits: scripts/gpu_check.py, run on a GPU machine.)

RandOpt regenerates the noise once per candidate over every weight, so this is the per-candidate cost
of building a perturbed model on CPU. Side by side, on the same n (default 134.5M elements):

- ``torch.empty(n).normal_()``: the reference cost (not usable: its stream depends on the generator's
  state and the device, not on (seed, name, index));
- ``noise()`` fast path: the numba Philox + portable Box-Muller kernel;
- ``noise(backend="torch")``: the plain-torch int64 path (the reference, any device), timed on a smaller n
  and extrapolated linearly to n (it is ~O(n) and far too slow to run on n on 2 cores);
- ``perturbed()`` on a bf16 and an fp32 tensor (fused numba pass), and the unfused spec formula
  ``(w.float() + sigma * noise(...)).to(bf16)`` it replaces.

Each timing is the best of ``--repeats`` wall-clock runs after a warm-up call (the warm-up also loads or
compiles the numba kernels; its time is printed). Outputs are allocated inside the timed region for all
methods, as ``torch.empty(n).normal_()`` does.

Measured 2026-11-23 on the machine in line 1, shared with other jobs (load average 2.7 to 9), n = 134.5M;
process CPU seconds are the stable figure there (wall time also measured the neighbours):

    torch.empty(n).normal_()            1.10 to 1.17 cpu s   (1.00)
    noise() numba                       0.57 to 0.59 cpu s   (0.49 to 0.53)
    noise(backend="torch"), extrap.     80 to 86 cpu s       (73)
    perturbed(bf16) fused               0.76 to 0.83 cpu s   (0.69 to 0.71)
    perturbed(fp32) fused               0.96 to 1.06 cpu s   (0.88 to 0.90)
    unfused spec formula, bf16          2.36 to 2.40 cpu s   (2.05 to 2.15)
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numba
import torch

from randopt_verl.core.noise import NOISE_SPEC, noise, perturbed


def best_of(fn, repeats: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of the fastest of ``repeats`` runs. CPU time is printed too
    because on a shared machine wall time also measures the neighbours."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--numel", type=int, default=134_500_000, help="elements (default: the default model's 134.5M)")
    ap.add_argument("--torch-numel", type=int, default=2_000_000, help="elements for the slow torch int64 path")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n, nt = args.numel, min(args.torch_numel, args.numel)

    print(f"noise spec {NOISE_SPEC}")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numba {numba.__version__} ({numba.get_num_threads()} threads); "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    t0 = time.perf_counter()
    noise(0, "warmup", 1 << 19)
    perturbed(torch.zeros(1 << 19, dtype=torch.bfloat16), 0, "warmup", 1e-3)
    perturbed(torch.zeros(1 << 19), 0, "warmup", 1e-3)
    perturbed(torch.zeros(7, dtype=torch.bfloat16), 0, "warmup", 1e-3)
    noise(0, "warmup", 1 << 10, backend="torch")
    print(f"warm-up (numba cache load, or compile on a cold cache): {time.perf_counter() - t0:.2f} s")
    print(f"numba threading layer: {numba.threading_layer()}\n")

    g = torch.Generator().manual_seed(0)
    w_bf16 = (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16)
    w_f32 = w_bf16.float()
    rows = []
    ref = best_of(lambda: torch.empty(n).normal_(generator=g), args.repeats)
    rows.append(("torch.empty(n).normal_()  [reference]", n, ref, False))
    rows.append(("noise()  numba fast path", n, best_of(lambda: noise(1, "w", n), args.repeats), False))
    t_torch = best_of(lambda: noise(1, "w", nt, backend="torch"), max(1, args.repeats - 1))
    rows.append((f"noise(backend='torch')  int64 ops, {nt:,} elems x{n / nt:.1f}", n, tuple(t * n / nt for t in t_torch), True))
    rows.append(("perturbed(bf16 tensor)  fused", n, best_of(lambda: perturbed(w_bf16, 1, "w", 1e-3), args.repeats), False))
    rows.append(("perturbed(fp32 tensor)  fused", n, best_of(lambda: perturbed(w_f32, 1, "w", 1e-3), args.repeats), False))
    unfused = best_of(lambda: (w_bf16.float() + 1e-3 * noise(1, "w", n)).to(torch.bfloat16), args.repeats)
    rows.append(("(w.float() + s*noise()).to(bf16)  unfused", n, unfused, False))

    print(f"{'method':<58} {'elements':>13} {'wall s':>8} {'x normal_':>10} {'cpu s':>8} {'x normal_':>10}")
    for label, count, (wall, cpu), extrapolated in rows:
        note = "  (extrapolated)" if extrapolated else ""
        print(f"{label:<58} {count:>13,} {wall:>8.3f} {wall / ref[0]:>10.2f} {cpu:>8.3f} {cpu / ref[1]:>10.2f}{note}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
