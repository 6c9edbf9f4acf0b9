"""The fused Triton kernel (randopt_verl.core.noise_triton) against the numba kernel, bit for bit.

On a CPU the kernel runs through Triton's interpreter. Triton fixes interpreted-or-compiled for every
@triton.jit function, its own standard library included, when it is imported, so the interpreter cases
(tests/core/triton_interpreter_cases.py: Philox, Box-Muller, pair interleaving, masks, odd offsets, far
counters, the bf16 rounding, in-place updates) run in a fresh interpreter started with TRITON_INTERPRET=1.
Whether CUDA's compiled code gives the same bits is checked by the `gpu` test below (and
scripts/gpu_check.py); compile-only tests (no GPU needed: Triton ships ptxas and nvdisasm) check that the kernel's own
arithmetic is built without multiply-add contraction, and that the FFMAs in its machine code all come from the
IEEE division and square root.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton", reason="needs Triton (pip install triton)")

from randopt_verl.core import noise as N  # noqa: E402
from randopt_verl.core import noise_triton as T  # noqa: E402
from randopt_verl.core.noise import perturbed  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_interpreter_cases_pass():
    env = dict(os.environ, TRITON_INTERPRET="1")
    cases = Path(__file__).with_name("triton_interpreter_cases.py")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    m = re.search(r"(\d+) passed", proc.stdout)
    assert m and int(m.group(1)) >= 8 and "skipped" not in proc.stdout.splitlines()[-1], tail


def _compiled(enable_fp_fusion: bool):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if T.INTERPRETED:
        pytest.skip("this process imported noise_triton in interpreter mode")
    sig = {"src_ptr": "*i16", "dst_ptr": "*i16", "n": "i64", "offset": "i64", "k0": "i64", "k1": "i64",
           "sigma": "fp32", "HAS_SRC": "constexpr", "SRC_BF16": "constexpr", "DST_BF16": "constexpr",
           "NEAR": "constexpr", "BLOCK": "constexpr"}
    src = ASTSource(fn=T._perturb_kernel, signature=sig,
                    constexprs={"HAS_SRC": True, "SRC_BF16": True, "DST_BF16": True, "NEAR": True,
                                                 "BLOCK": T.BLOCK_PAIRS})
    try:
        return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": T.NUM_WARPS, "enable_fp_fusion": enable_fp_fusion})
    except Exception as exc:  # a Triton build without the NVIDIA backend or its ptxas
        pytest.skip(f"cannot compile for sm_90 here: {exc}")


def _ptx(enable_fp_fusion: bool) -> str:
    return _compiled(enable_fp_fusion).asm["ptx"]


def test_kernel_compiles_for_h100_class_gpus_without_fma():
    """The kernel as launched (enable_fp_fusion=False) has no fused multiply-add in its PTX: every fp32 multiply, add
    and subtract carries an explicit `.rn` (which PTX never contracts into an fma), the division and square root are
    the IEEE ones, and each Philox product is one wide multiply; with fusion on the same source does get FMAs, so
    this check can fail."""
    ptx = _ptx(enable_fp_fusion=False)
    assert not re.search(r"\bfma\.", ptx)
    assert set(re.findall(r"\b(?:mul|add|sub)\.[a-z0-9.]*f32\b", ptx)) == {"mul.rn.f32", "add.rn.f32", "sub.rn.f32"}
    assert set(re.findall(r"\bdiv\.[a-z0-9.]+", ptx)) == {"div.rn.f32"}
    assert set(re.findall(r"\bsqrt\.[a-z0-9.]+", ptx)) == {"sqrt.rn.f32"}
    assert len(re.findall(r"\bmul\.wide\.u32", ptx)) >= 20
    assert re.search(r"\bfma\.", _ptx(enable_fp_fusion=True))


def test_machine_code_ffmas_come_only_from_the_ieee_division_and_square_root(tmp_path):
    """In the SASS, the kernel has FFMAs, and all of them belong to ptxas' expansions of div.rn.f32 and sqrt.rn.f32
    (Newton steps after MUFU.RCP / MUFU.RSQ and their slow-path subroutines: correctly rounded by design, so they
    are the IEEE operations the spec names). Proof: the same PTX with only those two instructions swapped for their
    approximate forms, assembled by the same ptxas with the same --fmad=false, has no FFMA at all, so none comes
    from the kernel's own multiplies and adds."""
    kernel = _compiled(enable_fp_fusion=False)
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = Path(get_ptxas(90).path)
    except Exception as exc:  # Triton's internal layout moved
        pytest.skip(f"cannot find Triton's ptxas: {exc}")
    nvdisasm = ptxas.with_name("nvdisasm")
    if not nvdisasm.exists():
        pytest.skip("Triton's NVIDIA backend ships no nvdisasm here")

    def sass(cubin: bytes, name: str) -> str:
        (tmp_path / name).write_bytes(cubin)
        return subprocess.run([str(nvdisasm), "-c", str(tmp_path / name)], capture_output=True, text=True,
                              check=True).stdout

    def ffmas(text: str) -> int:
        return len(re.findall(r"\bFFMA\b", text))

    as_launched = sass(kernel.asm["cubin"], "kernel.cubin")
    assert ffmas(as_launched) > 0  # the IEEE division's and square root's own FMAs
    assert re.search(r"div_rn\w*slowpath", as_launched) and re.search(r"sqrt_rn\w*slowpath", as_launched)
    arch = re.search(r"^\s*\.target\s+(sm_\w+)", kernel.asm["ptx"], re.M).group(1)
    approx = re.sub(r"\bdiv\.rn\.f32", "div.approx.f32", kernel.asm["ptx"])
    approx = re.sub(r"\bsqrt\.rn\.f32", "sqrt.approx.f32", approx)
    (tmp_path / "approx.ptx").write_text(approx)
    subprocess.run([str(ptxas), f"-arch={arch}", "--fmad=false", str(tmp_path / "approx.ptx"), "-o",
                    str(tmp_path / "approx.cubin")], capture_output=True, text=True, check=True)
    assert ffmas(sass((tmp_path / "approx.cubin").read_bytes(), "approx.cubin")) == 0


# --- CUDA: the compiled kernel's bits (run by scripts/gpu_check.py on a GPU machine) -------------------------


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_cuda_kernel_equals_numba_bitwise():
    assert N.noise_backend("cuda") == "triton" and T.supports("cuda")
    for offset, n in ((0, 10_000_019), (5, 3_000_001), ((1 << 33) + 1, 1_000_003), ((1 << 32) - 3, 4097)):
        got = N.noise(77, "model.norm.weight", n, offset=offset, device="cuda").cpu()
        assert torch.equal(got, N.noise(77, "model.norm.weight", n, offset=offset)), (offset, n)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        w = (torch.randn(4_000_037) * 0.02).to(dtype)
        got = perturbed(w.cuda(), 4, "w", 1e-3, offset=3).cpu()
        ref = (w.float() + N.noise(4, "w", w.numel(), offset=3) * 1e-3).to(dtype)
        assert torch.equal(got, ref), dtype
    acc = torch.randn(1_000_001)
    on_gpu = acc.cuda()
    N.perturb_(on_gpu, 8, "acc", -0.37, offset=1)  # in place, one pass
    assert torch.equal(on_gpu.cpu(), perturbed(acc, 8, "acc", -0.37, offset=1))
    assert N.compare_devices("cuda") == []
