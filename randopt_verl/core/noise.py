"""The canonical perturbation: a pure function of (seed, parameter name, flat element index).

A RandOpt candidate is (seed, sigma). Its noise must not depend on the device, dtype, FSDP sharding or
the rollout engine's layout, so that an expert found on a GPU cluster can be rebuilt bit for bit on a
laptop (docs/ARCHITECTURE.md, decision 1). The definition, versioned as ``NOISE_SPEC``:

key
    ``d = blake2b(f"{seed}\\x00{name}".encode(), digest_size=8).digest()``;
    ``k0 = d[0:4]``, ``k1 = d[4:8]`` read as little-endian uint32. Every tensor gets its own stream
    (the public RandOpt code re-seeds each tensor with the same seed, so same-shape tensors get
    identical noise; we do not copy that).
words
    Flat elements ``2j`` and ``2j+1`` of the row-major flattened full tensor come from one
    Philox4x32-10 block with counter ``(j mod 2**32, j >> 32, 0, 0)`` and key ``(k0, k1)``;
    of its four output words only ``u0, u1`` are used.
normals (Box-Muller, every step in IEEE fp32, round to nearest even)
    ``a = f32(u0 + 1) * 2**-32``, in ``[2**-32, 1]`` so the logarithm never sees 0;
    ``r = sqrt(-2 * log(a))``;
    the angle ``2*pi*b`` with ``b = u1 * 2**-32`` is reduced exactly in integers to a quadrant
    ``q = ((u1 + 2**29) >> 30) mod 4`` and a remainder ``t = f32(u1 - round(u1 / 2**30) * 2**30) * 2**-30``
    in ``[-1/2, 1/2)``, so ``2*pi*b = (pi/2) * (q + t)``;
    ``z[2j] = r * cos(2*pi*b)``, ``z[2j+1] = r * sin(2*pi*b)``.

``log``, ``sin`` and ``cos`` are *not* the platform's libm: libm, SLEEF (torch CPU) and CUDA's
intrinsics disagree in the last ulp, which after a bf16 cast would make a few weights differ between
machines. They are fixed fp32 polynomial kernels built only from +, -, *, / and sqrt, which IEEE 754
rounds identically everywhere (sqrt is taken in fp64 and rounded, because torch's CPU sqrt is not
correctly rounded): FreeBSD's ``logf`` reduction and polynomial (< 1 ulp) and Cephes'
``sinf``/``cosf`` polynomials on ``[-pi/4, pi/4]`` (a few 1e-8 relative). The same operation sequence is
written three times: a fused numba kernel (the CPU fast path), a fused Triton kernel (the CUDA fast path,
``noise_triton.py``) and plain torch tensor ops (any device; the reference). Their results agree bitwise,
which the tests check, as long as nothing fuses a multiply and an add into an FMA (numba does not without
``fastmath``; the Triton kernel is compiled with ``enable_fp_fusion=False``; torch runs each op as its own
kernel).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from numba import njit, prange

# the spec's constants (one definition for numba, torch and Triton)
from .noise_spec import (  # noqa: F401  NOISE_SPEC is read as noise.NOISE_SPEC
    _C1, _C2, _C3, _LG1, _LG2, _LG3, _LG4, _LN2_HI, _LN2_LO, _MASK32, _PIO2, _S1, _S2, _S3, _TWO_M30, _TWO_M32,
    NOISE_SPEC, PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, _f32,
)

# The same constants typed for numba (globals are frozen at compile time with their numpy type).
_U64_M0, _U64_M1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
_U64_W0, _U64_W1 = np.uint64(PHILOX_W0), np.uint64(PHILOX_W1)
_U64_MASK, _U64_32 = np.uint64(_MASK32), np.uint64(32)
_F_LN2_HI, _F_LN2_LO = np.float32(_LN2_HI), np.float32(_LN2_LO)
_F_LG1, _F_LG2, _F_LG3, _F_LG4 = (np.float32(c) for c in (_LG1, _LG2, _LG3, _LG4))
_F_S1, _F_S2, _F_S3 = np.float32(_S1), np.float32(_S2), np.float32(_S3)
_F_C1, _F_C2, _F_C3 = np.float32(_C1), np.float32(_C2), np.float32(_C3)
_F_PIO2 = np.float32(_PIO2)
_F_TWO_M32, _F_TWO_M30 = np.float32(_TWO_M32), np.float32(_TWO_M30)
_F_HALF, _F_ONE, _F_TWO, _F_MINUS2 = np.float32(0.5), np.float32(1.0), np.float32(2.0), np.float32(-2.0)

# Pairs per chunk of the torch path: bounds its int64 temporaries (~8 live x 8 B x chunk).
_TORCH_CHUNK_PAIRS = 1 << 21


def philox_key(seed: int, name: str) -> tuple[int, int]:
    """The Philox key (k0, k1) of one parameter's stream: blake2b-64 of ``f"{seed}\\x00{name}"``."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


