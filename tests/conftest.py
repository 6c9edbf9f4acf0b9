"""Shared fixtures: a tiny model built offline, and verl-format toy data. Everything runs on CPU, no network."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# every Ray cluster a test starts is its own: never attach to (or, on shutdown, disturb) another cluster on the machine
os.environ.setdefault("RAY_ADDRESS", "local")


def pytest_addoption(parser):
    parser.addoption("--network", action="store_true", default=False,
                     help="also run the tests marked network (they download from PyPI or a model hub)")


def pytest_configure(config):
    config.addinivalue_line("markers", "network: downloads from the internet; skipped unless pytest --network")
    config.addinivalue_line("markers", "cpu_only: asserts CPU-only behaviour; skipped where CUDA is present")


def pytest_collection_modifyitems(config, items):
    network = None if config.getoption("--network") else pytest.mark.skip(reason="needs the network: pytest --network")
    cuda = None
    for item in items:
        if network is not None and "network" in item.keywords:
            item.add_marker(network)
        if "cpu_only" in item.keywords:
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if cuda:
                item.add_marker(pytest.mark.skip(reason="asserts CPU-only behaviour and CUDA is present"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from randopt_verl.assets.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_model")))


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict[str, str]:
    """Two-number addition, verl rows, scored by reward_fns/gsm8k.py's flexible (last number) mode."""
    import pandas as pd

    out = tmp_path_factory.mktemp("toy_data")
    rows = []
    for i in range(48):
        a, b = (i * 7) % 20, (i * 11) % 17
        rows.append({
            "data_source": "toy_addition",
            "prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(a + b)},
            "extra_info": {"split": "train" if i < 32 else "test", "index": i},
        })
    pd.DataFrame(rows[:32]).to_parquet(out / "train.parquet")
    pd.DataFrame(rows[32:]).to_parquet(out / "test.parquet")
    return {"train": str(out / "train.parquet"), "test": str(out / "test.parquet")}


class TiedLM(torch.nn.Module):
    """Embedding tied to the output head (like Qwen2.5-0.5B's ``lm_head.weight``), a norm and an integer buffer;
    seeded weights."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed_tokens = torch.nn.Embedding(50, 8)
        self.proj = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.lm_head = torch.nn.Linear(8, 50, bias=False)
        self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("position_ids", torch.arange(8))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        self.to(dtype)


@pytest.fixture
def tied_lm():
    """``tied_lm(dtype)``: a tiny module with a tied weight (core/population and the worker's stream test it)."""
    return TiedLM
