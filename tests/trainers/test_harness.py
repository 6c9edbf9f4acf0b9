"""SearchTrainer's evaluation primitive without Ray or a model: fake replicas whose answer is a pure function of
(candidate, prompt, sampling seed), as the real ones are (greedy, or seeded per request). What `evaluate`,
`replica_chunks` and `evaluate_spread` add on top must not depend on the replica count, must load a candidate only
when a replica does not hold it, and must count cost by the one definition."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from randopt_verl.core.population import Candidate, ParamFilter
from randopt_verl.core.cost import Cost
from randopt_verl.trainers.harness import Evaluation, PromptSet, SearchTrainer, greedy, sampled


class FakeTrainer(SearchTrainer):
    def __init__(self, n_replicas: int, batch: int = 2):
        # no verl _setup: only what the evaluation primitive reads
        self.config = SimpleNamespace(actor_rollout_ref=SimpleNamespace(rollout=SimpleNamespace(
            name="hf", engine_kwargs={"hf": {"max_batch_size": batch}}, response_length=4)))
        reps = [SimpleNamespace(replica_rank=r) for r in range(n_replicas)]
        self.llm_server_manager = SimpleNamespace(get_replicas=lambda: reps)
        self.param_filter, self.how, self._held = ParamFilter(), "server", {}
        self.holding: dict[int, object] = {}
        self.loads: list[dict] = []

    def load_candidates(self, by_replica, *, how, param_filter):
        self.loads.append(dict(by_replica))
        self.holding = {rep.replica_rank: by_replica.get(rep.replica_rank) for rep in self.replicas}

    def generate(self, prompts_by_replica, sampling):
        out = {}
        for r, prompts in prompts_by_replica.items():
            cand, seed = self.holding[r], sampling[r].seed
            out[r] = [SimpleNamespace(token_ids=[p[0], 0 if cand is None else cand.seed, seed or 0][: 1 + p[0] % 3])
                      for p in prompts]
        return out

    def score(self, rows, responses):
        return [{"score": float(sum(x)), "acc": float(x[0] == row["want"]), "pred": str(x), "error": None}
                for row, x in zip(rows, responses)]


PROMPTS = PromptSet(ids=[[i] for i in range(7)], rows=[{"want": i % 2} for i in range(7)])
CANDS = [Candidate(i, 100 + i, 0.01) for i in range(5)]


def test_replica_chunks_hand_out_r_items_at_a_time():
    assert list(FakeTrainer(2).replica_chunks(CANDS)) == [{0: CANDS[0], 1: CANDS[1]}, {0: CANDS[2], 1: CANDS[3]},
                                                          {0: CANDS[4]}]
    assert list(FakeTrainer(1).replica_chunks([1, 2])) == [{0: 1}, {0: 2}]


def test_prompt_blocks_are_hf_batches():
    assert [len(b) for b in FakeTrainer(2, batch=3).prompt_blocks(PROMPTS)] == [3, 3, 1]


@pytest.mark.parametrize("sampling", [greedy(4), sampled(4, 0.7, seed=9)])
def test_results_do_not_depend_on_the_replica_count(sampling):
    def search(n_replicas):
        t = FakeTrainer(n_replicas)
        cost = Cost()
        rows = {}
        for chunk in t.replica_chunks(CANDS):
            for r, ev in t.evaluate(chunk, PROMPTS, sampling, cost).items():
                rows[chunk[r].index] = ev.samples
        base = t.evaluate_spread(None, PROMPTS, sampling, cost)
        return rows, base.samples, (cost.rollouts, cost.tokens)

    assert search(1) == search(2) == search(3)


def test_a_held_candidate_is_not_reloaded():
    t = FakeTrainer(2)
    t.evaluate({0: CANDS[0], 1: CANDS[1]}, PROMPTS, greedy(4))
    t.evaluate({0: CANDS[0], 1: CANDS[1]}, PROMPTS, sampled(4, 0.7, 1))  # same weights, other sampling
    t.evaluate({0: CANDS[0]}, PROMPTS, greedy(4))
    assert len(t.loads) == 1
    t.evaluate({0: None, 1: None}, PROMPTS, greedy(4))
    t.evaluate_spread(None, PROMPTS, greedy(4))  # every replica already holds the base
    assert len(t.loads) == 2 and t.loads[-1] == {0: None, 1: None}


def test_evaluate_spread_joins_blocks_in_prompt_order_and_costs_add_up():
    t = FakeTrainer(2)
    cost = Cost()
    ev = t.evaluate_spread(CANDS[0], PROMPTS, greedy(4), cost)
    one = FakeTrainer(1).evaluate({0: CANDS[0]}, PROMPTS, greedy(4))[0]
    assert ev.samples == one.samples and ev.tokens == one.tokens
    assert cost.rollouts == len(PROMPTS) and cost.tokens == ev.tokens
    assert cost.wall_s == pytest.approx(ev.wall_s) and ev.wall_s > 0
    row = ev.row(3, CANDS[0])
    assert (row["index"], row["seed"], row["n"], row["tokens"]) == (3, CANDS[0].seed, 7, ev.tokens)
    assert Cost.of_rows([row, Evaluation(ev.samples, 5, 1.0).row(-1, None)]).as_dict() == {
        "rollouts": 14, "tokens": ev.tokens + 5, "wall_s": round(row["wall_s"] + 1.0, 3)}
