"""`trainer=randopt`: RandOpt as a verl V1 trainer (registered as trainer.v1.trainer_mode=randopt).

verl builds everything (`SearchTrainer._setup` is verl's own); `search` below (run by `SearchTrainer.fit`) replaces
only the update loop:
population -> chunks of R candidates (R = rollout replicas) -> `evaluate` (replicas load them, greedy generation on
the selection set, verl's reward loop) -> ledger (or, with randopt.selection.strategy=halving, a race over blocks of
the selection set whose survivors reach the ledger: core/halving.py) -> top-K -> test answers of base, experts and
control population (randopt.sigma_choice=dev: first, each sigma's top-K on a dev split held out of the selection
data, and the chosen sigma's top-K on test: core/sigma_choice.py) and the base model's self-consistency samples,
spread over the replicas the same way -> votes (selected top-k,
random-k, base self-consistency) -> optionally one consolidated model and its shuffled control (core/merge.py)
-> results.json with intervals, selection diagnostics (core/diagnostics.py), accuracy vs N from ledger prefixes
(randopt.accuracy_vs_n, core/acc_vs_n.py) and plots (rendered by randopt_verl.core.report and
randopt_verl.core.plots), tracking. The settings are `self.settings`, the typed `randopt` node (config/schema.py).
Every evaluation is on disk (ledger.jsonl, test_ledger.jsonl; names: randopt_verl.core.rundir, indices:
randopt_verl.core.ledger) before it counts; a restarted run skips it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from verl.trainer.ppo.v1.trainer_base import register_trainer

from randopt_verl.config import schema  # a module import (see trainers/harness.py)
from randopt_verl.console import phase_bar  # tqdm that also feeds the quiet console
from randopt_verl.core import acc_vs_n, diagnostics, halving, merge, plots, sigma_choice, vote
from randopt_verl.core.cost import Cost
from randopt_verl.core.population import Candidate, Merged, base_sample_seed, sample_population
from randopt_verl.core.fingerprint import hash_rows
from randopt_verl.core.ledger import BASE, Ledger, base_sample_index, base_sample_number, verify_rows
from randopt_verl.core.results_schema import SCHEMA_VERSION
from randopt_verl.core.rundir import RunDir
from randopt_verl.trainers.harness import PromptSet, Sampling, SearchTrainer, greedy, sampled


@register_trainer("randopt")
class RandOptTrainer(SearchTrainer):
    """RandOpt: N seeded perturbations scored once on the selection set, the top K kept, and each test prompt
    answered by their majority vote beside its controls (the phases: module docstring)."""

    node = "randopt"
    settings: schema.RandOptConfig

    def search(self) -> None:
        ro = self.settings
        ks = sorted(set(ro.ensemble_ks))

        # 1. the selection and test prompts, tokenized as verl's agent loop would; with sigma_choice=dev the last
        #    dev_size selection rows are held out of the search as the dev split (sigma is chosen there, never on test)
        selection, test = self.selection_and_test()
        dev = None
        if ro.sigma_choice == "dev":
            if ro.dev_size >= len(selection):
                raise ValueError(f"randopt.dev_size={ro.dev_size} leaves none of the {len(selection)} selection rows "
                                 "for the search: lower randopt.dev_size or add rows to data.train_files")
            selection, dev = selection.split(len(selection) - ro.dev_size)

        # 2. the run directory: resume only the same search, reuse test answers only for the same test set
        run = self._open_run(selection, test, dev)
        population = sample_population(ro.seed, ro.population_size, ro.sigmas)
        verify_rows(run.finished().values(), [(c.seed, c.sigma) for c in population])
        # what a resumed run spent before the restart: every ledger row carries its share (a halving survivor's
        # joined row repeats its block rows' share, so the block rows are counted instead); the dev answers that
        # choose sigma are part of the search
        search_rows = ([r for r in run.ledger.read().rows if not r.get("from_blocks")]
                       + run.selection_blocks.read().rows + run.dev_ledger.read().rows)
        self.cost, self.test_cost = Cost.of_rows(search_rows), Cost.of_rows(run.test_ledger.read().rows)
        print(f"randopt: run directory {run.path}: {len(run.finished())}/{len(population)} candidates already scored")
        self.use(ro.perturb_at)  # base weights into every replica

        # 3. the base model on the selection set (the line a candidate must beat), its prompts over all replicas
        if BASE not in run.ledger.read().by_index:
            run.ledger.append(self.evaluate_spread(None, selection, greedy(self.response_length), self.cost)
                              .row(BASE, None))
        base_row = run.ledger.read().by_index[BASE]

        # 4. the search: R candidates at a time, one per replica; each row on disk before the next chunk. full: every
        #    candidate answers the whole selection set; halving: a race over blocks of it (core/halving.py) whose
        #    survivors' joined rows enter the ledger, so what follows ranks full-data rows only
        def progress():
            done = run.finished()
            self.global_steps = len(done)
            self.log({"randopt/best_selection_score": vote.rank(done.values())[0]["score"],
                      "randopt/base_selection_score": base_row["score"], "randopt/candidates_done": len(done)})

        if ro.selection.strategy == "halving":
            selection_summary = self._race(run, population, selection)
        else:
            self._answer(run.ledger, {c.index: c for c in population}, selection,
                         lambda i: greedy(self.response_length), self.cost, "randopt candidates", progress)
            selection_summary = {"strategy": "full", "n_candidates": len(population),
                                 "rollouts": len(population) * len(selection)}

        # 5. top-K by selection score (ties: lower index) -> topk.json
        rows = [r for i, r in run.finished().items() if i < len(population)]
        ranked = vote.rank(rows)[: ro.top_k]
        run.write_topk({"k": ro.top_k, "experts": [_expert(i, r) for i, r in enumerate(ranked)]})

        # 6. test answers: base, every top-K expert and the control population (the first P candidates by index,
        #    a random subset because the population is random), greedy (with accuracy_vs_n, also the experts of the
        #    smaller prefixes' top-K); then the base model's self-consistency samples (same forward passes as
        #    maj@max(k)), each with its own seed. Members spread over the replicas.
        controls = ro.controls
        n_control = (controls.population or min(len(population), 4 * max(ks))) if controls.random_k_draws > 0 else 0
        members: dict[int, Optional[Candidate]] = {BASE: None}
        members.update({r["index"]: population[r["index"]] for r in ranked})
        members.update({c.index: c for c in population[:n_control]})
        # accuracy vs N (randopt.accuracy_vs_n): the experts of every prefix's top-K (N/8, N/4, N/2 of this ledger)
        ns = acc_vs_n.sizes(len(population), ro.top_k) if ro.accuracy_vs_n else []
        extra = [i for i in acc_vs_n.members({r["index"]: r for r in rows}, ns, ro.top_k) if i not in members]
        members.update({i: population[i] for i in extra})
        self._answer(run.test_ledger, members, test, lambda i: greedy(self.response_length), self.test_cost,
                     "test answers")
        # sigma_choice=dev: each sigma's top-K answers the dev split (search cost); the sigma whose vote is best
        # there is chosen (core/sigma_choice.py, no test answer read), and its top-K answers the test set
        choice = None
        if dev is not None:
            by_sigma = sigma_choice.per_sigma_top_k({r["index"]: r for r in rows}, ro.top_k)
            self._answer(run.dev_ledger, {i: population[i] for ids in by_sigma.values() for i in ids}, dev,
                         lambda i: greedy(self.response_length), self.cost, "dev answers (sigma choice)")
            choice = sigma_choice.choose(run.dev_ledger.read().by_index, by_sigma)
            self._answer(run.test_ledger, {i: population[i] for i in choice["experts"]}, test,
                         lambda i: greedy(self.response_length), self.test_cost, "test answers (chosen sigma)")
        n_samples = max(ks) if controls.base_self_consistency else 0
        self._answer(run.test_ledger, {base_sample_index(s): None for s in range(n_samples)}, test,
                     lambda i: sampled(self.response_length, controls.temperature,
                                       seed=base_sample_seed(ro.seed, base_sample_number(i))),
                     self.test_cost, "base samples")

        # 7. one model out of the experts (core/merge.py), if enabled: merged models scored on the selection set, the
        #    best scale's model and its shuffled control answer the test set
        merged = self._consolidate(run, rows, ranked, selection, test) if ro.consolidate.enabled else None

        # 8. votes, controls, intervals, diagnostics -> results.json, tracking, plots (the tools render the tables)
        results = self._results(rows, ranked, base_row, run.test_ledger.read().by_index, ks,
                                population[:n_control], n_samples)
        results["selection"] = selection_summary
        test_table = {m: list(zip(r["preds"], r["accs"])) for m, r in run.test_ledger.read().by_index.items()}
        if choice is not None:  # the chosen sigma's top-K test votes beside the mixed top-K's (paired)
            chosen = diagnostics.votes(test_table, choice["experts"], ks, [r["index"] for r in ranked])
            results["sigma_choice"] = dict(choice, strategy="dev", dev_size=len(dev), maj_at_k=chosen["maj_at_k"],
                                           maj_at_k_ci95=chosen["maj_at_k_ci95"], vs_mixed=chosen["paired"],
                                           dev_cost=Cost.of_rows(run.dev_ledger.read().rows).as_dict())
        if ns:
            results["accuracy_vs_n"] = acc_vs_n.curve(test_table, {r["index"]: r for r in rows}, ns, ks,
                                                      ro.top_k, len(extra))
        diagnostics.annotate(results, run.test_ledger.read().by_index, run.ledger.read().by_index,
                             [c.index for c in population[:n_control]],
                             merge.results_block(merged) if merged else None,
                             merged["test_rows"] if merged else None)
        run.write_results(results)
        self.log(_flat_metrics(results))
        print(f"randopt: results in {run.results_path}; tables and plots: randopt-verl density {run.path}")
        if ro.plots:
            for path in plots.draw(run.path):
                print(f"randopt: wrote {path}")
        run.close()

    # -- steps --------------------------------------------------------------------------------------------
    def _race(self, run: RunDir, population: list[Candidate], selection: PromptSet) -> dict[str, Any]:
        """`randopt.selection.strategy=halving`: the race of core/halving.py. Each round replays the race from the
        block ledger (so a resumed run takes the same decisions), and the racing candidates without a row for the
        next block answer it, R at a time; each block row is on disk before the next chunk. When the race is over,
        each survivor's block rows joined into one full selection-set row go into the ledger. Returns results.json's
        ``selection`` block."""
        ro = self.settings
        blocks = selection.blocks(ro.selection.block_size)
        rule = halving.Rule(ro.top_k, ro.selection.z, ro.selection.margin, ro.selection.min_prompts)
        cands = {c.index: c for c in population}
        while True:
            rows = self._block_rows(run, cands, len(blocks))
            state = halving.race({key: r["scores"] for key, r in rows.items()}, list(cands), len(blocks), rule)
            if state.finished:
                break
            b = state.next_block
            self.global_steps = len(rows)
            self.log({"randopt/selection_block": b, "randopt/candidates_racing": len(state.active),
                      "randopt/candidates_stopped": len(state.stopped)})
            self._answer(run.selection_blocks,
                         {halving.block_row_index(i, b, len(blocks)): cands[i] for i in state.todo}, blocks[b],
                         lambda i: greedy(self.response_length), self.cost,
                         f"randopt block {b + 1}/{len(blocks)} ({len(state.active)} racing)")
        scored = run.ledger.read().by_index
        for i in state.survivors:
            if i not in scored:
                run.ledger.append(halving.join_rows(i, [rows[(i, b)] for b in range(len(blocks))]))
        return halving.summary(state, rule, n_candidates=len(population), n_selection=len(selection),
                               block_size=ro.selection.block_size, n_blocks=len(blocks),
                               block_rows=list(rows.values()))

    @staticmethod
    def _block_rows(run: RunDir, cands: Mapping[int, Candidate], n_blocks: int) -> dict[tuple[int, int], dict]:
        """The block ledger's rows of this population by (candidate, block), checked against its (seed, sigma)."""
        out = {}
        for r in run.selection_blocks.read().rows:
            i, b = halving.split_block_row_index(r["index"], n_blocks)
            if i in cands:
                out[(i, b)] = r
        verify_rows([r for r in out.values()],
                    {r["index"]: (cands[i].seed, cands[i].sigma) for (i, _), r in out.items()})
        return out

    def _open_run(self, selection: PromptSet, test: PromptSet, dev: Optional[PromptSet]) -> RunDir:
        """The run directory with this search's identity (what defines the candidates and their scores; the shared
        part is `SearchTrainer.open_run`'s) and its test identity (what defines the test answers)."""
        ro = self.settings
        search = {"population_seed": ro.seed, "sigmas": ro.sigmas,
                  # halving decides who answers which prompts (a full run's identity stays as it was)
                  **({"selection": schema.plain(ro.selection)} if ro.selection.strategy != "full" else {})}
        test_identity = {"test_set_hash": hash_rows(test.identity()),
                         "generation": greedy(self.response_length).identity(),
                         # the base samples' temperature changes their answers; the other control settings only
                         # choose how many answers exist (more are added on resume, none is reinterpreted)
                         "controls": {"temperature": ro.controls.temperature}}
        return self.open_run(selection, search, test_identity=test_identity, n_candidates=ro.population_size,
                             identity={"dev_set_hash": hash_rows(dev.identity())} if dev is not None else None)

    def _answer(self, ledger: Ledger, members: Mapping[int, Optional[Candidate]], prompts: PromptSet,
                sampling_of: Callable[[int], Sampling], cost: Cost, desc: str,
                after_chunk: Optional[Callable[[], None]] = None) -> None:
        """Each member not yet in the ledger answers the prompts, R members at a time (one per replica); each row is
        on disk before the next chunk starts."""
        done = ledger.read().by_index
        todo = [i for i in members if i not in done]
        bar = phase_bar(total=len(members), initial=len(members) - len(todo), desc=desc)
        for chunk in self.replica_chunks(todo):
            evs = self.evaluate({r: members[i] for r, i in chunk.items()}, prompts,
                                {r: sampling_of(i) for r, i in chunk.items()}, cost)
            for r, i in chunk.items():
                ledger.append(evs[r].row(i, members[i]))
            bar.update(len(chunk))
            if after_chunk is not None:
                after_chunk()
        bar.close()

    def _consolidate(self, run: RunDir, rows, ranked, selection: PromptSet, test: PromptSet) -> dict:
        """`randopt.consolidate`: plan the merged models (core/merge.py), score them on the selection set, choose
        each variant's scale there, answer the test set with the chosen ones. Returns the record (also written to
        consolidated.json) with the chosen models' test rows under ``"test_rows"`` (not written)."""
        c = self.settings.consolidate
        record = merge.plan(rows, ranked, weighting=c.weighting, over=c.over, scales=c.scales,
                            shuffled_control=c.shuffled_control, population_seed=self.settings.seed)
        old = run.consolidated()
        if old is not None and {k: old.get(k) for k in record} != record:
            print("randopt: the consolidation plan changed (settings or candidates): its evaluations are redone")
            run.reset_consolidation()
        run.write_consolidated(record)
        models = {m["index"]: Merged.from_dict(m) for m in record["models"]}
        sampling = lambda i: greedy(self.response_length)  # noqa: E731
        # the consolidation's own costs, reported in its results block (the search's cost is unchanged)
        sel_cost = Cost.of_rows(run.consolidation_ledger.read().rows)
        self._answer(run.consolidation_ledger, models, selection, sampling, sel_cost, "merged models (selection)")
        by_index = run.consolidation_ledger.read().by_index
        scores = {i: by_index[i]["score"] for i in models}
        record["selection_scores"] = {str(i): v for i, v in scores.items()}
        chosen = {v: merge.choose(record["models"], scores, v) for v in merge.VARIANTS}
        chosen = {v: m for v, m in chosen.items() if m is not None}
        record["chosen"] = {v: m["index"] for v, m in chosen.items()}
        test_cost = Cost.of_rows(run.consolidation_test_ledger.read().rows)
        self._answer(run.consolidation_test_ledger, {m["index"]: models[m["index"]] for m in chosen.values()},
                     test, sampling, test_cost, "merged models (test)")
        run.write_consolidated(record)
        tests = run.consolidation_test_ledger.read().by_index
        return dict(record, test_rows={v: tests[m["index"]] for v, m in chosen.items()},
                    selection_cost=Cost.of_rows([by_index[i] for i in models]).as_dict())

    def _results(self, rows, ranked, base_row, test_rows, ks, control_pop, n_samples) -> dict[str, Any]:
        ro = self.settings
        table = {m: list(zip(r["preds"], r["accs"])) for m, r in test_rows.items()}
        ranked_ids = [r["index"] for r in ranked]
        results: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "n_candidates": len(rows),
            "n_selection": base_row["n"],
            "n_test": test_rows[BASE]["n"],
            "base": {"test_acc": test_rows[BASE]["acc"], "selection_score": base_row["score"],
                     "selection_acc": base_row["acc"]},
            "experts": [dict(_expert(i, r), test_acc=test_rows[r["index"]]["acc"]) for i, r in enumerate(ranked)],
            "maj_at_k": {str(k): v for k, v in vote.maj_at_k(table, ranked_ids, ks).items()},
            "fraction_beating_base_by_sigma": vote.fraction_beating_base(rows, base_row["score"]),
        }
        if control_pop:
            pop_ids = [c.index for c in control_pop]
            results["random_k"] = {
                str(k): vote.random_k(table, pop_ids, k, ro.controls.random_k_draws, ro.seed)
                for k in ks if k <= len(pop_ids)
            }
        if n_samples:
            samples = [table[base_sample_index(s)] for s in range(n_samples)]
            results["base_maj_at_k"] = {str(k): v for k, v in vote.base_maj_at_k(samples, ks).items()}
            results["base_sampling_temperature"] = ro.controls.temperature
        # the search's cost (the axis shared with ES and GRPO training) and, apart, the test-time cost of
        # answering with K experts plus the controls
        results["cost"], results["test_cost"] = self.cost.as_dict(), self.test_cost.as_dict()
        return results


def _expert(i: int, row: dict) -> dict[str, Any]:
    return {"rank": i + 1, "index": row["index"], "seed": row["seed"], "sigma": row["sigma"],
            "selection_score": row["score"], "selection_acc": row["acc"]}


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
    if "consolidated" in results:
        c = results["consolidated"]
        m["randopt/test/consolidated_acc"] = c["test_acc"]
        if "shuffled_control_test_acc" in c:
            m["randopt/test/consolidated_shuffled_control_acc"] = c["shuffled_control_test_acc"]
    rho = results.get("diagnostics", {}).get("selection_test_spearman")
    if rho is not None:
        m["randopt/diagnostics/selection_test_spearman"] = rho
    for key, v in results["test_cost"].items():
        m[f"test_cost/{key}"] = v
    sel = results.get("selection") or {}
    if sel.get("strategy") == "halving":
        m["randopt/selection/n_stopped"] = sel["n_stopped"]
        m["randopt/selection/rollouts_saved"] = sel["rollouts_saved"]
    for k, v in (results.get("sigma_choice") or {}).get("maj_at_k", {}).items():
        m[f"randopt/test/sigma_choice/maj@{k}"] = v
    return m
