"""trainer=randopt through verl's real trainer path on CPU (tiny model, hf replicas, verl's reward loop).

One search config, run three ways: 2 FSDP ranks / 2 replicas in process, 1 rank / 1 replica in process, and as a
subprocess through `python -m randopt_verl.main` killed with SIGKILL mid-search then finished by verl's own
entry point. All three must write the same ledger and top-K."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from randopt_verl.core import noise
from randopt_verl.core.population import Candidate, ParamFilter, tied_aliases
from randopt_verl.core.rundir import Ledger, read_json

from randopt_verl.inprocess import compose, trainer_session

pytestmark = pytest.mark.slow

SEARCH = [
    "trainer=randopt",
    "randopt.population_size=5",
    "randopt.sigmas=[0.02,0.05]",
    "randopt.top_k=2",
    "randopt.ensemble_ks=[1,2]",
    "randopt.selection_size=8",
    "randopt.test_size=6",
    "randopt.controls.population=4",
    "randopt.controls.random_k_draws=5",
]
RUNS: dict[str, Path] = {}


def _ledger(run_dir: Path) -> dict[int, tuple]:
    rows = Ledger(run_dir / "ledger.jsonl").read()
    assert not rows.duplicates, "a candidate was written twice"
    return {i: (r["seed"], r["sigma"], r["scores"], r["preds"]) for i, r in rows.by_index.items()}


def _topk(run_dir: Path) -> list:
    return [(e["index"], e["selection_score"]) for e in read_json(run_dir / "topk.json")["experts"]]


def test_two_replicas_weights_and_search(common, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ro_r2")
    config = compose(SEARCH + common(run_dir, n_ranks=2))
    with trainer_session(config) as trainer:
        base = trainer.actor_rollout_wg.named_weights()[0]
        servers = [rep.server_handle for rep in trainer.replicas]
        assert len(servers) == 2
        cand = Candidate(index=0, seed=1234, sigma=0.05)
        aliases = tied_aliases(list(base.items()))

        # perturb-at-sync: replica 0 gets base + sigma*eps exactly, replica 1 (no candidate) the base
        trainer.load_candidates({0: cand}, how="sync", param_filter={})
        got0, got1 = (trainer_get(s) for s in servers)
        for name, w in base.items():
            expected = noise.perturbed(w, cand.seed, aliases.get(name, name), cand.sigma)
            assert torch.equal(got0[name], expected), name
            assert torch.equal(got1[name], w), name

        # the hf backend's in-place path gives the very same weights, then restores the base exactly
        trainer.load_candidates({}, how="sync", param_filter={})
        trainer.load_candidates({0: cand}, how="server", param_filter={})
        assert all(torch.equal(trainer_get(servers[0])[n], got0[n]) for n in base)
        trainer.load_candidates({}, how="server", param_filter={})
        assert all(torch.equal(trainer_get(servers[0])[n], base[n]) for n in base)

        trainer.fit(None)
        after = trainer.actor_rollout_wg.named_weights()[0]
        assert all(torch.equal(after[n], base[n]) for n in base), "the search modified the actor's weights"

    for f in ("manifest.json", "ledger.jsonl", "topk.json", "results.json", "metrics.jsonl"):
        assert (run_dir / f).exists(), f
    ledger = _ledger(run_dir)
    assert sorted(ledger) == [-1, 0, 1, 2, 3, 4]  # base row + 5 candidates
    # the toy reward raises on the two selection items whose answer is 19: recorded, scored 0, the run went on
    for row in Ledger(run_dir / "ledger.jsonl").read().rows:
        assert row["n_errors"] == 2 and "always fails" in row["errors"][0]["error"]
        assert [row["scores"][e["prompt"]] for e in row["errors"]] == [0.0, 0.0]
    res = read_json(run_dir / "results.json")
    assert set(res["maj_at_k"]) == {"1", "2"} and set(res["random_k"]) == {"1", "2"}
    assert set(res["base_maj_at_k"]) == {"1", "2"}
    assert res["cost"]["rollouts"] == 8 * 6  # base + 5 candidates on 8 selection prompts
    assert (run_dir / "density.png").exists() and (run_dir / "maj_at_k.png").exists()
    RUNS["r2"] = run_dir


def trainer_get(server) -> dict:
    import ray

    return ray.get(server.get_weights.remote())


def test_one_replica_gives_the_same_ledger(common, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ro_r1")
    config = compose(SEARCH + common(run_dir, n_ranks=1) + ["randopt.plots=false"])
    with trainer_session(config) as trainer:
        trainer.fit(None)
    RUNS["r1"] = run_dir
    if "r2" in RUNS:
        assert _ledger(run_dir) == _ledger(RUNS["r2"])
        assert _topk(run_dir) == _topk(RUNS["r2"])
        r1, r2 = read_json(run_dir / "results.json"), read_json(RUNS["r2"] / "results.json")
        assert r1["maj_at_k"] == r2["maj_at_k"] and r1["random_k"] == r2["random_k"]
        assert r1["base_maj_at_k"] == r2["base_maj_at_k"]  # seeded samples: independent of the replica count


def test_sigkill_then_resume_with_verls_entry_point(common, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ro_kill")
    # 12 candidates (the first 5 are the other tests' 5: sampling is prefix-stable), killed after 2 are on disk
    args = SEARCH + common(run_dir, n_ranks=1) + ["randopt.plots=false", "randopt.population_size=12"]
    env = dict(os.environ, RANDOPT_VERL_ROLLOUT_THREADS="1")
    ledger = run_dir / "ledger.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "randopt_verl.main", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            if ledger.exists() and ledger.read_text().count("\n") >= 3:  # base + 2 candidates on disk
                break
            time.sleep(0.05)
            assert proc.poll() is None, "the search exited before it could be killed"
        else:
            pytest.fail("no ledger rows within 400 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        subprocess.run(["ray", "stop", "--force"], capture_output=True)
    killed_at = len(_ledger(run_dir))
    assert 3 <= killed_at < 13, "the kill did not land inside the search"
    assert not (run_dir / "topk.json").exists()

    done = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", "--config-name", "randopt_ppo", *args],
        env=dict(env, RAY_AUTH_MODE="disabled", WANDB_MODE="disabled"), capture_output=True, text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = _ledger(run_dir)
    assert sorted(resumed) == list(range(-1, 12))
    assert (run_dir / "results.json").exists()
    if "r1" in RUNS:  # same scores for the same candidates as the uninterrupted 5-candidate run
        assert {i: resumed[i] for i in range(-1, 5)} == _ledger(RUNS["r1"])
