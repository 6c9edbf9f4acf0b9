"""The constants of the canonical noise spec (core/noise.py's docstring defines the operations): its version string,
Philox4x32-10's multipliers and Weyl increments, and the fp32 coefficients of the portable logf / sinf / cosf.

One definition for the three writings of the spec: the numba kernel and the torch reference (core/noise.py) and the
fused Triton kernel (core/noise_triton.py). Every float is exactly representable in fp32.
"""

from __future__ import annotations

import numpy as np

NOISE_SPEC = "philox4x32-10/blake2b8-le-key/box-muller-f32-portable/v1"

# Philox4x32 (Salmon et al. 2011, Random123).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def _f32(x: float) -> float:
    """x rounded to fp32, returned as a Python float that is exactly representable in fp32."""
    return float(np.float32(x))


# logf: FreeBSD msun e_logf.c / k_logf.h (hex-exact fp32 constants).
_LN2_HI = _f32(float.fromhex("0x1.62e3p-1"))  # 0x3f317180
_LN2_LO = _f32(float.fromhex("0x1.2fefa2p-17"))  # 0x3717f7d1
_LG1 = _f32(float.fromhex("0xaaaaaa.0p-24"))
_LG2 = _f32(float.fromhex("0xccce13.0p-25"))
_LG3 = _f32(float.fromhex("0x91e9ee.0p-25"))
_LG4 = _f32(float.fromhex("0xf89e26.0p-26"))
# sinf/cosf on [-pi/4, pi/4]: Cephes single precision coefficients.
_S1 = _f32(-1.6666654611e-1)
_S2 = _f32(8.3321608736e-3)
_S3 = _f32(-1.9515295891e-4)
_C1 = _f32(4.166664568298827e-2)
_C2 = _f32(-1.388731625493765e-3)
_C3 = _f32(2.443315711809948e-5)
_PIO2 = _f32(np.pi / 2)
_TWO_M32 = 2.0**-32
_TWO_M30 = 2.0**-30
