"""A batching transformers generation engine: the model half of the `hf` rollout backend, without Ray.

verl's rollout servers are token-in/token-out (`generate(prompt_ids, sampling_params) -> TokenOutput`). This
engine serves that contract with `transformers.generate` and left padding, in batches:
- `generate_batch` runs one padded batch of requests that share sampling settings;
- `Batcher` collects concurrent `generate` calls (the agent loop sends one request per prompt) into such batches;
- weights change only by `load_weights` (verl's weight sync) or `set_candidate` (RandOpt: pristine + σ·ε, computed
  from the pristine copy taken at the last `load_weights`, so "restore" is exact by construction).
HF generate keeps no KV/prefix cache between calls, so nothing stale survives a weight change.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """The sampling settings a batch must share (max_tokens may differ per request)."""

    greedy: bool
    temperature: float
    top_p: float
    top_k: int
    logprobs: bool
    seed: Optional[int] = None  # per-request sampling seed (vLLM's SamplingParams.seed); None: the server's stream

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "Sampling":
        temperature = float(params.get("temperature", 1.0) or 0.0)
        top_k = int(params.get("top_k", -1) or -1)
        return cls(
            greedy=temperature <= 0.0,
            temperature=temperature,
            top_p=float(params.get("top_p", 1.0) or 1.0),
            top_k=top_k if top_k > 0 else -1,
            logprobs=bool(params.get("logprobs")),
            seed=None if params.get("seed") is None else int(params["seed"]),
        )


@dataclass
class Generated:
    token_ids: list[int]
    log_probs: Optional[list[float]]
    finished: bool  # stopped at an eos token (else hit its token budget)


@dataclass
class _Request:
    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    future: asyncio.Future = field(repr=False)


class HFEngine:
    def __init__(
        self,
        model_path: str,
        *,
        dtype: torch.dtype = torch.float32,
        max_response_length: int,
        max_batch_size: int = 64,
        threads: int = 1,
        seed: int = 0,
        attn_implementation: str = "sdpa",
    ) -> None:
        from transformers import AutoModelForCausalLM, GenerationConfig

        torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=dtype, attn_implementation=attn_implementation
        ).eval()
        gc = self.model.generation_config or GenerationConfig()
        eos = gc.eos_token_id if gc.eos_token_id is not None else self.model.config.eos_token_id
        self.eos_ids: list[int] = [eos] if isinstance(eos, int) else list(eos or [])
        pad = gc.pad_token_id if gc.pad_token_id is not None else self.model.config.pad_token_id
        self.pad_id: int = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)
        self.max_response_length = max_response_length
        self.max_batch_size = max_batch_size
        self.seed = seed
        torch.manual_seed(seed)
        # One lock: a weight change never overlaps a forward pass.
        self.lock = threading.Lock()
        self.pristine: dict[str, torch.Tensor] = {}
        self._snapshot_pristine()
        self.candidate: Optional[tuple] = None  # the held terms ((seed, coeff), ...)

    # -- weights -------------------------------------------------------------------------------------------
    def _snapshot_pristine(self) -> None:
        # named_parameters() yields a tied tensor once, under its canonical name
        self.pristine = {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """verl's weight sync: copy HF-named tensors in, then take them as the new pristine weights."""
        params = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        state = self.model.state_dict(keep_vars=True)  # includes tied aliases (lm_head.weight)
        n = 0
        with self.lock, torch.no_grad():
            for name, tensor in named_tensors:
                target = params.get(name, buffers.get(name, state.get(name)))
                if target is None:
                    raise KeyError(f"hf rollout: weight {name!r} is not a parameter of the rollout model")
                target.copy_(tensor.to(target.dtype))
                n += 1
            self._snapshot_pristine()
            self.candidate = None
        return n

    def set_candidate(self, seed: Optional[int], sigma: float = 0.0, param_filter=None) -> None:
        """Hold pristine + σ·ε(seed) (the canonical noise), or the pristine weights when seed is None."""
        from randopt_verl.core.population import Candidate

        self.hold(None if seed is None else Candidate(index=-1, seed=int(seed), sigma=float(sigma)), param_filter)

    def hold(self, candidate, param_filter=None) -> None:
        """Hold a `Candidate` or `Merged` (pristine + Σ coeff·ε over its terms, `population.combined`), or the
        pristine weights for None."""
        from randopt_verl.core.population import ParamFilter, perturb_module_

        with self.lock:
            perturb_module_(self.model, candidate, param_filter or ParamFilter(None, None), self.pristine)
            self.candidate = None if candidate is None else candidate.terms()

    def named_weights(self) -> dict[str, torch.Tensor]:
        with self.lock:
            return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    # -- generation ----------------------------------------------------------------------------------------
    def generate_batch(
        self, prompts: list[list[int]], sampling: Sampling, max_tokens: list[int] | None = None
    ) -> list[Generated]:
        """Generate for prompts that share `sampling`, in chunks of max_batch_size, in order."""
        max_tokens = max_tokens or [self.max_response_length] * len(prompts)
        out: list[Generated] = []
        for lo in range(0, len(prompts), self.max_batch_size):
            hi = lo + self.max_batch_size
            out.extend(self._generate_chunk(prompts[lo:hi], sampling, max_tokens[lo:hi]))
        return out

    def _generate_chunk(self, prompts: list[list[int]], sampling: Sampling, max_tokens: list[int]) -> list[Generated]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every prompt ends at the same column
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        budget = min(max(max_tokens), self.max_response_length)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=budget,
            do_sample=not sampling.greedy,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids or None,
            return_dict_in_generate=True,
            output_logits=sampling.logprobs,
        )
        if sampling.greedy:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k if sampling.top_k > 0 else None,
            )
        with self.lock, torch.no_grad():
            if sampling.seed is not None and not sampling.greedy:
                torch.manual_seed(sampling.seed)  # this process serves one replica: the global RNG is ours
            result = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        new = result.sequences[:, width:]
        logp = None
        if sampling.logprobs and result.logits:
            # log-probs under the raw model distribution (what vLLM reports by default)
            steps = torch.stack(result.logits, dim=1).float().log_softmax(-1)  # [B, T, V]
            logp = steps.gather(-1, new[:, : steps.shape[1]].unsqueeze(-1)).squeeze(-1)
        eos = set(self.eos_ids)
        outs = []
        for i in range(len(prompts)):
            toks, finished = [], False
            for t in new[i, : min(max_tokens[i], self.max_response_length)].tolist():
                toks.append(t)
                if t in eos:
                    finished = True
                    break
            lp = logp[i, : len(toks)].tolist() if logp is not None else None
            outs.append(Generated(token_ids=toks, log_probs=lp, finished=finished))
        return outs


