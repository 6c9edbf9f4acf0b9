"""The canonical noise: Philox known answers, the spec read independently, slice and backend agreement,
Gaussian statistics, per-tensor independence, and perturbed()/perturb_() semantics."""

import hashlib
import math

import numpy as np
import pytest
import torch
from numba import njit

from randopt_verl.core import noise as N
from randopt_verl.core.noise import NOISE_SPEC, noise, perturb_, perturbed, philox_key

# Random123 known-answer vectors for philox4x32-10: (counter, key, output)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers_numba(counter, key, expected):
    out = N.philox4x32_10_numba(np.array(counter, np.uint64), np.array(key, np.uint64))
    assert tuple(int(x) for x in out) == expected


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers_torch(counter, key, expected):
    c = [torch.tensor([x], dtype=torch.int64) for x in counter]
    out = N.philox4x32_10_torch(*c, *key)
    assert tuple(int(x) for x in out) == expected


def _philox_py(counter, key):
    """Philox4x32-10 in Python ints, straight from the paper (independent of both implementations)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0), p1 & 0xFFFFFFFF, ((p0 >> 32) ^ c3 ^ k1), p0 & 0xFFFFFFFF
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c0, c1, c2, c3


def _spec_py(seed, name, i):
    """Element i of the stream, from the module docstring's definition, in float64 libm math."""
    d = hashlib.blake2b(f"{seed}\x00{name}".encode(), digest_size=8).digest()
    key = (int.from_bytes(d[:4], "little"), int.from_bytes(d[4:], "little"))
    j = i // 2
    u0, u1, _, _ = _philox_py((j & 0xFFFFFFFF, j >> 32, 0, 0), key)
    r = math.sqrt(-2.0 * math.log((u0 + 1) * 2.0**-32))
    angle = 2.0 * math.pi * u1 * 2.0**-32
    return r * (math.cos(angle) if i % 2 == 0 else math.sin(angle))


def test_matches_independent_reading_of_the_spec():
    # the fp32 kernels differ from float64 libm by fp32 resolution; near a = 1 a uniform in fp32 has
    # spacing 2**-24, which bounds |dz| by about 1e-5 for small radii
    idx = [0, 1, 2, 3, 101, 4096, 123457, (1 << 33) + 1, (1 << 33) + 2]
    for seed, name in [(0, "model.embed_tokens.weight"), (2**31 - 1, "lm_head.weight")]:
        for i in idx:
            got = float(noise(seed, name, 1, offset=i)[0])
            assert abs(got - _spec_py(seed, name, i)) < 2e-5, (seed, name, i)


def test_golden_values_pin_the_spec():
    # regression pins: if these change, the noise changed and NOISE_SPEC must get a new version
    assert NOISE_SPEC == "philox4x32-10/blake2b8-le-key/box-muller-f32-portable/v1"
    assert philox_key(0, "model.embed_tokens.weight") == (3491579452, 2923628732)
    expected = ["0x1.86bca0p-1", "-0x1.1a7ab4p+0", "-0x1.4eb7e2p-4", "-0x1.2b1ab2p-1", "0x1.abac7cp-1", "0x1.491722p-2"]
    got = noise(0, "model.embed_tokens.weight", 6)
    assert [float(x) for x in got] == [float.fromhex(h) for h in expected]
    expected_far = ["0x1.18a5a4p-1", "-0x1.c25a1ap+0", "0x1.5665fep-1", "0x1.181e14p-1"]
    got_far = noise(12345, "lm_head.weight", 4, offset=(1 << 33) + 1)
    assert [float(x) for x in got_far] == [float.fromhex(h) for h in expected_far]


def test_same_inputs_same_noise_and_different_inputs_differ():
    a = noise(7, "w", 1001)
    assert a.dtype == torch.float32 and a.shape == (1001,)
    assert torch.equal(a, noise(7, "w", 1001))
    assert not torch.equal(a, noise(8, "w", 1001))
    assert not torch.equal(a, noise(7, "w2", 1001))
    assert noise(7, "w", 0).shape == (0,)
    with pytest.raises(ValueError):
        noise(7, "w", 3, offset=-1)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_slices_equal_full_tensor_bitwise(backend):
    total = 20_003
    full = noise(11, "layers.0.mlp.up_proj.weight", total, backend=backend)
    rng = np.random.default_rng(0)
    cases = [(o, n) for o in range(5) for n in range(6)] + [(total - 1, 1), (0, total), (1, total - 1)]
    cases += [(int(o), int(rng.integers(0, total - o + 1))) for o in rng.integers(0, total, 100)]
    for o, n in cases:
        got = noise(11, "layers.0.mlp.up_proj.weight", n, offset=o, backend=backend)
        assert torch.equal(got, full[o : o + n]), (o, n)


