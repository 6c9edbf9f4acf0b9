"""Cases for the fused Triton kernel run through Triton's CPU interpreter, compared bit for bit with the numba
kernel and the torch reference. Run by tests/core/test_noise_triton.py in a fresh interpreter:
    TRITON_INTERPRET=1 python -m pytest tests/core/triton_interpreter_cases.py
(the name does not start with test_, so a plain pytest run does not collect it without that variable).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("triton", reason="needs Triton (pip install triton)")

from randopt_verl.core import noise as N  # noqa: E402
from randopt_verl.core import noise_triton as T  # noqa: E402
from randopt_verl.core.noise import perturbed, philox_key  # noqa: E402

if not T.INTERPRETED:
    pytest.skip("run with TRITON_INTERPRET=1 set before Python starts", allow_module_level=True)

BLOCK_ELEMS = 2 * T.BLOCK_PAIRS  # stream elements per program


def _noise(seed, name, n, offset):
    k0, k1 = philox_key(seed, name)
    return T.launch(None, torch.empty(n, dtype=torch.float32), offset, k0, k1, 0.0)


def test_noise_equals_numba_on_slices():
    # odd and even starts and ends, lengths across program boundaries, a counter past 2**32 (second word)
    cases = [(0, 1), (1, 1), (0, 2), (1, 2), (3, 5), (0, BLOCK_ELEMS), (1, BLOCK_ELEMS), (0, BLOCK_ELEMS + 1),
             (BLOCK_ELEMS - 1, 3), (7, 3 * BLOCK_ELEMS + 5), ((1 << 33) + 1, 4099), ((1 << 32) - 3, 2 * BLOCK_ELEMS),
             (2**31 - 10_001, 3_001), (2**31 - 2 * BLOCK_ELEMS - 5, 7)]  # 32-bit index path near its bound, and just past
    for offset, n in cases:
        got = _noise(11, "layers.0.mlp.up_proj.weight", n, offset)
        ref = N.noise(11, "layers.0.mlp.up_proj.weight", n, offset=offset)
        assert torch.equal(got, ref), (offset, n, int((got != ref).sum()))


def test_golden_values():
    expected = ["0x1.86bca0p-1", "-0x1.1a7ab4p+0", "-0x1.4eb7e2p-4", "-0x1.2b1ab2p-1", "0x1.abac7cp-1", "0x1.491722p-2"]
    got = _noise(0, "model.embed_tokens.weight", 6, 0)
    assert [float(x) for x in got] == [float.fromhex(h) for h in expected]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_perturbed_equals_numba_and_torch_reference(dtype):
    n, offset = 3 * BLOCK_ELEMS + 17, 5
    w = (torch.randn(n, generator=torch.Generator().manual_seed(1)) * 0.05).to(dtype)
    k0, k1 = philox_key(4, "w")
    out = T.launch(w, torch.empty_like(w), offset, k0, k1, 2e-3)
    eps = N.noise(4, "w", n, offset=offset, backend="torch")
    ref = (w.float() + eps * 2e-3).to(dtype)  # the spec formula on the torch reference path
    assert torch.equal(out, ref)
    if dtype != torch.float16:  # numba's fused kernel covers fp32 and bf16
        assert torch.equal(out, perturbed(w, 4, "w", 2e-3, offset=offset))


def test_bf16_rounding_and_special_values():
    # ties to even, overflow to inf, infinities, subnormals, NaN (-> 0x7FC0 like torch's CPU cast)
    w = torch.tensor([0.0, -0.0, 1e38, -1e38, 3.3895e38, float("inf"), float("-inf"), 1e-40, float("nan")],
                     dtype=torch.bfloat16)
    k0, k1 = philox_key(1, "s")
    out = T.launch(w, torch.empty_like(w), 0, k0, k1, 1e-2)
    ref = perturbed(w, 1, "s", 1e-2)
    assert torch.equal(out.view(torch.int16), ref.view(torch.int16))
    # fp32 sums exactly halfway between two bf16 values round to the even one
    halfway = torch.tensor([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -(1.0 + 2.0**-8)], dtype=torch.float32)
    cast = T.launch(halfway, torch.empty(3, dtype=torch.bfloat16), 0, k0, k1, 0.0)
    assert torch.equal(cast, halfway.to(torch.bfloat16))


def test_in_place_and_fp32_to_bf16():
    n = BLOCK_ELEMS + 3
    acc = torch.randn(n)
    expected = perturbed(acc, 9, "acc", -0.37, offset=2)
    k0, k1 = philox_key(9, "acc")
    same = T.launch(acc, acc, 2, k0, k1, -0.37)  # src is dst: ES accumulates like this
    assert same is acc and torch.equal(acc, expected)
    w = torch.randn(n)
    out = T.launch(w, torch.empty(n, dtype=torch.bfloat16), 0, k0, k1, 1e-3)
    assert torch.equal(out, perturbed(w, 9, "acc", 1e-3).to(torch.bfloat16))


def test_box_muller_edge_words():
    """Extreme radius words and every quadrant boundary of the angle word, through the kernel's own _box_muller."""
    import triton
    import triton.language as tl

    specials = [0, 1, 2, 2**24 - 1, 2**24, 2**31, 2**32 - 2, 2**32 - 1]
    for b in range(0, 2**32 + 1, 2**29):
        specials += [max(b - 1, 0), b % 2**32, min(b + 1, 2**32 - 1)]
    u = np.array(sorted(set(specials)), dtype=np.int64)
    u0, u1 = torch.from_numpy(np.repeat(u, len(u))), torch.from_numpy(np.tile(u, len(u)))
    n = u0.numel()
    z0, z1 = torch.empty(n), torch.empty(n)

    @triton.jit
    def words_kernel(u0_ptr, u1_ptr, z0_ptr, z1_ptr, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        a, b = T._box_muller(tl.load(u0_ptr + i, mask=m, other=0), tl.load(u1_ptr + i, mask=m, other=0))
        tl.store(z0_ptr + i, a, mask=m)
        tl.store(z1_ptr + i, b, mask=m)

    words_kernel[(triton.cdiv(n, 1024),)](u0, u1, z0, z1, n, BLOCK=1024)
    t0, t1 = N._box_muller_torch(u0, u1)
    assert torch.equal(z0, t0) and torch.equal(z1, t1)


def test_public_api_routes_to_the_kernel():
    got = N.noise(3, "x", 5001, offset=3, backend="triton")
    assert torch.equal(got, N.noise(3, "x", 5001, offset=3))
    assert N.noise_backend("cpu") == "numba"
    with pytest.raises(ValueError, match="triton backend does not run"):
        N.noise(3, "x", 4, backend="triton", device="meta")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="contiguous 1-D"):
        T.launch(None, torch.empty(4, 4), 0, 1, 2, 0.0)
    with pytest.raises(ValueError, match="shaped like dst"):
        T.launch(torch.empty(3), torch.empty(4), 0, 1, 2, 0.0)


