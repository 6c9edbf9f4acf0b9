"""The canonical noise as one fused Triton kernel (the CUDA fast path of randopt_verl.core.noise).

One pass per tensor: Philox4x32-10 words, Box-Muller normals, ``base + sigma * eps`` in fp32 and the cast
to the output dtype, reading the base once and writing the result once. It is the third writing of the
operation sequence that ``noise.py``'s docstring defines (after the numba kernel and the torch reference)
and must agree with them bit for bit, so every floating-point step below is the same IEEE operation, in
the same order, as in ``_box_muller_nb`` / ``_perturbed_*_serial_nb``:

- no multiply-add contraction of the kernel's own arithmetic: every launch passes ``enable_fp_fusion=False``,
  which makes Triton emit every fp32 multiply, add and subtract with an explicit ``.rn`` (PTX never contracts
  those) and run ``ptxas --fmad=false``; a test compiles the kernel for sm_90 on a CPU and finds no ``fma`` in
  its PTX;
- ``f / (f + 2)`` is ``tl.div_rn`` (IEEE division; Triton's ``/`` on fp32 is an approximate division);
- ``sqrt`` is ``tl.sqrt_rn``, the correctly rounded fp32 square root; the spec's "fp64 sqrt rounded to
  fp32" has the same value, because rounding twice is innocuous for sqrt when the wide format has at
  least 2p + 2 bits (53 >= 2 * 24 + 2);
- the machine code does contain FFMAs, all of them ptxas' expansions of ``div.rn.f32`` and ``sqrt.rn.f32``
  (Newton steps after MUFU.RCP / MUFU.RSQ, and the slow-path subroutines): FMA is how those reach their correctly
  rounded results, so each still is the one IEEE operation. Measured for sm_90 (ptxas 13.4): 43 FFMAs; the same
  PTX with those two instructions made approximate assembles with none, which a test checks;
- integer-to-float conversions round to nearest even (PTX ``cvt.rn``), as numpy's and torch's do.

Layout: program ``p`` owns ``BLOCK`` consecutive Philox pairs (``2 * BLOCK`` stream elements); its two
normal vectors are interleaved (``tl.interleave``) into stream order, so loads and stores are contiguous and
an odd ``offset`` or length only masks the first or last element. A 32x32 -> 64-bit product gives a Philox
round's hi and lo words at once (one wide multiply instead of ``umulhi`` plus ``mul``).

Importing this module never needs Triton: without it, ``AVAILABLE`` is False and ``noise.py`` keeps its torch
path. With ``TRITON_INTERPRET=1`` (set before import) the same kernel runs on CPU tensors through Triton's
interpreter, which the CPU tests use to check its logic against the numba kernel.
"""

from __future__ import annotations

import contextlib
import os

import torch

try:  # Triton is optional: CUDA torch wheels ship it; CPU machines usually do not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without Triton
    triton = None
    tl = None

AVAILABLE = triton is not None
# Pairs per program: 1024 pairs = 2048 elements, 8 warps (8 pairs per thread, enough work to hide latency).
BLOCK_PAIRS = 1024
NUM_WARPS = 8


# triton.jit decides at decoration time whether a kernel is compiled or interpreted, so this module's mode is
# fixed when it is imported: TRITON_INTERPRET=1 then means "CPU tensors, through Triton's interpreter".
INTERPRETED = AVAILABLE and os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def supports(device) -> bool:
    """Whether the fused kernel runs on tensors on ``device`` in this process."""
    if not AVAILABLE:
        return False
    return torch.device(device).type == ("cpu" if INTERPRETED else "cuda")