def test_numba_and_torch_paths_agree_bitwise(monkeypatch):
    k0, k1 = philox_key(3, "x")
    w0, w1 = N._words_nb(5, 100_000, k0, k1)
    t0, t1 = N._words_torch(5, 100_000, k0, k1, "cpu")
    assert np.array_equal(w0.astype(np.int64), t0.numpy()) and np.array_equal(w1.astype(np.int64), t1.numpy())
    n = 200_001
    for offset in (0, 3, (1 << 33) + 7):  # far counters: j >= 2**32 uses the counter's second word
        assert torch.equal(noise(3, "x", n, offset=offset, backend="numba"), noise(3, "x", n, offset=offset, backend="torch"))
    monkeypatch.setattr(N, "_TORCH_CHUNK_PAIRS", 1000)  # many chunk boundaries of the torch path
    assert torch.equal(noise(3, "x", 10_001, offset=1, backend="numba"), noise(3, "x", 10_001, offset=1, backend="torch"))


def test_parallel_and_serial_kernels_agree():
    # big tensors run block-parallel (blocks start at odd stream offsets here), small ones serially
    n, offset = N._PARALLEL_MIN + 12_345, 3
    k0, k1 = philox_key(8, "big")
    par, ser = np.empty(n, np.float32), np.empty(n, np.float32)
    N._noise_par_nb(par, offset, k0, k1)
    N._noise_serial_nb(ser, offset, k0, k1)
    assert np.array_equal(par, ser)
    assert np.array_equal(noise(8, "big", n, offset=offset).numpy(), ser)
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(n).to(dtype)
        expected = (w.float() + 1e-3 * torch.from_numpy(ser)).to(dtype)
        assert torch.equal(perturbed(w, 8, "big", 1e-3, offset=offset), expected)


@njit(cache=True, error_model="numpy")
def _box_muller_words_nb(u0, u1):
    z0 = np.empty(u0.shape[0], np.float32)
    z1 = np.empty(u0.shape[0], np.float32)
    for i in range(u0.shape[0]):
        z0[i], z1[i] = N._box_muller_nb(np.uint64(u0[i]), np.uint64(u1[i]))
    return z0, z1


def test_box_muller_edge_words_agree_bitwise():
    # extremes of the radius word and every quadrant boundary of the angle word (+-1 around it)
    specials = [0, 1, 2, 2**24 - 1, 2**24, 2**31, 2**32 - 2, 2**32 - 1]
    for b in range(0, 2**32 + 1, 2**29):
        specials += [max(b - 1, 0), b % 2**32, min(b + 1, 2**32 - 1)]
    u = np.array(sorted(set(specials)), dtype=np.int64)
    u0, u1 = np.repeat(u, len(u)), np.tile(u, len(u))
    z0, z1 = _box_muller_words_nb(u0.astype(np.uint32), u1.astype(np.uint32))
    t0, t1 = N._box_muller_torch(torch.from_numpy(u0), torch.from_numpy(u1))
    assert torch.equal(torch.from_numpy(z0), t0) and torch.equal(torch.from_numpy(z1), t1)
    assert torch.isfinite(t0).all() and torch.isfinite(t1).all()
    assert float(t0.abs().max()) < 6.7 and float(t1.abs().max()) < 6.7  # r <= sqrt(64 ln 2)


def test_standard_normal_statistics():
    n = 2_000_000
    z = noise(2024, "stats", n).double()
    se = 1 / math.sqrt(n)
    assert abs(z.mean()) < 5 * se
    assert abs(z.std() - 1) < 5 * math.sqrt(0.5) * se  # sd of the sample std is ~ 1/sqrt(2n)
    assert abs(((z - z.mean()) ** 3).mean()) < 5 * math.sqrt(6) * se  # skewness 0
    assert abs((z**4).mean() - 3) < 5 * math.sqrt(96) * se  # kurtosis 3 (a uniform gives 1.8)
    # Kolmogorov-Smirnov against N(0,1): D < 1.95/sqrt(n) is the 0.1% level
    zs, _ = torch.sort(z)
    cdf = torch.special.ndtr(zs)
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    d = max(float((grid - cdf).max()), float((cdf - grid + 1 / n).max()))
    assert d < 1.95 * se
    # tails: P(|z| > 3) = 0.0026998, P(|z| > 4) = 6.334e-5
    for k, p in ((3, 0.0026998), (4, 6.334e-5)):
        count = int((z.abs() > k).sum())
        assert abs(count - n * p) < 5 * math.sqrt(n * p), (k, count)
    # the two halves of a Box-Muller pair and neighbouring pairs are uncorrelated
    assert abs(float(torch.corrcoef(torch.stack([z[0::2], z[1::2]]))[0, 1])) < 5 * math.sqrt(2) * se
    assert abs(float(torch.corrcoef(torch.stack([z[:-2], z[2:]]))[0, 1])) < 5 * se


