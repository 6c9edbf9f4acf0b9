"""trainer=randopt through verl's real trainer path on CPU (tiny model, hf replicas, verl's reward loop).

One search config, run three ways: 2 FSDP ranks / 2 replicas in process, 1 rank / 1 replica in process (both in
one fixture, so the cross-run assertions hold whatever order the tests run in), and as a subprocess through
`python -m randopt_verl.main` killed with SIGKILL mid-search then finished by verl's own entry point. All three must
write the same ledger, test answers and top-K. The hf engine's batch is 4 prompts, so the 6 test prompts of the base
validation split into two blocks, one per replica."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from randopt_verl.core import noise
from randopt_verl.core.population import Candidate, Merged, ParamFilter, combined, tied_aliases
from randopt_verl.core.jsonio import read_json
from randopt_verl.core.ledger import Ledger
from randopt_verl.core.manifest import ManifestMismatch, TestSetChanged
from randopt_verl.core.rundir import RunDir
from randopt_verl.inprocess import compose, trainer_session

pytestmark = pytest.mark.slow

SEARCH = [
    "trainer=randopt",
    "randopt.population_size=5",
    "randopt.sigmas=[0.05,0.1]",  # large enough to change the tiny model's answers (and so its scores)
    "randopt.top_k=2",
    "randopt.ensemble_ks=[1,2]",
    "randopt.selection_size=8",
    "randopt.test_size=6",
    "randopt.controls.population=4",
    "randopt.controls.random_k_draws=5",
    "actor_rollout_ref.rollout.engine_kwargs.hf.max_batch_size=4",
]


VARIED_REWARD = str(Path(__file__).resolve().parents[1] / "fixtures" / "varied_reward.py")


def _args(common, run_dir: Path, n_ranks: int) -> list[str]:
    """The shared overrides with a reward whose scores differ between candidates (a consolidation weights them)."""
    return [f"reward.custom_reward_function.path={VARIED_REWARD}" if a.startswith("reward.custom_reward_function.path=")
            else a for a in common(run_dir, n_ranks=n_ranks)]


def _ledger(path: Path) -> dict[int, tuple]:
    rows = Ledger(path).read()
    assert not rows.duplicates, "a row was written twice"
    return {i: (r["seed"], r["sigma"], r["scores"], r["preds"]) for i, r in rows.by_index.items()}


def _topk(run_dir: Path) -> list:
    return [(e["index"], e["selection_score"]) for e in read_json(run_dir / "topk.json")["experts"]]


# the consolidation phase (RandOptTrainer._consolidate over core/merge.py): the 2-replica run has it on from the start; the 1-replica run
# finishes without it and then reruns fit with it on (what `randopt-verl consolidate RUN_DIR` does)
CONSOLIDATE = ["randopt.consolidate.enabled=true", "randopt.consolidate.over=population",
               "randopt.consolidate.scales=[1.0,3.0]"]


def _weights(server) -> dict:
    import ray

    return ray.get(server.get_weights.remote())


@pytest.fixture(scope="module")
def searches(common, tmp_path_factory) -> dict:
    """The same search on 2 replicas (with the weight-path checks) and on 1 replica."""
    out: dict = {}
    run_dir = tmp_path_factory.mktemp("ro_r2")
    with trainer_session(compose(SEARCH + CONSOLIDATE + _args(common, run_dir, 2))) as trainer:
        base = trainer.actor_rollout_wg.named_weights()[0]
        servers = [rep.server_handle for rep in trainer.replicas]
        cand, everything = Candidate(index=0, seed=1234, sigma=0.05), ParamFilter()
        # perturb-at-sync: replica 0 gets the candidate, replica 1 (no candidate) the base
        trainer.load_candidates({0: cand}, how="sync", param_filter=everything)
        sync = [_weights(s) for s in servers]
        # the hf backend's in-place path, then its restore
        trainer.load_candidates({}, how="sync", param_filter=everything)
        trainer.load_candidates({0: cand}, how="server", param_filter=everything)
        server_path = _weights(servers[0])
        trainer.load_candidates({}, how="server", param_filter=everything)
        restored = _weights(servers[0])
        # a merged model (several terms) by both paths: replica 1 through the FSDP stream, replica 0 in place
        merged = Merged(index=0, term_list=((1234, 0.03), (77, -0.02)))
        trainer.load_candidates({1: merged}, how="sync", param_filter=everything)
        merged_sync = _weights(servers[1])
        trainer.load_candidates({0: merged}, how="server", param_filter=everything)
        merged_server = _weights(servers[0])
        trainer.load_candidates({}, how="sync", param_filter=everything)
        trainer.fit(None)
        after = trainer.actor_rollout_wg.named_weights()[0]
        out["r2"] = dict(run_dir=run_dir, n_servers=len(servers), cand=cand, base=base, sync=sync,
                         server_path=server_path, restored=restored, after=after, merged=merged,
                         merged_sync=merged_sync, merged_server=merged_server)

    run_dir = tmp_path_factory.mktemp("ro_r1")
    with trainer_session(compose(SEARCH + _args(common, run_dir, 1) + ["randopt.plots=false"])) as trainer:
        trainer.fit(None)
        out["r1_before"] = read_json(run_dir / "results.json")
        # the finished search again with the consolidation on: nothing of the search is scored again
        OmegaConf.update(trainer.config, "randopt.consolidate",
                         {"enabled": True, "over": "population", "scales": [1.0, 3.0]}, merge=True)
        trainer.fit(None)
        # the same run directory with 5 instead of 6 test prompts: the stored test answers must not be reused
        selection = trainer.prompts(trainer.train_dataset, 8)
        fewer = trainer.prompts(trainer.val_dataset, 5)
        with pytest.raises(TestSetChanged) as refused:
            trainer._open_run(selection, fewer, None)
        # and resumed on another rollout precision: refused naming the key
        test = trainer.prompts(trainer.val_dataset, 6)
        OmegaConf.update(trainer.config, "actor_rollout_ref.rollout.dtype", "float16", force_add=True)
        with pytest.raises(ManifestMismatch) as other_dtype:
            trainer._open_run(selection, test, None)
        out["r1"] = dict(run_dir=run_dir, refused=str(refused.value), other_dtype=str(other_dtype.value))
    return out


def test_weights_reach_the_replicas_exactly(searches):
    r2 = searches["r2"]
    base, cand = r2["base"], r2["cand"]
    assert r2["n_servers"] == 2
    aliases = tied_aliases(list(base.items()))
    for name, w in base.items():
        # formed in fp32 and rounded once to the rollout's dtype (bf16 where the CPU has bf16 instructions)
        dtype = r2["sync"][0][name].dtype
        expected = noise.perturbed(w, cand.seed, aliases.get(name, name), cand.sigma).to(dtype)
        assert torch.equal(r2["sync"][0][name], expected), name  # replica 0: base + sigma * eps, exactly
        assert torch.equal(r2["sync"][1][name], w.to(dtype)), name  # replica 1: the base
        assert torch.equal(r2["server_path"][name], r2["sync"][0][name]), name  # in place == perturb-at-sync
        assert torch.equal(r2["restored"][name], w.to(dtype)), name  # and the restore is exact
        assert torch.equal(r2["after"][name], w), f"the search modified the actor's weight {name}"


def test_a_merged_model_reaches_the_replicas_exactly(searches):
    r2 = searches["r2"]
    aliases = tied_aliases(list(r2["base"].items()))
    for name, w in r2["base"].items():
        # formed in fp32 from the fp32 base and rounded once to the rollout's dtype
        want = combined(w, r2["merged"].terms(), aliases.get(name, name)).to(r2["merged_sync"][name].dtype)
        assert torch.equal(r2["merged_sync"][name], want), name  # perturb-at-sync (the vLLM path)
        assert torch.equal(r2["merged_server"][name], want), name  # the hf server in place


def test_consolidation_phase(searches):
    from randopt_verl.core import stats
    from randopt_verl.core import merge

    run_dir = searches["r2"]["run_dir"]
    res, rec = read_json(run_dir / "results.json"), read_json(run_dir / "consolidated.json")
    rows = Ledger(run_dir / "ledger.jsonl").read().by_index
    # the plan from the ledger: every candidate (over=population), unit z-score weights, c_i = s * w_i * sigma_i
    members = sorted((r for i, r in rows.items() if i >= 0), key=lambda r: (-r["score"], r["index"]))
    assert [m["index"] for m in rec["members"]] == [m["index"] for m in members]
    w = merge.weights([m["score"] for m in members])
    chosen = {m["index"]: m for m in rec["models"]}[rec["chosen"]["weighted"]]
    assert chosen["terms"] == [[m["seed"], chosen["scale"] * wi * m["sigma"]] for m, wi in zip(members, w) if wi]
    # the scale was chosen on the selection set: the best selection score among the weighted models
    sel = Ledger(run_dir / "consolidation_ledger.jsonl").read().by_index
    assert sorted(sel) == [0, 1, 2, 3] and all(r["n"] == 8 for r in sel.values())
    weighted = [m for m in rec["models"] if m["variant"] == "weighted"]
    assert sel[chosen["index"]]["score"] == max(sel[m["index"]]["score"] for m in weighted)
    test = Ledger(run_dir / "consolidation_test_ledger.jsonl").read().by_index
    assert set(test) == {rec["chosen"]["weighted"], rec["chosen"]["shuffled"]}
    c = res["consolidated"]
    row = test[rec["chosen"]["weighted"]]
    assert (c["test_acc"], c["scale"], c["weighting"]) == (row["acc"], chosen["scale"], "zscore")
    assert c["ci95"] == list(stats.accuracy_ci(row["accs"]))
    assert c["test_cost"]["rollouts"] == 6 and c["forward_passes_per_prompt"] == 1  # one answer per test prompt
    assert c["shuffled_control_test_acc"] == test[rec["chosen"]["shuffled"]]["acc"]
    # intervals, paired differences and diagnostics came with it
    assert res["base"]["ci95"] and all(e["ci95"] for e in res["experts"]) and set(res["maj_at_k_ci95"]) == {"1", "2"}
    assert {"maj_at_k_vs_random_k", "maj_at_k_vs_base", "consolidated_vs_shuffled_control",
            "consolidated_vs_base"} <= set(res["paired"])
    assert res["diagnostics"]["n_tested"] >= 2 and "selection_test_spearman" in res["diagnostics"]
    assert any(rec["weights"]) and len(chosen["terms"]) >= 2  # the scores differed: a real merge was scored


def test_consolidating_a_finished_run_afterwards_gives_the_same_model(searches):
    before, r1 = searches["r1_before"], searches["r1"]["run_dir"]
    after, r2 = read_json(r1 / "results.json"), read_json(searches["r2"]["run_dir"] / "results.json")
    assert "consolidated" not in before and before["cost"] == after["cost"]  # nothing of the search ran again
    assert read_json(r1 / "consolidated.json") == read_json(searches["r2"]["run_dir"] / "consolidated.json")
    strip = lambda c: {k: v for k, v in c.items() if "cost" not in k}  # noqa: E731
    assert strip(after["consolidated"]) == strip(r2["consolidated"])  # and 1 replica == 2 replicas


def test_search_writes_its_run_directory(searches):
    run_dir = searches["r2"]["run_dir"]
    for f in ("manifest.json", "ledger.jsonl", "test_ledger.jsonl", "topk.json", "results.json", "metrics.jsonl",
              "density.png", "maj_at_k.png"):
        assert (run_dir / f).exists(), f
    assert sorted(_ledger(run_dir / "ledger.jsonl")) == [-1, 0, 1, 2, 3, 4]  # base row + 5 candidates
    # the toy reward raises on the two selection items whose answer is 19: recorded, scored 0, the run went on
    for row in Ledger(run_dir / "ledger.jsonl").read().rows:
        assert row["n_errors"] == 2 and "always fails" in row["errors"][0]["error"]
        assert [row["scores"][e["prompt"]] for e in row["errors"]] == [0.0, 0.0]
    # test answers: base (-1), the 2 experts and the 4 control candidates, and base samples -2, -3 (max k = 2)
    test_rows = _ledger(run_dir / "test_ledger.jsonl")
    assert {-1, -2, -3, 0, 1, 2, 3} <= set(test_rows) and all(len(r[2]) == 6 for r in test_rows.values())
    res = read_json(run_dir / "results.json")
    assert set(res["maj_at_k"]) == {"1", "2"} and set(res["random_k"]) == {"1", "2"}
    assert set(res["base_maj_at_k"]) == {"1", "2"}
    assert res["cost"]["rollouts"] == 8 * 6  # base + 5 candidates on 8 selection prompts
    assert res["test_cost"]["rollouts"] == 6 * len(test_rows)
    rollout = read_json(RunDir(run_dir).manifest_path)["identity"]["rollout"]
    assert set(rollout) == {"name", "dtype", "tensor_model_parallel_size"}
    assert rollout["name"] == "hf" and rollout["tensor_model_parallel_size"] == 1


def test_one_and_two_replicas_give_one_run(searches):
    r1, r2 = searches["r1"]["run_dir"], searches["r2"]["run_dir"]
    assert _ledger(r1 / "ledger.jsonl") == _ledger(r2 / "ledger.jsonl")
    # test answers (members spread over replicas) and base samples (seeded per sample) too
    assert _ledger(r1 / "test_ledger.jsonl") == _ledger(r2 / "test_ledger.jsonl")
    assert _topk(r1) == _topk(r2)
    a, b = read_json(r1 / "results.json"), read_json(r2 / "results.json")
    for key in ("base", "experts", "maj_at_k", "random_k", "base_maj_at_k", "fraction_beating_base_by_sigma"):
        assert a[key] == b[key], key
    assert a["cost"]["rollouts"] == b["cost"]["rollouts"] and a["cost"]["tokens"] == b["cost"]["tokens"]


def test_changed_test_set_or_rollout_dtype_is_refused_naming_it(searches):
    msg = searches["r1"]["refused"]
    assert "test_set_hash" in msg and "test_ledger.jsonl" in msg and "selection_set_hash" not in msg
    msg = searches["r1"]["other_dtype"]
    assert "rollout.dtype" in msg and '-> new "float16"' in msg and "test_set_hash" not in msg


def test_sigkill_then_resume_with_verls_entry_point(common, tmp_path_factory, searches, kill_then_resume):
    run_dir = tmp_path_factory.mktemp("ro_kill")
    # N candidates (the first 5 are the other runs' 5: sampling is prefix-stable), killed after 2 are on disk; N is
    # large because one tiny-model candidate takes tens of milliseconds with the bf16, shared-prefix engine: with 12
    # the whole search finished between the check and the kill
    n = 120
    args = SEARCH + _args(common, run_dir, 1) + ["randopt.plots=false", f"randopt.population_size={n}"]
    ledger = run_dir / "ledger.jsonl"
    killed_at = kill_then_resume(args, run_dir, ledger, 3)  # killed once base + 2 candidates are on disk
    assert 3 <= killed_at < n + 1, "the kill did not land inside the search"
    resumed = _ledger(ledger)
    assert sorted(resumed) == list(range(-1, n))
    assert (run_dir / "results.json").exists()
    # the same scores for the same candidates as the uninterrupted 5-candidate run
    assert {i: resumed[i] for i in range(-1, 5)} == _ledger(searches["r1"]["run_dir"] / "ledger.jsonl")


# randopt.selection.strategy=halving: blocks of 2 of the 8 selection prompts, a decision after each block from the
# first on, and z = 0 (a candidate stops once its mean paired difference to the current K-th is below 0), so the
# varied reward's scores stop candidates on the tiny model
HALVING = ["randopt.selection.strategy=halving", "randopt.selection.block_size=2", "randopt.selection.min_prompts=2",
           "randopt.selection.z=0.0"]


def test_halving_killed_and_resumed_equals_uninterrupted_on_another_replica_count(common, tmp_path_factory,
                                                                                   kill_then_resume):
    from randopt_verl.core import halving

    n = 120  # as in the full search's kill test: large enough that the kill lands inside the race
    args = lambda run_dir, ranks: (SEARCH + HALVING + _args(common, run_dir, ranks)  # noqa: E731
                                   + ["randopt.plots=false", f"randopt.population_size={n}"])
    # uninterrupted, 2 replicas, in process
    whole = tmp_path_factory.mktemp("ro_halving")
    with trainer_session(compose(args(whole, 2))) as trainer:
        trainer.fit(None)
    # 1 replica, SIGKILLed mid-race (2 block rows on disk), then finished by verl's own entry point
    killed = tmp_path_factory.mktemp("ro_halving_kill")
    blocks = killed / "selection_blocks.jsonl"
    killed_at = kill_then_resume(args(killed, 1), killed, blocks, 2)
    assert 2 <= killed_at < len(_ledger(whole / "selection_blocks.jsonl")), "the kill did not land inside the race"

    # resumed == uninterrupted: the same block rows, the same decisions, the same survivors' rows and top-K
    assert _ledger(blocks) == _ledger(whole / "selection_blocks.jsonl")
    assert _ledger(killed / "ledger.jsonl") == _ledger(whole / "ledger.jsonl")
    assert _topk(killed) == _topk(whole)
    a, b = read_json(killed / "results.json"), read_json(whole / "results.json")
    assert a["selection"] == b["selection"] and a["maj_at_k"] == b["maj_at_k"]

    # what the race did: some stopped, every stop after a block other than the last, and no stopped candidate in
    # the top-K; the ledger holds the base and the survivors' full selection-set rows only
    sel = b["selection"]
    stopped = {s["index"] for s in sel["stopped"]}
    assert sel["strategy"] == "halving" and stopped and sel["n_stopped"] == len(stopped)
    assert all(s["after_block"] < 3 and s["paired_diff"] < 0 for s in sel["stopped"])
    rows = Ledger(whole / "ledger.jsonl").read().by_index
    survivors = sorted(i for i in rows if i >= 0)
    assert survivors and not stopped & set(survivors) and len(survivors) + len(stopped) == n
    assert all(rows[i]["n"] == 8 and rows[i]["from_blocks"] == 4 for i in survivors)
    assert not stopped & {i for i, _ in _topk(whole)}
    assert [i for i, _ in _topk(whole)] == sorted(survivors, key=lambda i: (-rows[i]["score"], i))[:2]
    # each block row is one candidate on one block of 2 prompts; the search's cost is the base row and the block rows
    block_rows = Ledger(whole / "selection_blocks.jsonl").read().rows
    assert all(r["n"] == 2 for r in block_rows)
    assert {halving.split_block_row_index(r["index"], 4)[0] for r in block_rows} == set(range(n))
    assert sel["rollouts"] == 2 * len(block_rows) and b["cost"]["rollouts"] == 8 + sel["rollouts"]
    assert sel["full_rollouts"] == n * 8 and sel["rollouts_saved"] == n * 8 - sel["rollouts"] > 0
    assert a["cost"]["rollouts"] == b["cost"]["rollouts"] and a["cost"]["tokens"] == b["cost"]["tokens"]


def test_accuracy_vs_n_and_the_dev_chosen_sigma(common, tmp_path_factory):
    """randopt.accuracy_vs_n: the votes at N/8 .. N read from the ledger's prefixes are what a search of that many
    candidates gives (here N = 16 against a separate N = 4 search), and the extra experts' test passes are counted.
    randopt.sigma_choice=dev (same session, its own run directory): the search scores the first 6 selection rows,
    each sigma's top-K answers the last 2 (dev), the best dev vote's sigma is chosen and its top-K answers the test
    set; its cost is the search's."""
    big, small = tmp_path_factory.mktemp("ro_acc_n16"), tmp_path_factory.mktemp("ro_acc_n4")
    dev_run = tmp_path_factory.mktemp("ro_sigma_dev")
    args = SEARCH + _args(common, big, 1) + ["randopt.plots=true", "randopt.population_size=16",
                                             "randopt.controls.population=2", "randopt.accuracy_vs_n=true"]
    with trainer_session(compose(args)) as trainer:
        trainer.fit(None)
        OmegaConf.update(trainer.config, "randopt.population_size", 4)
        OmegaConf.update(trainer.config, "randopt.accuracy_vs_n", False)
        OmegaConf.update(trainer.config, "randopt.run_dir", str(small))
        trainer.fit(None)
        OmegaConf.update(trainer.config, "randopt.population_size", 16)
        OmegaConf.update(trainer.config, "randopt.sigma_choice", "dev")
        OmegaConf.update(trainer.config, "randopt.dev_size", 2)
        OmegaConf.update(trainer.config, "randopt.run_dir", str(dev_run))
        trainer.fit(None)
    _check_dev_sigma_choice(dev_run)
    res, res4 = read_json(big / "results.json"), read_json(small / "results.json")
    curve = res["accuracy_vs_n"]
    assert curve["ns"] == [2, 4, 8, 16] and curve["full_n"] == 16
    # the prefix N = 4 is the N = 4 search: its experts and votes, to the last digit
    assert curve["by_n"]["4"]["experts"] == [e["index"] for e in res4["experts"]]
    assert curve["by_n"]["4"]["maj_at_k"] == res4["maj_at_k"]
    assert curve["by_n"]["16"]["experts"] == [e["index"] for e in res["experts"]]
    assert curve["by_n"]["16"]["maj_at_k"] == res["maj_at_k"]
    # every prefix's experts have test answers, and the passes added for them are in test_cost
    test_rows = _ledger(big / "test_ledger.jsonl")
    needed = {i for e in curve["by_n"].values() for i in e["experts"]}
    assert needed <= set(test_rows)
    assert curve["extra_test_passes"] == len(needed - {e["index"] for e in res["experts"]} - {0, 1})
    assert res["test_cost"]["rollouts"] == 6 * len(test_rows)
    assert (big / "accuracy_vs_n.png").exists()