if AVAILABLE:
    # The spec's constants (core/noise_spec.py, shared with noise.py), as constexprs so that the jitted code
    # captures plain Python numbers. Every float below is exactly representable in fp32.
    from .noise_spec import (
        _C1, _C2, _C3, _LG1, _LG2, _LG3, _LG4, _LN2_HI, _LN2_LO, _PIO2, _S1, _S2, _S3,
        PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1,
    )

    _K_LN2_HI: tl.constexpr = tl.constexpr(_LN2_HI)
    _K_LN2_LO: tl.constexpr = tl.constexpr(_LN2_LO)
    _K_LG1: tl.constexpr = tl.constexpr(_LG1)
    _K_LG2: tl.constexpr = tl.constexpr(_LG2)
    _K_LG3: tl.constexpr = tl.constexpr(_LG3)
    _K_LG4: tl.constexpr = tl.constexpr(_LG4)
    _K_S1: tl.constexpr = tl.constexpr(_S1)
    _K_S2: tl.constexpr = tl.constexpr(_S2)
    _K_S3: tl.constexpr = tl.constexpr(_S3)
    _K_C1: tl.constexpr = tl.constexpr(_C1)
    _K_C2: tl.constexpr = tl.constexpr(_C2)
    _K_C3: tl.constexpr = tl.constexpr(_C3)
    _K_PIO2: tl.constexpr = tl.constexpr(_PIO2)
    _K_M0: tl.constexpr = tl.constexpr(PHILOX_M0)
    _K_M1: tl.constexpr = tl.constexpr(PHILOX_M1)
    _K_W0: tl.constexpr = tl.constexpr(PHILOX_W0)
    _K_W1: tl.constexpr = tl.constexpr(PHILOX_W1)

    @triton.jit
    def _philox_u0_u1(j, k0, k1, NEAR: tl.constexpr):
        """Words u0, u1 of Philox4x32-10 with counter (j mod 2^32, j >> 32, 0, 0), key (k0, k1); j int64, or int32
        when NEAR (every pair index of the launch < 2^31: the counter's second word is 0)."""
        c0 = j.to(tl.uint32)  # truncation: j mod 2^32
        if NEAR:
            c1 = tl.zeros_like(c0)
        else:
            c1 = (j >> 32).to(tl.uint32)
        c2 = tl.zeros_like(c0)
        c3 = tl.zeros_like(c0)
        key0 = k0.to(tl.uint32)
        key1 = k1.to(tl.uint32)
        for _ in tl.static_range(10):
            # widen each 32-bit word explicitly: LLVM then emits one mul.wide.u32 for the whole 64-bit product
            p0 = c0.to(tl.uint64) * _K_M0
            p1 = c2.to(tl.uint64) * _K_M1
            c0, c1, c2, c3 = (p1 >> 32).to(tl.uint32) ^ c1 ^ key0, p1.to(tl.uint32), (p0 >> 32).to(tl.uint32) ^ c3 ^ key1, p0.to(tl.uint32)
            key0 = key0 + _K_W0  # uint32 arithmetic wraps mod 2^32
            key1 = key1 + _K_W1
        return c0, c1

    @triton.jit
    def _box_muller(u0, u1):
        """The op-for-op twin of noise._box_muller_nb on uint32 words (its integer steps rewritten in 32 bits)."""
        a = (u0.to(tl.int64) + 1).to(tl.float32) * 2.3283064365386963e-10  # f32(u0 + 1), one rounding; * 2^-32 exact
        bits = a.to(tl.int32, bitcast=True)
        k = (bits >> 23) - 127
        mant = bits & 0x7FFFFF
        fold = (mant + 0x4AFB0D) & 0x800000
        m = (mant | (fold ^ 0x3F800000)).to(tl.float32, bitcast=True)
        dk = (k + (fold >> 23)).to(tl.float32)
        f = m - 1.0
        s = tl.div_rn(f, f + 2.0)
        z = s * s
        w = z * z
        r_poly = z * (w * _K_LG3 + _K_LG1) + w * (w * _K_LG4 + _K_LG2)
        hfsq = f * f * 0.5
        log_a = dk * _K_LN2_HI - ((hfsq - (s * (hfsq + r_poly) + dk * _K_LN2_LO)) - f)
        r = tl.sqrt_rn(log_a * -2.0)
        # qq = (u1 + 2^29) >> 30 and t = u1 - qq * 2^30 without 64-bit ints: with u1 = a * 2^30 + b (b < 2^30),
        # qq = a + bit 29 of u1 and t = b - bit29 * 2^30, in [-2^29, 2^29)
        half = (u1 >> 29) & 1
        qq = (u1 >> 30) + half
        t = ((u1 & 0x3FFFFFFF).to(tl.int32) - (half << 30).to(tl.int32)).to(tl.float32) * 9.313225746154785e-10
        x = t * _K_PIO2
        x2 = x * x
        sn = ((x2 * _K_S3 + _K_S2) * x2 + _K_S1) * x2 * x + x
        cs = ((x2 * _K_C3 + _K_C2) * x2 + _K_C1) * x2 * x2 - x2 * 0.5 + 1.0
        q = (qq & 3).to(tl.int32)  # signed: the signs below are 1 - 2 * bit
        swap = (q & 1) == 1
        c_rot = tl.where(swap, sn, cs)
        s_rot = tl.where(swap, cs, sn)
        c_sign = (1 - 2 * (((q + 1) >> 1) & 1)).to(tl.float32)
        s_sign = (1 - 2 * (q >> 1)).to(tl.float32)
        return r * (c_rot * c_sign), r * (s_rot * s_sign)

    @triton.jit
    def _perturb_kernel(src_ptr, dst_ptr, n, offset, k0, k1, sigma, HAS_SRC: tl.constexpr, SRC_BF16: tl.constexpr,
                        DST_BF16: tl.constexpr, NEAR: tl.constexpr, BLOCK: tl.constexpr):
        """dst[i] = cast(f32(src[i]) + eps[offset + i] * sigma) for i < n (HAS_SRC), else dst[i] = eps[offset + i].

        bf16 tensors arrive as int16 views and are widened and rounded in integer ops, exactly as the numba kernel
        does (round to nearest even, NaN -> 0x7FC0 like torch's CPU cast): the same bits on every device, and
        Triton's interpreter (whose own bf16 cast truncates) computes them too."""
        if NEAR:  # 32-bit index arithmetic: every stream index of this launch (+ one block) is < 2^31
            pid = tl.program_id(0)
            lead = offset & 1
            first_pair = (offset >> 1) + pid * BLOCK
            j = first_pair + tl.arange(0, BLOCK)
            idx = 2 * pid * BLOCK - lead + tl.arange(0, 2 * BLOCK)
        else:
            pid = tl.program_id(0).to(tl.int64)
            first_pair = offset // 2 + pid * BLOCK
            j = first_pair + tl.arange(0, BLOCK).to(tl.int64)
            idx = 2 * first_pair - offset + tl.arange(0, 2 * BLOCK).to(tl.int64)
        u0, u1 = _philox_u0_u1(j, k0, k1, NEAR)
        z0, z1 = _box_muller(u0, u1)
        z = tl.interleave(z0, z1)  # stream elements 2 * first_pair ... 2 * first_pair + 2 * BLOCK - 1
        keep = (idx >= 0) & (idx < n)
        if HAS_SRC:
            if SRC_BF16:
                hbits = tl.load(src_ptr + idx, mask=keep, other=0).to(tl.uint32) & 0xFFFF
                x = (hbits << 16).to(tl.float32, bitcast=True)
            else:
                x = tl.load(src_ptr + idx, mask=keep, other=0.0).to(tl.float32)
            y = x + z * sigma
        else:
            y = z
        if DST_BF16:
            yb = y.to(tl.uint32, bitcast=True)
            rounded = (yb + 0x7FFF + ((yb >> 16) & 1)) >> 16
            out = tl.where(y != y, 0x7FC0, rounded).to(tl.int16)
        else:
            out = y.to(dst_ptr.dtype.element_ty)
        tl.store(dst_ptr + idx, out, mask=keep)