def test_tensors_get_independent_streams():
    # the defect we fix: reseeding every tensor with the same seed gives same-shape tensors equal noise
    n = 1_000_000
    a = noise(42, "model.layers.0.self_attn.q_proj.weight", n)
    b = noise(42, "model.layers.0.self_attn.o_proj.weight", n)
    c = noise(43, "model.layers.0.self_attn.q_proj.weight", n)
    bound = 5 / math.sqrt(n)
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < bound
    assert abs(float(torch.corrcoef(torch.stack([a, c]))[0, 1])) < bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_perturbed_is_fp32_sum_cast_back(dtype):
    w = (torch.randn(257, 33, generator=torch.Generator().manual_seed(0)) * 0.05).to(dtype)
    before = w.clone()
    out = perturbed(w, 5, "w", 2e-3)
    assert torch.equal(w, before), "input must be untouched"
    assert out.dtype == dtype and out.shape == w.shape and out.data_ptr() != w.data_ptr()
    expected = (w.float() + 2e-3 * noise(5, "w", w.numel()).reshape(w.shape)).to(dtype)
    assert torch.equal(out, expected)
    if dtype == torch.bfloat16:
        # adding in bf16 would round differently: the fp32 sum is what defines the candidate
        naive = w + (2e-3 * noise(5, "w", w.numel()).reshape(w.shape)).to(dtype)
        assert not torch.equal(out, naive)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_perturbed_shard_equals_slice_of_full(dtype):
    w = torch.randn(13, 7).to(dtype)
    full = perturbed(w, 9, "p", 1e-2)
    for lo, hi in ((0, 4), (4, 9), (9, 13), (3, 4)):
        shard = w[lo:hi]
        assert torch.equal(perturbed(shard, 9, "p", 1e-2, offset=lo * 7), full[lo:hi])


def test_perturbed_bf16_special_values():
    w = torch.tensor([0.0, -0.0, 1e38, -1e38, 3.3895e38, float("inf"), float("-inf"), 1e-40], dtype=torch.bfloat16)
    expected = (w.float() + 1e-2 * noise(1, "s", w.numel())).to(torch.bfloat16)
    assert torch.equal(perturbed(w, 1, "s", 1e-2), expected)
    nan = perturbed(torch.tensor([float("nan")], dtype=torch.bfloat16), 1, "s", 1e-2)
    assert torch.isnan(nan).all()


def test_perturb_in_place_on_a_parameter():
    p = torch.nn.Parameter(torch.randn(4, 5))
    expected = perturbed(p, 3, "p", 1e-3)
    ptr = p.data_ptr()
    assert perturb_(p, 3, "p", 1e-3) is p
    assert p.data_ptr() == ptr and torch.equal(p.detach(), expected)


def test_non_contiguous_input():
    w = torch.randn(6, 8).t()  # non-contiguous view; its flat order is the row-major order of w.t()
    out = perturbed(w, 2, "t", 1e-2)
    assert torch.equal(out, perturbed(w.contiguous(), 2, "t", 1e-2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_torch_reference_path_equals_cpu_bitwise():
    # the unfused torch path is the reference on any device (the fused Triton kernel: tests/core/test_noise_triton.py)
    n = 3_000_001
    for offset in (0, 5, (1 << 33) + 1):
        cpu = noise(77, "model.norm.weight", n, offset=offset)
        gpu = noise(77, "model.norm.weight", n, offset=offset, device="cuda", backend="torch")
        assert gpu.device.type == "cuda"
        assert torch.equal(gpu.cpu(), cpu)


def test_noise_backend_on_cpu_and_compare_devices_on_cpu():
    assert N.noise_backend("cpu") == "numba"
    assert N.compare_devices("cpu", numel=1001) == []  # the check itself: CPU against CPU has nothing to report


def test_kernel_module_imports_without_triton(monkeypatch):
    """Without Triton (a CPU machine) the kernel module still imports; CUDA noise then takes the torch path."""
    import importlib.util
    import sys

    from randopt_verl.core import noise_triton

    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("randopt_verl.core._noise_triton_without", noise_triton.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert not mod.AVAILABLE and not mod.supports("cuda") and not mod.supports("cpu")
    with pytest.raises(RuntimeError, match="needs Triton"):
        mod.launch(None, torch.empty(3), 0, 1, 2, 0.0)
    monkeypatch.setitem(sys.modules, "randopt_verl.core.noise_triton", mod)
    monkeypatch.setattr(sys.modules["randopt_verl.core"], "noise_triton", mod)
    assert N.noise_backend("cuda") == "torch"


def test_parallel_kernels_leave_torchs_thread_count_alone():
    """A process set to 1 torch thread (an hf rollout replica sharing the host) is still on 1 thread after the
    noise's parallel numba kernels ran (numba's OpenMP layer shares libgomp with torch). A fresh process: the
    count is process state, and numba's threading layer starts once per process."""
    import subprocess
    import sys

    code = ("import torch\n"
            "from randopt_verl.core.noise import noise, perturbed\n"
            "torch.set_num_threads(1)\n"
            "x = torch.zeros(1 << 19)\n"
            "perturbed(x, 1, 'w', 0.01); perturbed(x.bfloat16(), 1, 'w', 0.01); noise(1, 'w', 1 << 19)\n"
            "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "1"