# ---------------------------------------------------------------------------------------------------
# CPU fast path: numba. Philox words live in uint64 so numba never promotes mixed ints to float.
# error_model="numpy" drops the ZeroDivisionError check on ``/``; that check is a side exit that stops LLVM
# from vectorising the loop (AVX2: ~4x). The kernels are compiled without fastmath, so LLVM neither
# reassociates nor contracts into FMAs, and every fp32 op is the same IEEE op as in the torch twin.


@njit(inline="always", error_model="numpy")
def _philox4x32_10_nb(c0, c1, c2, c3, k0, k1):
    for _ in range(10):
        p0 = _U64_M0 * c0
        p1 = _U64_M1 * c2
        c0, c1, c2, c3 = (p1 >> _U64_32) ^ c1 ^ k0, p1 & _U64_MASK, (p0 >> _U64_32) ^ c3 ^ k1, p0 & _U64_MASK
        k0 = (k0 + _U64_W0) & _U64_MASK
        k1 = (k1 + _U64_W1) & _U64_MASK
    return c0, c1, c2, c3


@njit(inline="always", error_model="numpy")
def _box_muller_nb(u0, u1):
    # radius: a = f32(u0 + 1) * 2^-32 (via f64, exact, so one rounding as in torch's int64 -> f32), then
    # FreeBSD logf with the mantissa folded to [sqrt(1/2), sqrt(2))
    a = np.float32(np.float64(np.uint32(u0)) + 1.0) * _F_TWO_M32
    bits = np.int64(np.float32(a).view(np.int32))
    k = (bits >> 23) - 127
    mant = bits & 0x7FFFFF
    fold = (mant + 0x4AFB0D) & 0x800000
    m = np.int32(mant | (fold ^ 0x3F800000)).view(np.float32)
    dk = np.float32(np.int32(k + (fold >> 23)))
    f = m - _F_ONE
    s = f / (f + _F_TWO)
    z = s * s
    w = z * z
    r_poly = z * (w * _F_LG3 + _F_LG1) + w * (w * _F_LG4 + _F_LG2)
    hfsq = f * f * _F_HALF
    log_a = dk * _F_LN2_HI - ((hfsq - (s * (hfsq + r_poly) + dk * _F_LN2_LO)) - f)
    r = np.float32(np.sqrt(np.float64(log_a * _F_MINUS2)))  # correctly rounded, as the torch twin
    # angle: exact integer reduction to quadrant q and t in [-1/2, 1/2), then sin/cos of (pi/2) t
    u1i = np.int64(u1)
    qq = (u1i + 0x20000000) >> 30
    t = np.float32(np.int32(u1i - (qq << 30))) * _F_TWO_M30
    x = t * _F_PIO2
    x2 = x * x
    sn = ((x2 * _F_S3 + _F_S2) * x2 + _F_S1) * x2 * x + x
    cs = ((x2 * _F_C3 + _F_C2) * x2 + _F_C1) * x2 * x2 - x2 * _F_HALF + _F_ONE
    # rotate by q quarter turns: swap for odd q, cos negative for q in {1, 2}, sin for q in {2, 3}
    q = qq & 3
    swap = (q & 1) == 1
    c_rot = sn if swap else cs
    s_rot = cs if swap else sn
    c_sign = np.float32(np.int32(1 - 2 * (((q + 1) >> 1) & 1)))
    s_sign = np.float32(np.int32(1 - 2 * (q >> 1)))
    return r * (c_rot * c_sign), r * (s_rot * s_sign)


@njit(cache=True, error_model="numpy")
def _fill_pairs_nb(out, first_pair, npairs, k0, k1):
    """out[2p], out[2p+1] = the two normals of pair ``first_pair + p``, for p < npairs (serial)."""
    uk0, uk1 = np.uint64(k0), np.uint64(k1)
    zero = np.uint64(0)
    for p in range(npairs):
        j = first_pair + p
        u0, u1, _, _ = _philox4x32_10_nb(np.uint64(j & 0xFFFFFFFF), np.uint64(j >> 32), zero, zero, uk0, uk1)
        z0, z1 = _box_muller_nb(u0, u1)
        out[2 * p] = z0
        out[2 * p + 1] = z1