_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def launch(src: torch.Tensor | None, dst: torch.Tensor, offset: int, k0: int, k1: int, sigma: float) -> torch.Tensor:
    """Fill 1-D contiguous ``dst`` with ``cast(src + sigma * eps)`` (or ``eps`` when ``src`` is None), where eps is
    elements [offset, offset + dst.numel()) of the stream keyed (k0, k1). ``src`` may be ``dst`` (in place)."""
    if not AVAILABLE:
        raise RuntimeError("the fused noise kernel needs Triton (pip install triton, or a CUDA build of torch)")
    n = dst.numel()
    if dst.dim() != 1 or not dst.is_contiguous() or dst.dtype not in _DTYPES:
        raise ValueError(f"dst must be a contiguous 1-D fp32/bf16/fp16 tensor, got {tuple(dst.shape)} {dst.dtype}")
    if src is not None and (src.shape != dst.shape or not src.is_contiguous() or src.dtype not in _DTYPES
                            or src.device != dst.device):
        raise ValueError("src must be a contiguous fp32/bf16/fp16 tensor shaped like dst, on its device")
    if n == 0:
        return dst
    pairs = ((offset + n - 1) >> 1) - (offset >> 1) + 1
    grid = (triton.cdiv(pairs, BLOCK_PAIRS),)
    src_bf16 = src is not None and src.dtype == torch.bfloat16
    dst_bf16 = dst.dtype == torch.bfloat16
    src_arg = dst if src is None else src
    # Triton launches on the current device and stream: make the current device the tensors' own
    device_ctx = torch.cuda.device(dst.device) if dst.device.type == "cuda" else contextlib.nullcontext()
    with device_ctx:
        _launch(grid, src_arg.view(torch.int16) if src_bf16 else src_arg, dst.view(torch.int16) if dst_bf16 else dst,
                n, offset, k0, k1, sigma, src is not None, src_bf16, dst_bf16)
    return dst


def _launch(grid, src_arg, dst_arg, n, offset, k0, k1, sigma, has_src, src_bf16, dst_bf16) -> None:
    _perturb_kernel[grid](
        src_arg, dst_arg, n, int(offset), int(k0), int(k1), float(sigma),
        HAS_SRC=has_src, SRC_BF16=src_bf16, DST_BF16=dst_bf16,
        NEAR=offset + n + 2 * BLOCK_PAIRS < 2**31, BLOCK=BLOCK_PAIRS, num_warps=NUM_WARPS,
        enable_fp_fusion=False,  # no FMA contraction: the numba and torch twins round mul and add separately
    )
