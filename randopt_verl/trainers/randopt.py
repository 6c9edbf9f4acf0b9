"""`trainer=randopt`: RandOpt as a verl V1 trainer (registered as trainer.v1.trainer_mode=randopt).

verl builds everything (`SearchTrainer._setup` is verl's own); `fit` below replaces only the update loop:
population -> chunks of R candidates (R = rollout replicas) -> replicas load them -> greedy generation on the
selection set -> verl's reward loop -> ledger -> top-K -> test answers of base, experts and control population
-> votes (selected top-k, random-k, base self-consistency) -> results.json, table, plots, tracking.
Every evaluation is on disk (ledger.jsonl, test_ledger.jsonl) before it counts; a restarted run skips it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from omegaconf import OmegaConf
from tqdm import tqdm
from verl.trainer.ppo.v1.trainer_base import register_trainer

from randopt_verl.core import noise, vote
from randopt_verl.core.population import Candidate, sample_population
from randopt_verl.core.rundir import Ledger, RunDir, candidate_row, fingerprint_files, hash_rows, model_files, verify_rows
from randopt_verl.trainers.harness import Cost, PromptSet, SearchTrainer, greedy, sampled

logger = logging.getLogger(__name__)

BASE = -1  # test_ledger.jsonl index of the base model's greedy answers; base sample s is -2 - s


def base_sample_index(s: int) -> int:
    return -2 - s


@register_trainer("randopt")
class RandOptTrainer(SearchTrainer):
    def fit(self, agent_loop_manager=None):
        ro = self.config.randopt
        t_start = time.perf_counter()
        response_length = int(self.config.actor_rollout_ref.rollout.response_length)
        param_filter = OmegaConf.to_container(ro.param_filter, resolve=True) or {}
        how = self.perturb_at(ro.perturb_at)

        # 1. the selection and test prompts, tokenized as verl's agent loop would
        selection = self.prompts(self.train_dataset, ro.selection_size)
        test = self.prompts(self.val_dataset, ro.test_size)

        # 2. the run directory: resume only the same search (model, noise definition, selection set, settings)
        search_identity = {
            "population_seed": int(ro.seed),
            "sigmas": [float(s) for s in ro.sigmas],
            "param_filter": param_filter,
            "generation": greedy(response_length),
            "reward": OmegaConf.to_container(self.config.reward.custom_reward_function, resolve=True),
        }
        run = RunDir.open(
            ro.run_dir,
            model_fingerprint=fingerprint_files(model_files(self.config.actor_rollout_ref.model.path)),
            noise_spec_version=noise.NOISE_SPEC,
            selection_set_hash=hash_rows(selection.identity()),
            search=search_identity,
            n_candidates=int(ro.population_size),
            config=OmegaConf.to_container(self.config, resolve=True),
        )
        population = sample_population(int(ro.seed), int(ro.population_size), list(ro.sigmas))
        finished = run.finished()
        verify_rows(finished.values(), [(c.seed, c.sigma) for c in population])
        self._replay_cost(run)
        self.open_log(run.path, "randopt")
        print(f"randopt: run directory {run.path}: {len(finished)}/{len(population)} candidates already scored")

        # 3. base weights into every replica (vLLM starts with dummy weights; hf takes its pristine copy here)
        self.load_candidates({}, how="sync", param_filter=param_filter)

        # 4. the base model on the selection set: the line a candidate must beat
        base_row = run.ledger.read().by_index.get(BASE)
        if base_row is None:
            base_row = self._evaluate({0: None}, selection, greedy(response_length), self.cost)[0]
            run.ledger.append(candidate_row(BASE, 0, 0.0, base_row["samples"], tokens=base_row["tokens"],
                                            wall_s=base_row["wall_s"]))
            base_row = run.ledger.read().by_index[BASE]

        # 5. the search: R candidates at a time, one per replica; each row on disk before the next chunk
        todo = [c for c in population if c.index not in finished]
        n_rep = len(self.replicas)
        bar = tqdm(total=len(population), initial=len(population) - len(todo), desc="randopt candidates")
        for lo in range(0, len(todo), n_rep):
            chunk = {rep.replica_rank: cand for rep, cand in zip(self.replicas, todo[lo : lo + n_rep])}
            self.load_candidates(chunk, how=how, param_filter=param_filter)
            for r, ev in self._evaluate(chunk, selection, greedy(response_length), self.cost).items():
                cand = chunk[r]
                run.ledger.append(candidate_row(cand.index, cand.seed, cand.sigma, ev["samples"],
                                                tokens=ev["tokens"], wall_s=ev["wall_s"]))
            bar.update(len(chunk))
            done = run.finished()
            best = vote.rank(done.values())[0]
            self.global_steps = len(done)
            self.log({"randopt/best_selection_score": best["score"], "randopt/base_selection_score": base_row["score"],
                      "randopt/candidates_done": len(done)})
        bar.close()
        # the restore that needs no arithmetic: replicas go back to the pristine base
        self.load_candidates({}, how=how, param_filter=param_filter)

        # 6. top-K by selection score (ties: lower index) -> topk.json
        rows = [r for i, r in run.finished().items() if i < len(population)]
        ranked = vote.rank(rows)[: int(ro.top_k)]
        run.write_topk({"k": int(ro.top_k), "experts": [
            {"rank": i + 1, "index": r["index"], "seed": r["seed"], "sigma": r["sigma"],
             "selection_score": r["score"], "selection_acc": r["acc"]} for i, r in enumerate(ranked)]})

        # 7. test answers: base, every top-K expert, and the control population (first P candidates by index,
        #    a random subset because the population is random); each member's answers on disk once
        ks = sorted({int(k) for k in ro.ensemble_ks})
        controls = ro.controls
        n_control = 0
        if controls.random_k_draws > 0:
            n_control = int(controls.population or min(len(population), 4 * max(ks)))
        members = [BASE] + [r["index"] for r in ranked] + [c.index for c in population[:n_control]]
        members = list(dict.fromkeys(members))  # unique, order kept
        test_ledger = Ledger(run.path / "test_ledger.jsonl")
        test_rows = test_ledger.read().by_index
        by_index = {c.index: c for c in population}
        todo_test = [m for m in members if m not in test_rows]
        bar = tqdm(total=len(members), initial=len(members) - len(todo_test), desc="test answers")
        for lo in range(0, len(todo_test), n_rep):
            group = todo_test[lo : lo + n_rep]
            chunk = {rep.replica_rank: (None if m == BASE else by_index[m]) for rep, m in zip(self.replicas, group)}
            self.load_candidates(chunk, how=how, param_filter=param_filter)
            evs = self._evaluate(chunk, test, greedy(response_length), self.test_cost)
            for rep, m in zip(self.replicas, group):
                ev = evs[rep.replica_rank]
                cand = chunk[rep.replica_rank]
                test_ledger.append(candidate_row(m, cand.seed if cand else 0, cand.sigma if cand else 0.0,
                                                 ev["samples"], tokens=ev["tokens"], wall_s=ev["wall_s"]))
            bar.update(len(group))
        bar.close()

        # 8. base self-consistency: the base sampled max(k) times per test prompt (same forward passes as maj@k)
        n_samples = max(ks) if controls.base_self_consistency else 0
        self.load_candidates({}, how=how, param_filter=param_filter)
        test_rows = test_ledger.read().by_index
        todo_samples = [s for s in range(n_samples) if base_sample_index(s) not in test_rows]
        for s in todo_samples:
            # sample s has its own seed: the same samples whatever the replica count, order or restarts
            ev = self._evaluate({self.replicas[0].replica_rank: None}, test,
                                sampled(response_length, float(controls.temperature), seed=int(ro.seed) * 100003 + s),
                                self.test_cost)[self.replicas[0].replica_rank]
            test_ledger.append(candidate_row(base_sample_index(s), 0, 0.0, ev["samples"],
                                             tokens=ev["tokens"], wall_s=ev["wall_s"]))
        test_rows = test_ledger.read().by_index
        test_ledger.close()

        # 9. votes and controls -> results.json, the printed table, tracking, plots
        results = self._results(rows, ranked, base_row, test_rows, ks, population[:n_control], n_samples,
                                wall_s=time.perf_counter() - t_start)
        run.write_results(results)
        table = vote.results_table(results)
        print(table)
        self.log(_flat_metrics(results))
        if ro.plots:
            from randopt_verl.tools import plots

            for path in plots.draw(run.path):
                print(f"randopt: wrote {path}")
        run.close()

    # -- steps --------------------------------------------------------------------------------------------
    def _evaluate(self, by_replica: dict[int, Optional[Candidate]], prompts: PromptSet, sampling: dict,
                  cost: Cost) -> dict:
        """Every replica in by_replica answers all prompts with the weights it holds; scored by verl's reward loop.
        The work is added to `cost`: self.cost for the search (selection set), self.test_cost for test answers."""
        t0 = time.perf_counter()
        outs = self.generate({r: prompts.ids for r in by_replica}, sampling)
        gen_s = time.perf_counter() - t0
        result = {}
        for r, outputs in outs.items():
            t1 = time.perf_counter()
            responses = [o.token_ids for o in outputs]
            samples = self.score(prompts.rows, responses)
            tokens = sum(len(x) for x in responses)
            wall = gen_s / len(outs) + (time.perf_counter() - t1)  # replicas run in parallel: share the wall
            cost.add(len(responses), tokens, wall)
            result[r] = {"samples": samples, "tokens": tokens, "wall_s": wall}
        return result

    def _replay_cost(self, run: RunDir) -> None:
        """Cost of work already on disk (a resumed run still counts what it spent before the restart)."""
        self.test_cost = Cost()
        for path, cost in ((run.path / "ledger.jsonl", self.cost), (run.path / "test_ledger.jsonl", self.test_cost)):
            if path.exists():
                for r in Ledger(path).read().rows:
                    cost.add(r["n"], r["tokens"], r["wall_s"])

    def _results(self, rows, ranked, base_row, test_rows, ks, control_pop, n_samples, wall_s) -> dict[str, Any]:
        ro = self.config.randopt
        table = {m: list(zip(r["preds"], r["accs"])) for m, r in test_rows.items()}
        ranked_ids = [r["index"] for r in ranked]
        results: dict[str, Any] = {
            "schema_version": 1,
            "n_candidates": len(rows),
            "n_selection": base_row["n"],
            "n_test": test_rows[BASE]["n"],
            "base": {"test_acc": test_rows[BASE]["acc"], "selection_score": base_row["score"],
                     "selection_acc": base_row["acc"]},
            "experts": [
                {"rank": i + 1, "index": r["index"], "seed": r["seed"], "sigma": r["sigma"],
                 "selection_score": r["score"], "selection_acc": r["acc"], "test_acc": test_rows[r["index"]]["acc"]}
                for i, r in enumerate(ranked)
            ],
            "maj_at_k": {str(k): v for k, v in vote.maj_at_k(table, ranked_ids, ks).items()},
            "fraction_beating_base_by_sigma": vote.fraction_beating_base(rows, base_row["score"]),
        }
        if control_pop and ro.controls.random_k_draws > 0:
            pop_ids = [c.index for c in control_pop]
            results["random_k"] = {
                str(k): vote.random_k(table, pop_ids, k, int(ro.controls.random_k_draws), int(ro.seed))
                for k in ks if k <= len(pop_ids)
            }
        if n_samples:
            samples = [table[base_sample_index(s)] for s in range(n_samples)]
            results["base_maj_at_k"] = {str(k): v for k, v in vote.base_maj_at_k(samples, ks).items()}
            results["base_sampling_temperature"] = float(ro.controls.temperature)
        # search cost (selection-set generations: the axis shared with ES and GRPO training) and, apart, the
        # test-time cost of answering with K experts plus the controls
        results["cost"] = {"rollouts": self.cost.rollouts, "tokens": self.cost.tokens,
                           "wall_s": round(self.cost.wall_s, 3), "session_wall_s": round(wall_s, 3)}
        results["test_cost"] = {"rollouts": self.test_cost.rollouts, "tokens": self.test_cost.tokens,
                                "wall_s": round(self.test_cost.wall_s, 3)}
        return results


def _flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    m = {"randopt/test/base_acc": results["base"]["test_acc"]}
    if results["experts"]:
        m["randopt/test/best_expert_acc"] = results["experts"][0]["test_acc"]
    for k, v in results["maj_at_k"].items():
        m[f"randopt/test/maj@{k}"] = v
    for k, v in results.get("random_k", {}).items():
        m[f"randopt/test/random@{k}/mean"] = v["mean"]
    for k, v in results.get("base_maj_at_k", {}).items():
        m[f"randopt/test/base_maj@{k}"] = v
    for key in ("rollouts", "tokens", "wall_s"):
        m[f"cost/{key}"] = results["cost"][key]
    return m