@njit(cache=True, error_model="numpy")
def _noise_serial_nb(out, offset, k0, k1):
    """Fill ``out`` with stream elements [offset, offset + len(out)); odd ends take half a pair."""
    n = out.shape[0]
    if n == 0:
        return
    start, end = offset, offset + n
    edge = np.empty(2, np.float32)
    if start & 1:
        _fill_pairs_nb(edge, start >> 1, 1, k0, k1)
        out[0] = edge[1]
        start += 1
    if start < end and end & 1:
        _fill_pairs_nb(edge, end >> 1, 1, k0, k1)
        out[n - 1] = edge[0]
        end -= 1
    if start < end:
        _fill_pairs_nb(out[start - offset : end - offset], start >> 1, (end - start) >> 1, k0, k1)


@njit(cache=True, error_model="numpy")
def _perturbed_f32_serial_nb(src, dst, offset, k0, k1, sigma):
    """dst = src + noise * sigma in fp32: the same two IEEE ops, in the same order, as ``perturbed``'s torch ops."""
    buf = np.empty(src.shape[0], np.float32)
    _noise_serial_nb(buf, offset, k0, k1)
    for i in range(src.shape[0]):
        dst[i] = src[i] + buf[i] * sigma


@njit(cache=True, error_model="numpy")
def _perturbed_bf16_serial_nb(src, dst, offset, k0, k1, sigma):
    """As ``_perturbed_f32_serial_nb`` on bf16 bit patterns (uint16): widen exactly, add in fp32, round to
    nearest even like torch's fp32 -> bf16 cast (NaN -> 0x7FC0)."""
    buf = np.empty(src.shape[0], np.float32)
    _noise_serial_nb(buf, offset, k0, k1)
    for i in range(src.shape[0]):
        x = np.uint32(np.uint32(src[i]) << np.uint32(16)).view(np.float32)
        y = x + buf[i] * sigma
        yb = np.int64(np.float32(y).view(np.uint32))
        rounded = np.uint16((yb + 0x7FFF + ((yb >> 16) & 1)) >> 16)
        dst[i] = np.uint16(0x7FC0) if y != y else rounded


# The parallel kernels split the range into blocks of 128 KiB of fp32 (L2-resident) and run the serial
# kernel on each. Below _PARALLEL_MIN elements the serial kernel is called directly: waking the thread
# pool costs from tens of microseconds to milliseconds on a busy machine, and a model has hundreds of
# small tensors (norms, biases).
_BLOCK = 32768
_PARALLEL_MIN = 1 << 18