def _check_dev_sigma_choice(run_dir: Path) -> None:
    from randopt_verl.core import sigma_choice

    res = read_json(run_dir / "results.json")
    rows = Ledger(run_dir / "ledger.jsonl").read().by_index
    assert all(r["n"] == 6 for r in rows.values())  # the search never saw the 2 dev rows
    sc = res["sigma_choice"]
    by_sigma = sigma_choice.per_sigma_top_k(rows, 2)
    assert {float(s): v["experts"] for s, v in sc["by_sigma"].items()} == by_sigma
    dev = Ledger(run_dir / "dev_ledger.jsonl").read().by_index
    assert sorted(dev) == sorted(i for ids in by_sigma.values() for i in ids) and all(r["n"] == 2 for r in dev.values())
    # the choice is the one the dev answers alone give, and the chosen experts answered the test set
    assert sc["chosen_sigma"] == sigma_choice.choose(dev, by_sigma)["chosen_sigma"]
    assert sc["experts"] == by_sigma[sc["chosen_sigma"]]
    assert set(sc["experts"]) <= set(_ledger(run_dir / "test_ledger.jsonl"))
    assert set(sc["maj_at_k"]) == set(sc["vs_mixed"]) == {"1", "2"}
    # the dev answers are search cost: base and 16 candidates on 6 rows, the experts on 2
    assert res["cost"]["rollouts"] == 6 * 17 + 2 * len(dev) and sc["dev_cost"]["rollouts"] == 2 * len(dev)
