"""ES update math: z-scores and theta <- theta + (alpha/N) sum z_n eps_n, shard-wise equal to full-tensor."""

import numpy as np
import pytest
import torch

from randopt_verl.core.es_update import es_update_, zscore
from randopt_verl.core.noise import noise


def test_zscore_population_std():
    r = np.array([1.0, 2.0, 3.0, 6.0])
    expected = (r - 3.0) / (np.sqrt(((r - 3.0) ** 2).mean()) + 1e-8)
    np.testing.assert_allclose(zscore(r), expected, rtol=0, atol=1e-15)
    assert np.all(zscore([0.4, 0.4, 0.4]) == 0)  # exactly: no update from a flat population
    assert zscore([]).shape == (0,)
    assert zscore([1.0, 3.0]).tolist() == pytest.approx([-1.0, 1.0], abs=1e-7)


def test_es_update_matches_hand_computation():
    theta = torch.linspace(-1, 1, 15).reshape(3, 5)
    seeds, rewards, alpha = [11, 22, 33], [0.2, 0.9, 0.4], 5e-2
    z = zscore(rewards)
    expected = theta.double().clone()
    for s, zn in zip(seeds, z):
        expected += alpha / 3 * zn * noise(s, "w", 15).double().reshape(3, 5)
    out = es_update_(theta, "w", seeds, z, alpha)
    assert out is theta
    torch.testing.assert_close(theta.double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shardwise_update_equals_full_update(dtype):
    full = (torch.randn(7, 3, generator=torch.Generator().manual_seed(1)) * 0.1).to(dtype)
    shards = [full[0:2].clone(), full[2:5].clone(), full[5:7].clone()]  # offsets 0, 6, 15 (odd one included)
    seeds, z = [5, 6, 7, 8], zscore([0.1, 0.5, 0.3, 0.9])
    es_update_(full, "layer.weight", seeds, z, 1e-2)
    for shard, lo in zip(shards, (0, 2, 5)):
        es_update_(shard, "layer.weight", seeds, z, 1e-2, offset=lo * 3)
    assert torch.equal(torch.cat(shards), full)


def test_bf16_update_is_accumulated_in_fp32():
    theta = torch.full((4096,), 1.0, dtype=torch.bfloat16)  # bf16 spacing at 1.0 is 2**-7
    seeds, z = list(range(30)), zscore(np.linspace(0, 1, 30))
    expected = theta.float().clone()
    acc = torch.zeros(4096)
    for s, zn in zip(seeds, z):
        acc += noise(s, "b", 4096) * float(zn)
    expected = (expected + acc * (5e-3 / 30)).to(torch.bfloat16)
    es_update_(theta, "b", seeds, z, 5e-3)
    assert torch.equal(theta, expected)
    assert (theta != 1.0).any()


def test_es_update_edge_cases():
    t = torch.ones(5)
    es_update_(t, "w", [], [], 1.0)
    assert torch.equal(t, torch.ones(5))
    es_update_(t, "w", [1, 2], [0.0, 0.0], 1.0)  # equal rewards: no move
    assert torch.equal(t, torch.ones(5))
    with pytest.raises(ValueError):
        es_update_(t, "w", [1, 2], [1.0], 1.0)


def test_es_raises_the_reward_of_a_toy_objective():
    """The full ES loop (canonical noise, z-scores, fp32 update) climbs reward = -||theta - target||^2."""
    import numpy as np
    import torch

    from randopt_verl.core.es_update import es_update_, zscore
    from randopt_verl.core.noise import perturbed

    gen = torch.Generator().manual_seed(0)
    target = torch.randn(256, generator=gen)
    theta = torch.zeros(256)

    def reward(w):
        return -float(((w - target) ** 2).sum())

    start = reward(theta)
    rng = np.random.default_rng(0)
    for _ in range(30):
        seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=30)]
        rewards = [reward(perturbed(theta, s, "w", 0.05)) for s in seeds]
        es_update_(theta, "w", seeds, zscore(rewards), alpha=0.5)
    assert reward(theta) > 0.5 * start  # more than halfway to the optimum (start is about -256)