@njit(parallel=True, cache=True, error_model="numpy")
def _noise_par_nb(out, offset, k0, k1):
    n = out.shape[0]
    for b in prange((n + _BLOCK - 1) // _BLOCK):
        lo, hi = b * _BLOCK, min((b + 1) * _BLOCK, n)
        _noise_serial_nb(out[lo:hi], offset + lo, k0, k1)


@njit(parallel=True, cache=True, error_model="numpy")
def _perturbed_f32_par_nb(src, dst, offset, k0, k1, sigma):
    n = src.shape[0]
    for b in prange((n + _BLOCK - 1) // _BLOCK):
        lo, hi = b * _BLOCK, min((b + 1) * _BLOCK, n)
        _perturbed_f32_serial_nb(src[lo:hi], dst[lo:hi], offset + lo, k0, k1, sigma)


@njit(parallel=True, cache=True, error_model="numpy")
def _perturbed_bf16_par_nb(src, dst, offset, k0, k1, sigma):
    n = src.shape[0]
    for b in prange((n + _BLOCK - 1) // _BLOCK):
        lo, hi = b * _BLOCK, min((b + 1) * _BLOCK, n)
        _perturbed_bf16_serial_nb(src[lo:hi], dst[lo:hi], offset + lo, k0, k1, sigma)


def _on_torch_threads(kernel, *args) -> None:
    """Run a parallel numba kernel on torch's thread count and leave torch's count as it was. numba's OpenMP
    threading layer shares libgomp with torch, and a parallel launch sets the OpenMP count to numba's own (every
    core by default): without this, an hf rollout server configured for 1 thread computed on every core after its
    first candidate, and replicas sharing a host oversubscribed it."""
    import numba

    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        kernel(*args)
    finally:
        torch.set_num_threads(threads)


def _noise_nb(out: np.ndarray, offset: int, k0: int, k1: int) -> None:
    if out.shape[0] >= _PARALLEL_MIN:
        _on_torch_threads(_noise_par_nb, out, offset, k0, k1)
    else:
        _noise_serial_nb(out, offset, k0, k1)


def _perturbed_nb(src: np.ndarray, dst: np.ndarray, offset: int, k0: int, k1: int, sigma: np.float32) -> None:
    f32 = src.dtype == np.float32
    if src.shape[0] >= _PARALLEL_MIN:
        _on_torch_threads(_perturbed_f32_par_nb if f32 else _perturbed_bf16_par_nb, src, dst, offset, k0, k1, sigma)
    else:
        (_perturbed_f32_serial_nb if f32 else _perturbed_bf16_serial_nb)(src, dst, offset, k0, k1, sigma)


@njit(cache=True, error_model="numpy")
def _words_nb(first_pair, npairs, k0, k1):
    """Philox words (u0, u1) of pairs [first_pair, first_pair + npairs) as uint32 arrays (for tests)."""
    w0 = np.empty(npairs, np.uint32)
    w1 = np.empty(npairs, np.uint32)
    uk0, uk1 = np.uint64(k0), np.uint64(k1)
    zero = np.uint64(0)
    for p in range(npairs):
        j = first_pair + p
        u0, u1, _, _ = _philox4x32_10_nb(np.uint64(j & 0xFFFFFFFF), np.uint64(j >> 32), zero, zero, uk0, uk1)
        w0[p] = u0
        w1[p] = u1
    return w0, w1


@njit(cache=True, error_model="numpy")
def philox4x32_10_numba(counter, key):
    """Philox4x32-10 of one block (numba path), for known-answer tests: 4 counter words, 2 key words."""
    c0, c1, c2, c3 = _philox4x32_10_nb(
        np.uint64(counter[0]), np.uint64(counter[1]), np.uint64(counter[2]), np.uint64(counter[3]),
        np.uint64(key[0]), np.uint64(key[1]),
    )
    return np.array([c0, c1, c2, c3], dtype=np.uint32)


# ---------------------------------------------------------------------------------------------------
# Any-device path: plain torch ops. int64 products of two uint32 may wrap past 2**63, but the low 64 bits
# are still right, so ``(p >> 32) & MASK`` and ``p & MASK`` are the exact hi and lo words.


def philox4x32_10_torch(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 on int64 tensors holding uint32 values (broadcasting); returns 4 int64 tensors."""
    for _ in range(10):
        p0 = c0 * PHILOX_M0
        p1 = c2 * PHILOX_M1
        hi1 = (p1 >> 32).bitwise_and_(_MASK32).bitwise_xor_(c1).bitwise_xor_(k0)
        hi0 = (p0 >> 32).bitwise_and_(_MASK32).bitwise_xor_(c3).bitwise_xor_(k1)
        c0, c1, c2, c3 = hi1, p1.bitwise_and_(_MASK32), hi0, p0.bitwise_and_(_MASK32)
        k0 = (k0 + PHILOX_W0) & _MASK32
        k1 = (k1 + PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def _words_torch(first_pair: int, npairs: int, k0: int, k1: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    j = torch.arange(first_pair, first_pair + npairs, dtype=torch.int64, device=device)
    zero = torch.zeros_like(j)
    u0, u1, _, _ = philox4x32_10_torch(j & _MASK32, j >> 32, zero, zero, k0, k1)
    return u0, u1


def _box_muller_torch(u0: torch.Tensor, u1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The op-for-op twin of ``_box_muller_nb`` on int64 tensors of uint32 words."""
    a = (u0 + 1).to(torch.float32) * _TWO_M32
    bits = a.view(torch.int32)
    k = (bits >> 23) - 127
    mant = bits & 0x7FFFFF
    fold = (mant + 0x4AFB0D) & 0x800000
    m = (mant | (fold ^ 0x3F800000)).view(torch.float32)
    dk = (k + (fold >> 23)).to(torch.float32)
    f = m - 1.0
    s = f / (f + 2.0)
    z = s * s
    w = z * z
    r_poly = z * (w * _LG3 + _LG1) + w * (w * _LG4 + _LG2)
    hfsq = f * f * 0.5
    log_a = dk * _LN2_HI - ((hfsq - (s * (hfsq + r_poly) + dk * _LN2_LO)) - f)
    # torch's CPU sqrt is not correctly rounded (fp32: ~15% of results off by an ulp; fp64: ~1%). An fp64
    # sqrt within ~0.5 ulp rounded to fp32 is: sqrt of an fp32 is never close enough to an fp32 midpoint.
    r = (log_a * -2.0).double().sqrt().float()
    qq = (u1 + 0x20000000) >> 30
    t = (u1 - (qq << 30)).to(torch.float32) * _TWO_M30
    x = t * _PIO2
    x2 = x * x
    sn = ((x2 * _S3 + _S2) * x2 + _S1) * x2 * x + x
    cs = ((x2 * _C3 + _C2) * x2 + _C1) * x2 * x2 - x2 * 0.5 + 1.0
    q = qq & 3
    swap = (q & 1) == 1
    c_rot = torch.where(swap, sn, cs)
    s_rot = torch.where(swap, cs, sn)
    c_sign = (1 - 2 * (((q + 1) >> 1) & 1)).to(torch.float32)
    s_sign = (1 - 2 * (q >> 1)).to(torch.float32)
    return r * (c_rot * c_sign), r * (s_rot * s_sign)


def _noise_torch(out: torch.Tensor, offset: int, k0: int, k1: int) -> None:
    n = out.numel()
    first, last = offset >> 1, (offset + n - 1) >> 1
    for start in range(first, last + 1, _TORCH_CHUNK_PAIRS):
        stop = min(start + _TORCH_CHUNK_PAIRS, last + 1)
        z0, z1 = _box_muller_torch(*_words_torch(start, stop - start, k0, k1, out.device))
        pairs = torch.stack((z0, z1), dim=1).reshape(-1)  # flat elements 2*start .. 2*stop - 1
        lo, hi = max(2 * start, offset), min(2 * stop, offset + n)
        out[lo - offset : hi - offset] = pairs[lo - 2 * start : hi - 2 * start]


# ---------------------------------------------------------------------------------------------------
# Public API


def noise_backend(device="cpu") -> str:
    """The backend ``backend="auto"`` picks on ``device``: "numba" on CPU, "triton" on CUDA when Triton imports,
    else "torch" (the reference, any device)."""
    device = torch.device(device)
    if device.type == "cpu":
        return "numba"
    from . import noise_triton

    return "triton" if noise_triton.supports(device) else "torch"


def noise(seed: int, name: str, numel: int, *, offset: int = 0, device="cpu", backend: str = "auto") -> torch.Tensor:
    """Elements [offset, offset + numel) of parameter ``name``'s standard-normal stream, as 1-D fp32.

    A slice equals the same slice of the full tensor's noise bitwise, so an FSDP shard (a contiguous
    flat range) gets its noise without generating the rest. ``backend``: "auto" (``noise_backend(device)``),
    "numba" (CPU only), "triton" (CUDA; CPU tensors under TRITON_INTERPRET=1) or "torch" (the reference;
    any device).
    """
    if numel < 0 or offset < 0:
        raise ValueError(f"numel and offset must be >= 0, got numel={numel}, offset={offset}")
    device = torch.device(device)
    if backend == "auto":
        backend = noise_backend(device)
    k0, k1 = philox_key(seed, name)
    if backend == "numba":
        if device.type != "cpu":
            raise ValueError("the numba backend runs on CPU only")
        out = np.empty(numel, dtype=np.float32)
        _noise_nb(out, offset, k0, k1)
        return torch.from_numpy(out)
    if backend == "triton":
        from . import noise_triton

        if not noise_triton.supports(device):
            raise ValueError(f"the triton backend does not run on {device} here (Triton installed: {noise_triton.AVAILABLE})")
        return noise_triton.launch(None, torch.empty(numel, dtype=torch.float32, device=device), offset, k0, k1, 0.0)
    if backend == "torch":
        out = torch.empty(numel, dtype=torch.float32, device=device)
        if numel:
            _noise_torch(out, offset, k0, k1)
        return out
    raise ValueError(f"unknown noise backend {backend!r}")


def _fused_device_path(flat: torch.Tensor) -> bool:
    if flat.device.type == "cpu" or flat.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    from . import noise_triton

    return noise_triton.supports(flat.device)


def perturbed(tensor: torch.Tensor, seed: int, name: str, sigma: float, *, offset: int = 0) -> torch.Tensor:
    """A new tensor ``(tensor.float() + sigma * noise).to(tensor.dtype)``, shaped like ``tensor``.

    ``offset`` is the flat index of ``tensor``'s first element within the full parameter ``name``
    (0 for a full tensor; the shard start for an FSDP shard). The sum is formed in fp32 whatever the
    dtype and rounded once (adding in bf16 would round the noise first, then the sum), and the
    input is never modified: base weights stay pristine (decision 2). On CPU, fp32 and bf16 go through
    one fused numba pass (same IEEE ops, same result, ~2x faster than noise + three torch passes); on
    CUDA, fp32, bf16 and fp16 go through one fused Triton pass when Triton is installed.
    """
    flat = tensor.detach().reshape(-1)
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.bfloat16) and flat.numel():
        k0, k1 = philox_key(seed, name)
        out = torch.empty_like(flat, memory_format=torch.contiguous_format)
        if flat.dtype == torch.float32:
            src, dst = flat.contiguous().numpy(), out.numpy()
        else:  # bf16 has no numpy dtype: hand numba the bit patterns
            src = flat.contiguous().view(torch.int16).numpy().view(np.uint16)
            dst = out.view(torch.int16).numpy().view(np.uint16)
        _perturbed_nb(src, dst, offset, k0, k1, np.float32(sigma))
        return out.reshape(tensor.shape)
    if _fused_device_path(flat):
        from . import noise_triton

        k0, k1 = philox_key(seed, name)
        src = flat.contiguous()
        out = noise_triton.launch(src, torch.empty_like(src), offset, k0, k1, sigma)
        return out.reshape(tensor.shape)
    eps = noise(seed, name, flat.numel(), offset=offset, device=flat.device, backend="torch")
    eps.mul_(sigma)  # fp32 * fp32(sigma)
    # adding bf16/fp16 in place promotes exactly to fp32, same as flat.float(); other dtypes go via float()
    eps.add_(flat if flat.dtype in (torch.float32, torch.bfloat16, torch.float16) else flat.float())
    return eps.to(tensor.dtype).reshape(tensor.shape)


def perturb_(tensor: torch.Tensor, seed: int, name: str, sigma: float, *, offset: int = 0) -> torch.Tensor:
    """In-place ``perturbed``: ``tensor`` becomes ``perturbed(tensor, ...)``; returns ``tensor``.

    A contiguous fp32/bf16/fp16 CUDA tensor is updated by the fused kernel in one pass (read and write once), which
    is also how ``tensor += sigma * eps`` accumulates in fp32 without a noise buffer (ES's update)."""
    with torch.no_grad():
        flat = tensor.detach().view(-1) if tensor.is_contiguous() else None
        if flat is not None and flat.numel() and _fused_device_path(flat):
            from . import noise_triton

            k0, k1 = philox_key(seed, name)
            noise_triton.launch(flat, flat, offset, k0, k1, sigma)
            return tensor
        return tensor.copy_(perturbed(tensor, seed, name, sigma, offset=offset))


def compare_devices(device="cuda", numel: int = 1_000_003, seed: int = 77, name: str = "model.norm.weight") -> list[str]:
    """Mismatches between ``device`` and the CPU for the canonical noise and ``perturbed`` (fp32, bf16): an empty
    list means the device reproduces the CPU bit for bit (what ``randopt-verl doctor`` checks before a GPU run).

    Covers an even and an odd offset and a counter past 2**32 (the Philox counter's second word), on the path
    ``backend="auto"`` takes there (``noise_backend(device)``)."""
    device = torch.device(device)
    problems = []
    for offset in (0, 5, (1 << 33) + 1):
        got = noise(seed, name, numel, offset=offset, device=device).cpu()
        ref = noise(seed, name, numel, offset=offset)
        if not torch.equal(got, ref):
            problems.append(f"noise(offset={offset}): {int((got != ref).sum())} of {numel} elements differ")
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(numel, generator=g) * 0.02
    for dtype in (torch.float32, torch.bfloat16):
        w = base.to(dtype)
        got = perturbed(w.to(device), seed, name, 1e-3, offset=3).cpu()
        ref = perturbed(w, seed, name, 1e-3, offset=3)
        if not torch.equal(got.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                           ref.view(torch.int16 if dtype == torch.bfloat16 else torch.int32)):
            problems.append(f"perturbed({dtype}): {int((got != ref).sum())} of {numel} elements differ")
    return problems
