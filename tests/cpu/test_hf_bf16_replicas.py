"""bf16 hf rollout through verl's real trainer (tiny model): the candidate a replica holds is bf16(fp32 base + σ·ε)
by both paths, and 1 and 2 replicas write the same ledger. tests/trainers/test_randopt.py runs the same checks with
the configured dtype; this file pins bf16 so they hold on a CPU whose "auto" picks fp32 too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from randopt_verl.core import noise
from randopt_verl.core.population import Candidate, ParamFilter, tied_aliases
from randopt_verl.core.ledger import Ledger

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUNS: dict[int, dict] = {}


def overrides(tiny_model, toy_data, run_dir: Path, n_ranks: int) -> list[str]:
    return [
        "trainer=randopt",
        "hardware=cpu",
        "actor_rollout_ref.rollout.dtype=bfloat16",
        f"actor_rollout_ref.model.path={tiny_model}",
        f"data.train_files={toy_data['train']}",
        f"data.val_files={toy_data['test']}",
        f"reward.custom_reward_function.path={ROOT / 'tests' / 'fixtures' / 'toy_reward.py'}",
        "data.max_prompt_length=64",
        "data.max_response_length=8",
        "data.train_batch_size=4",
        f"trainer.n_gpus_per_node={n_ranks}",
        f"trainer.default_local_dir={run_dir}",
        "trainer.logger=[console]",
        "trainer.project_name=randopt_verl_tests",
        f"trainer.experiment_name={run_dir.name}",
        # large sigmas: the tiny random model then answers differently per candidate, so equal ledgers mean something
        "randopt.population_size=4",
        "randopt.sigmas=[0.3,0.6]",
        "randopt.top_k=2",
        "randopt.ensemble_ks=[1,2]",
        "randopt.selection_size=8",
        "randopt.test_size=4",
        "randopt.controls.population=2",
        "randopt.controls.random_k_draws=3",
        "randopt.plots=false",
    ]


def ledger(run_dir: Path) -> dict:
    rows = Ledger(run_dir / "ledger.jsonl").read()
    return {i: (r["seed"], r["sigma"], r["scores"], r["preds"]) for i, r in rows.by_index.items()}


@pytest.mark.parametrize("n_ranks", [2, 1])
def test_bf16_replicas(n_ranks, tiny_model, toy_data, tmp_path_factory, monkeypatch):
    import ray

    from randopt_verl.inprocess import compose, trainer_session

    monkeypatch.setenv("RANDOPT_VERL_ROLLOUT_THREADS", "1")
    run_dir = tmp_path_factory.mktemp(f"bf16_r{n_ranks}")
    with trainer_session(compose(overrides(tiny_model, toy_data, run_dir, n_ranks))) as trainer:
        if n_ranks == 2:
            base = trainer.actor_rollout_wg.named_weights()[0]  # the FSDP actor's fp32 weights
            server = trainer.replicas[0].server_handle
            cand = Candidate(index=0, seed=1234, sigma=0.05)
            aliases = tied_aliases(list(base.items()))
            want = {n: noise.perturbed(w, cand.seed, aliases.get(n, n), cand.sigma).to(torch.bfloat16)
                    for n, w in base.items()}
            for how in ("sync", "server"):  # perturb-at-sync through verl's stream, then in place
                # the base through verl's sync first: a synced candidate becomes the server's pristine weights
                trainer.load_candidates({}, how="sync", param_filter=ParamFilter())
                trainer.load_candidates({0: cand}, how=how, param_filter=ParamFilter())
                got = ray.get(server.get_weights.remote())
                assert all(torch.equal(got[n], want[n]) for n in got), how
            trainer.load_candidates({}, how="sync", param_filter=ParamFilter())
        trainer.fit(None)
        stats = ray.get(trainer.replicas[0].server_handle.stats.remote())
        assert stats["dtype"] == "torch.bfloat16" and stats["prefix_encoded"] > 0
    RUNS[n_ranks] = ledger(run_dir)
    scores = {tuple(row[2]) for row in RUNS[n_ranks].values()}
    assert len(scores) > 1, "every candidate scored the same: the comparison below would prove nothing"
    if len(RUNS) == 2:
        assert RUNS[1] == RUNS[2]
