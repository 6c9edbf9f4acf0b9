"""The verl glue RandOpt and ES share: one place that talks to verl's replicas, weight sync and reward loop.

`SearchTrainer` is a verl V1 `PPOTrainer` whose `_setup` is verl's own (tokenizer, datasets, worker groups,
rollout replicas, checkpoint engine, reward loop); it changes one thing there, the actor worker class
(`SearchWorker`, for perturb-at-sync and the ES update), and replaces verl's `fit`: it reads the settings and runs
the subclass's `search`.

Every phase of RandOpt and ES (search, test answers, base self-consistency samples, ES members, ES validation)
goes through one primitive, `evaluate({replica: candidate}, prompts, sampling)`: the replicas take their candidates
(None = the base weights; a replica already holding its candidate is not reloaded), answer their prompts all at
once, and verl's reward loop scores the answers. `replica_chunks(items)` hands out work R items at a time
(R = rollout replicas), so every replica works in every phase. Results do not depend on R: a replica's answers
depend only on its weights, prompts and sampling (greedy, or seeded per request), and prompts are split into
blocks aligned with the hf engine's batches (`prompt_blocks`).

Cost (the same definition for RandOpt, ES and GRPO): rollouts (prompt x sample generated for the search or for
training), their generated tokens, and the wall time of the search or training work, weights-in included
(loading candidates, the update, the sync of updated weights); validation, test answers, controls, checkpoint I/O
and start-up (model load, the first weight sync of a process) excluded. `Cost` holds the counters; `evaluate` adds
its timed work to the `Cost` it is given (`self.cost` for the search, `self.test_cost` for test answers).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Mapping, Optional, Sequence, TypeVar, Union

import numpy as np
import ray
import torch
from omegaconf import DictConfig, OmegaConf
from verl import DataProto
from verl.trainer.ppo.v1.trainer_base import PPOTrainer

from randopt_verl import preflight
# a module import: `import verl` (which schema needs) loads verl's plugins, which import this module while schema is
# still initializing; its names are looked up when a trainer starts
from randopt_verl.config import schema
from randopt_verl.core import noise
from randopt_verl.core.cost import Cost
from randopt_verl.core.population import Candidate, Merged, ParamFilter
from randopt_verl.core.fingerprint import fingerprint_files, hash_rows, model_files
from randopt_verl.core.jsonio import append_jsonl
from randopt_verl.core.ledger import candidate_row
from randopt_verl.core.rundir import RunDir
from randopt_verl.core.vote import normalise_reward
from randopt_verl.cpu.hf_engine import HFOptions
from randopt_verl.workers import use_search_worker

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class PromptSet:
    """The first rows of a verl dataset: prompt ids plus what the reward function needs."""

    ids: list[list[int]]
    rows: list[dict[str, Any]] = field(repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def identity(self) -> list:
        # what makes two prompt sets the same set: tokens in and the answers they are scored against
        return [[ids, r["data_source"], r["reward_model"].get("ground_truth")] for ids, r in zip(self.ids, self.rows)]

    def split(self, at: int) -> tuple["PromptSet", "PromptSet"]:
        """The first ``at`` prompts and the rest."""
        return PromptSet(self.ids[:at], self.rows[:at]), PromptSet(self.ids[at:], self.rows[at:])

    def blocks(self, size: int) -> list["PromptSet"]:
        """Consecutive blocks of ``size`` prompts (the last may be shorter)."""
        return [PromptSet(self.ids[lo : lo + size], self.rows[lo : lo + size]) for lo in range(0, len(self), size)]


@dataclass(frozen=True)
class Sampling:
    """How a replica answers: greedy (temperature 0), or sampled with a per-request seed (vLLM's
    SamplingParams.seed; the hf engine seeds each batch with it), so samples do not depend on replica count,
    order or restarts."""

    max_tokens: int
    temperature: float = 0.0
    seed: Optional[int] = None

    def params(self) -> dict[str, Any]:
        p = {"temperature": float(self.temperature), "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0,
             "logprobs": False, "max_tokens": int(self.max_tokens)}
        if self.seed is not None:
            p["seed"] = int(self.seed)
        return p

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in self.params().items() if k != "seed"}


def greedy(response_length: int) -> Sampling:
    return Sampling(int(response_length))


def sampled(response_length: int, temperature: float, seed: int) -> Sampling:
    return Sampling(int(response_length), float(temperature), int(seed))


@dataclass
class Evaluation:
    """One replica's answers to its prompts: per-sample reward outcomes (`normalise_reward`), generated tokens, and
    its share of the wall time of the `evaluate` call."""

    samples: list[dict]
    tokens: int
    wall_s: float

    def row(self, index: int, candidate: Optional[Candidate | Merged]) -> dict:
        """The ledger row of this evaluation (base and merged models: seed 0, sigma 0; a merged model's terms are in
        its consolidation record)."""
        seed, sigma = (candidate.seed, candidate.sigma) if isinstance(candidate, Candidate) else (0, 0.0)
        return candidate_row(index, seed, sigma, self.samples, tokens=self.tokens, wall_s=self.wall_s)

    @staticmethod
    def join(parts: Sequence["Evaluation"]) -> "Evaluation":
        """Evaluations of consecutive prompt blocks as one evaluation of the whole prompt set."""
        return Evaluation([s for p in parts for s in p.samples], sum(p.tokens for p in parts),
                          sum(p.wall_s for p in parts))


_UNKNOWN = object()


class SearchTrainer(PPOTrainer):
    """Base of the randopt and es trainers (registered by their modules)."""

    node: ClassVar[str]  # the config node this trainer reads: "randopt" or "es"
    settings: Union[schema.RandOptConfig, schema.ESConfig]  # that node as its checked dataclass

    def __init__(self, config: DictConfig):
        # checks and runtime defaults before any model loads (verl's entry point skips randopt_verl.main)
        preflight.trainer_init(config)
        super().__init__(config)
        self.read_settings()
        self.cost = Cost()  # the search or training work (see the module docstring)
        self.test_cost = Cost()  # test answers and controls (RandOpt), reported apart
        self.how = "sync"  # how candidates reach the replicas: "server" (hf, in place) or "sync" (the FSDP stream)
        self._held: dict[int, Any] = {}  # replica -> the candidate it holds (None: base); missing: unknown

    def read_settings(self) -> None:
        """Our node as its checked dataclass, verl's way (one definition, default and check per key): every use reads
        an attribute of ``self.settings``, typed, never the raw DictConfig; and the parameter filter built from it
        once. Run when the trainer is made and again as each `fit` starts, so a config changed between two fits (the
        tests do that) is read whole and anew."""
        self.settings = schema.typed(self.config, self.node)
        self.param_filter: ParamFilter = self.settings.param_filter.build()

    def fit(self, agent_loop_manager=None):
        """verl's entry to the training loop (the agent loop manager is GRPO's; these trainers drive the replicas
        themselves): the settings read anew, then the subclass's `search`."""
        self.read_settings()
        self.search()

    def search(self) -> None:
        """The loop that replaces verl's update loop: RandOptTrainer.search, ESTrainer.search. (Not abstract: the
        harness tests make a SearchTrainer that only evaluates.)"""
        raise NotImplementedError(f"{type(self).__name__} has no search loop: subclass it as trainers/randopt.py does")

    # -- verl hooks -----------------------------------------------------------------------------------------
    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        # Same roles and pools as verl's; only the actor worker class changes (perturb-at-sync, ES update).
        use_search_worker(self)

    def on_step_end(self):  # abstract in verl; these trainers run their own loop
        return None

    def on_sample_end(self):
        return None

    # -- prompts --------------------------------------------------------------------------------------------
    def prompts(self, dataset, n: Optional[int]) -> PromptSet:
        n = len(dataset) if n is None else min(int(n), len(dataset))
        kwargs = dict(self.config.data.get("apply_chat_template_kwargs", None) or {})
        ids, rows = [], []
        for i in range(n):
            row = dataset[i]
            ids.append(list(self.tokenizer.apply_chat_template(
                row["raw_prompt"], add_generation_prompt=True, tokenize=True, return_dict=False, **kwargs)))
            rows.append({
                "data_source": row["data_source"],
                "reward_model": dict(row["reward_model"]),
                "extra_info": dict(row.get("extra_info") or {}),
            })
        return PromptSet(ids=ids, rows=rows)

    def selection_and_test(self) -> tuple[PromptSet, PromptSet]:
        """The selection set (the first ``selection_size`` rows of data.train_files) and the test set (the first
        ``test_size`` rows of data.val_files), tokenized as verl's agent loop would."""
        return (self.prompts(self.train_dataset, self.settings.selection_size),
                self.prompts(self.val_dataset, self.settings.test_size))

    @property
    def response_length(self) -> int:
        return self.config.actor_rollout_ref.rollout.response_length

    def rollout_identity(self) -> dict[str, Any]:
        """What of the rollout changes scores: backend, dtype and tensor parallelism (a run scored on one must not
        be resumed on another)."""
        rollout = self.config.actor_rollout_ref.rollout
        return {"name": rollout.name, "dtype": rollout.dtype,
                "tensor_model_parallel_size": rollout.tensor_model_parallel_size}

    def open_run(self, selection: PromptSet, search: dict[str, Any], *, identity: Optional[dict[str, Any]] = None,
                 test_identity: Optional[dict[str, Any]] = None, n_candidates: Optional[int] = None) -> RunDir:
        """The run directory (``settings.run_dir``) with this run's identity, and the metrics log opened in it.

        What every RandOpt and ES identity holds: the model's files, the noise spec, the selection set, the method's
        search settings (``search``, plus the parameter filter, the greedy generation and the reward function) and the
        rollout; ``identity`` adds the method's own keys (ES: the test set). A resume against a different identity
        is refused naming the key (core/rundir.py)."""
        full = {
            "model_fingerprint": fingerprint_files(model_files(self.config.actor_rollout_ref.model.path)),
            "noise_spec_version": noise.NOISE_SPEC,
            "selection_set_hash": hash_rows(selection.identity()),
            **(identity or {}),
            "search": {**search, "param_filter": self.param_filter.to_dict(),
                       "generation": greedy(self.response_length).identity(),
                       "reward": OmegaConf.to_container(self.config.reward.custom_reward_function, resolve=True)},
            "rollout": self.rollout_identity(),
        }
        run = RunDir.open(self.settings.run_dir, identity=full, test_identity=test_identity, n_candidates=n_candidates,
                          config=OmegaConf.to_container(self.config, resolve=True))
        self.open_log(run, self.node)
        return run

    # -- replicas -------------------------------------------------------------------------------------------
    @property
    def replicas(self) -> list:
        return self.llm_server_manager.get_replicas()

    @property
    def rollout_name(self) -> str:
        return str(self.config.actor_rollout_ref.rollout.name)

    def use(self, perturb_at: str) -> None:
        """The perturbation path every later `evaluate` uses ("auto": in place on hf servers, the FSDP stream
        otherwise); then the base weights into every replica (vLLM starts with dummy weights; hf takes its pristine
        copy here). Start-up: not counted as cost."""
        self.how = ("server" if self.rollout_name == "hf" else "sync") if perturb_at == "auto" else perturb_at
        self.load_base()

    def load_base(self) -> None:
        """verl's weight sync of the actor's (current) weights into every replica."""
        self.load_candidates({}, how="sync", param_filter=self.param_filter)
        self._held = {rep.replica_rank: None for rep in self.replicas}

    def replica_chunks(self, items: Sequence[T]) -> Iterator[dict[int, T]]:
        """``{replica: item}`` for consecutive groups of R items (R = rollout replicas), in order."""
        ranks = [rep.replica_rank for rep in self.replicas]
        for lo in range(0, len(items), len(ranks)):
            yield dict(zip(ranks, items[lo : lo + len(ranks)]))

    def prompt_blocks(self, prompts: PromptSet) -> list[PromptSet]:
        """The prompts in blocks to spread over the replicas. On hf, one block is one engine batch, so a prompt is
        answered in the same batch (the same padding and arithmetic) whatever the replica count; vLLM schedules
        requests itself (bit-reproducible only with verl's full_determinism), so the prompts are split evenly."""
        if self.rollout_name == "hf":
            size = HFOptions.of(self.config.actor_rollout_ref.rollout).max_batch_size
        else:
            size = -(-len(prompts) // len(self.replicas))
        return prompts.blocks(max(1, size))

    def load_candidates(self, by_replica: dict[int, Optional[Candidate | Merged]], *, how: str,
                        param_filter: ParamFilter) -> None:
        """Make replica r hold by_replica.get(r) (a search `Candidate` or a consolidated `Merged`; None or missing:
        the base weights). The candidate and filter objects travel to the servers or ranks as they are (Ray pickles
        them), so the noise is built from the very objects the trainer holds."""
        if how == "server":
            # hf servers perturb in place from their pristine copy: no weight transfer
            ray.get([server.hold.remote(by_replica.get(rep.replica_rank), param_filter)
                     for rep in self.replicas for server in rep.servers])
            return
        # perturb-at-sync: each rank perturbs the FSDP stream for its own replica; verl's sync does the rest
        self.actor_rollout_wg.set_sync_candidates(dict(by_replica), param_filter)
        self.sync_weights()

    def sync_weights(self) -> None:
        """verl's weight sync from the FSDP actor into every replica, and nothing else.

        verl's colocated ("naive") sync already does what a weight change needs: it wakes the replicas if they
        sleep (verl's setup leaves them asleep; on an awake vLLM engine the wake-up is a no-op), loads the weights
        in place, and resets the prefix cache once the new weights are in (cached KV blocks of the same
        selection prompts computed with the previous candidate would otherwise be reused). RandOpt and ES never
        train on the GPU (their FSDP2 actor is forward-only, its shards in host memory), so nothing needs the
        replicas' memory between chunks: no sleep before the sync, no second cache reset after it.
        """
        self.checkpoint_manager.update_weights(self.global_steps)

    # -- the evaluation primitive ------------------------------------------------------------------------------
    def evaluate(
        self,
        by_replica: Mapping[int, Optional[Candidate]],
        prompts: Union[PromptSet, Mapping[int, PromptSet]],
        sampling: Union[Sampling, Mapping[int, Sampling]],
        cost: Optional[Cost] = None,
    ) -> dict[int, Evaluation]:
        """Replica r takes ``by_replica[r]`` (None: base; not reloaded if it holds it already), answers its prompts
        (one set for all, or ``{replica: PromptSet}``) with its sampling (one for all, or ``{replica: Sampling}``),
        and verl's reward loop scores every answer in one call. The wall time (weights-in, generation, scoring) is
        shared evenly among the replicas, and everything is added to ``cost``."""
        t0 = time.perf_counter()
        if any(self._held.get(r, _UNKNOWN) != c for r, c in by_replica.items()):
            self.load_candidates(dict(by_replica), how=self.how, param_filter=self.param_filter)
            self._held = {rep.replica_rank: by_replica.get(rep.replica_rank) for rep in self.replicas}
        ps = {r: prompts if isinstance(prompts, PromptSet) else prompts[r] for r in by_replica}
        sp = {r: sampling if isinstance(sampling, Sampling) else sampling[r] for r in by_replica}
        outs = self.generate({r: p.ids for r, p in ps.items()}, sp)
        order = list(outs)
        responses = {r: [o.token_ids for o in outs[r]] for r in order}
        flat = self.score([row for r in order for row in ps[r].rows], [x for r in order for x in responses[r]])
        wall = (time.perf_counter() - t0) / max(1, len(order))
        result, lo = {}, 0
        for r in order:
            n = len(responses[r])
            result[r] = Evaluation(flat[lo : lo + n], sum(len(x) for x in responses[r]), wall)
            lo += n
            if cost is not None:
                cost.add(n, result[r].tokens, wall)
        return result

    def evaluate_spread(self, candidate: Optional[Candidate], prompts: PromptSet, sampling: Sampling,
                        cost: Optional[Cost] = None) -> Evaluation:
        """One candidate on a prompt set, its `prompt_blocks` spread over the replicas (each holding the candidate);
        the blocks' answers joined in prompt order."""
        parts = []
        for chunk in self.replica_chunks(self.prompt_blocks(prompts)):
            evs = self.evaluate({r: candidate for r in chunk}, chunk, sampling, cost)
            parts += [evs[r] for r in chunk]
        return Evaluation.join(parts)

    def generate(self, prompts_by_replica: dict[int, list[list[int]]],
                 sampling: Union[Sampling, Mapping[int, Sampling]]) -> dict[int, list]:
        """All replicas generate at once (one sampling for all, or ``{replica: Sampling}``); returns
        {replica: [TokenOutput in prompt order]}."""
        pending = {}
        for rep in self.replicas:
            prompts = prompts_by_replica.get(rep.replica_rank)
            if not prompts:
                continue
            sp = sampling if isinstance(sampling, Sampling) else sampling[rep.replica_rank]
            server, params = rep.server_handle, sp.params()
            if self.rollout_name == "hf":
                # one call, fixed ordered batches: results independent of request timing and replica count
                pending[rep.replica_rank] = server.generate_many.remote(prompts, params)
            else:
                pending[rep.replica_rank] = [
                    server.generate.remote(prompt_ids=p, sampling_params=dict(params), request_id=uuid.uuid4().hex)
                    for p in prompts
                ]
        return {r: ray.get(ref) for r, ref in pending.items()}

    # -- rewards --------------------------------------------------------------------------------------------
    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _dataproto(self, rows: Sequence[dict], responses: Sequence[list[int]]) -> DataProto:
        pad = self.tokenizer.pad_token_id or 0
        width = max(1, max(len(r) for r in responses))
        resp = torch.full((len(responses), width), pad, dtype=torch.long)
        # verl's naive reward manager reads the last `width` columns of attention_mask as the response mask
        mask = torch.zeros((len(responses), 1 + width), dtype=torch.long)
        mask[:, 0] = 1
        for i, r in enumerate(responses):
            if r:
                resp[i, : len(r)] = torch.tensor(r, dtype=torch.long)
                mask[i, 1 : 1 + len(r)] = 1
        non_tensor = {
            "data_source": np.array([r["data_source"] for r in rows], dtype=object),
            "reward_model": np.array([dict(r["reward_model"]) for r in rows], dtype=object),
            "extra_info": np.array([dict(r["extra_info"]) for r in rows], dtype=object),
        }
        return DataProto.from_dict(tensors={"responses": resp, "attention_mask": mask}, non_tensors=non_tensor)

    def score(self, rows: Sequence[dict], responses: Sequence[list[int]]) -> list[dict]:
        """Per-sample {"score", "acc", "pred", "error"} through verl's reward loop workers."""
        workers = self.reward_loop_manager.reward_loop_workers
        data = self._dataproto(rows, responses)
        bounds = np.linspace(0, len(rows), len(workers) + 1).astype(int)
        chunks = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
        refs = [w.compute_score_batch.remote(data[lo:hi]) for w, (lo, hi) in zip(workers, chunks)]
        results: list[Any] = []
        for (lo, hi), ref, worker in zip(chunks, refs, workers):
            try:
                results.extend(ray.get(ref))
            except Exception:
                # one sample raised: score the chunk one by one so only that sample carries the error
                for i in range(lo, hi):
                    try:
                        results.append(ray.get(worker.compute_score.remote(data[i : i + 1])))
                    except Exception as exc:  # recorded in the ledger row, the run goes on
                        results.append(exc)
        out = []
        for res, resp in zip(results, responses):
            if isinstance(res, BaseException):
                out.append(normalise_reward(getattr(res, "cause", None) or res, self.decode(resp)))
                continue
            extra = dict(res.get("reward_extra_info") or {})
            extra["score"] = res["reward_score"]
            out.append(normalise_reward(extra, self.decode(resp)))
        return out

    # -- logging --------------------------------------------------------------------------------------------
    def open_log(self, run: RunDir, method: str) -> None:
        """verl's Tracking (console, wandb, ...) plus the run directory's metrics.jsonl, which this trainer appends
        and fsyncs itself: verl's "file" backend reopens its file with "wb" and would erase a resumed run's rows."""
        from verl.utils.tracking import Tracking

        self.method = method
        self.metrics_path = run.metrics_path
        backends = [b for b in list(self.config.trainer.logger) if b != "file"]
        self.logger = Tracking(
            project_name=self.config.trainer.project_name,
            experiment_name=self.config.trainer.experiment_name,
            default_backend=backends,
            config=OmegaConf.to_container(self.config, resolve=True),
        )

    def log(self, metrics: dict[str, Any]) -> None:
        metrics = {**metrics, **self.cost.metrics(), "meta/method": self.method}
        self.logger.log(data=metrics, step=self.global_steps)
        append_jsonl(self.metrics_path, {"step": self.global_steps, "data": metrics})  # on disk before the next step