class Batcher:
    """Collects concurrent requests into batches for one HFEngine, one batch at a time.

    Requests that arrive while a batch runs wait and form the next batch, so a burst of N requests costs about
    N / max_batch_size forward passes instead of N. Requests with different sampling settings go in different
    batches.
    """

    def __init__(self, engine: HFEngine, window_s: float = 0.002) -> None:
        self.engine = engine
        self.window_s = window_s
        self.queue: Optional[asyncio.Queue] = None
        self.task: Optional[asyncio.Task] = None
        self.batches = 0
        self.requests = 0

    async def submit(self, prompt_ids: list[int], params: dict[str, Any]) -> Generated:
        if self.queue is None:  # created lazily inside the serving event loop
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._run())
        max_tokens = params.get("max_tokens") or params.get("max_new_tokens") or self.engine.max_response_length
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put(_Request(list(prompt_ids), int(max_tokens), Sampling.from_params(params), fut))
        return await fut

    async def _run(self) -> None:
        while True:
            first = await self.queue.get()
            await asyncio.sleep(self.window_s)  # let the rest of a burst arrive
            pending = [first]
            while len(pending) < self.engine.max_batch_size and not self.queue.empty():
                pending.append(self.queue.get_nowait())
            groups: dict[Sampling, list[_Request]] = {}
            for req in pending:
                groups.setdefault(req.sampling, []).append(req)
            for sampling, reqs in groups.items():
                try:
                    outs = await asyncio.to_thread(
                        self.engine.generate_batch, [r.prompt_ids for r in reqs], sampling, [r.max_tokens for r in reqs]
                    )
                    for r, o in zip(reqs, outs):
                        r.future.set_result(o)
                except Exception as exc:  # a failed batch fails its requests, not the server
                    logger.exception("hf rollout: batch of %d failed", len(reqs))
                    for r in reqs:
                        if not r.future.done():
                            r.future.set_exception(exc)
                self.batches += 1
                self.requests += len(reqs)
