"""A batching transformers generation engine: the model half of the `hf` rollout backend, without Ray.

verl's rollout servers are token-in/token-out (`generate(prompt_ids, sampling_params) -> TokenOutput`). This
engine serves that contract with `transformers.generate`, in batches:
- `generate_batch` runs padded batches of requests that share sampling settings;
- `Batcher` collects concurrent `generate` calls (the agent loop sends one request per prompt) into such batches;
- weights change only by `load_weights` (verl's weight sync) or `hold` (RandOpt: pristine + the candidate's terms,
  computed from the pristine copy taken at the last `load_weights`, so "restore" is exact by construction).

Precision (`dtype`): the model computes in `dtype`: fp32 unless asked; hardware=cpu asks for "auto", which is bf16
where the CPU has bf16 matrix instructions (AMX or AVX512-BF16) and fp32 elsewhere (`resolve_dtype`). The pristine copy is always fp32, as the weights
come from the checkpoint or verl's fp32 FSDP stream; a candidate is formed in fp32 from it (`base + σ·ε`, the
canonical noise) and rounded to `dtype` once on the copy into the model, which is how the same fp32 tensors reach
vLLM's bf16 model on a GPU. So a candidate's weights here are `bf16(fp32 base + σ·ε)` bit for bit, whichever
path (in-place `hold` or perturb-at-sync through `load_weights`) carried them.

Shared prefix: the prompts of one call usually share a chat template and instructions. `generate_batch` encodes
their longest common token prefix once (kept until the weights change), gives each batch row a copy of its KV
cache, and generates from `prefix | padding | suffix` rows, the padding masked out and the positions counted
from the attention mask, so each suffix sees exactly the context and positions it would see unshared.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Optional

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HFOptions:
    """`actor_rollout_ref.rollout.engine_kwargs.hf.*`, the `hf` backend's own settings: one definition and one
    default per key, read by the server (cpu/hf_rollout.py), the harness (its prompt blocks follow the engine's
    batches, which is what makes results independent of the replica count) and the config checks (validate.py)."""

    # prompts per forward pass; the harness cuts prompt sets into blocks of this size
    max_batch_size: int = 64
    # torch threads per replica (None: the host's cores shared by the replicas)
    threads: Optional[int] = None
    # how long the server waits to gather concurrent requests into one batch
    batch_window_s: float = 0.002
    # encode the prompts' common prefix once per weight change
    share_prefix: bool = True
    # shorter common prefixes are not worth a separate forward pass
    min_shared_prefix: int = 8

    @classmethod
    def of(cls, rollout: Any) -> "HFOptions":
        """The options of a rollout config node (``engine_kwargs.hf``; absent keys take the defaults above); an
        unknown key or a bad value raises ValueError naming the fix."""
        kw = dict((getattr(rollout, "engine_kwargs", None) or {}).get("hf", None) or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(kw) - set(known))
        if unknown:
            raise ValueError(f"actor_rollout_ref.rollout.engine_kwargs.hf has unknown key(s) {unknown}; known: "
                             f"{', '.join(known)}")
        opts = cls(**kw)
        for key in ("max_batch_size", "min_shared_prefix"):
            value = getattr(opts, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "max_batch_size" else 0):
                raise ValueError(f"actor_rollout_ref.rollout.engine_kwargs.hf.{key}={value!r} must be an integer "
                                 f">= {1 if key == 'max_batch_size' else 0}")
        if opts.threads is not None and (isinstance(opts.threads, bool) or not isinstance(opts.threads, int)
                                         or opts.threads < 1):
            raise ValueError(f"actor_rollout_ref.rollout.engine_kwargs.hf.threads={opts.threads!r} must be a "
                             "positive integer or null")
        return opts


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:  # not Linux: torch's own detection below
        pass
    return set()


def bf16_matmul_unit() -> Optional[str]:
    """The CPU's bf16 matrix instructions: "amx" (AMX tiles), "avx512_bf16", or None (bf16 would be emulated).

    /proc/cpuinfo's flags where there are any, else torch's cpuinfo-based probes (macOS, Windows)."""
    flags = _cpuinfo_flags()
    cpu = getattr(torch, "cpu", None)
    if "amx_bf16" in flags or (not flags and getattr(cpu, "_is_amx_tile_supported", lambda: False)()):
        return "amx"
    if "avx512_bf16" in flags or (not flags and getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()):
        return "avx512_bf16"
    return None


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """`actor_rollout_ref.rollout.dtype` for the hf engine: "auto" is bf16 where `bf16_matmul_unit()` finds bf16
    instructions (2-8x the fp32 matmul rate) and fp32 elsewhere (emulated bf16 is slower than fp32)."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower()
    if key == "auto":
        return torch.bfloat16 if bf16_matmul_unit() else torch.float32
    if key not in DTYPES:
        raise ValueError(f"actor_rollout_ref.rollout.dtype={name!r}: use auto or one of {sorted(DTYPES)}")
    return DTYPES[key]


GQA_ATTENTION = "randopt_grouped_eager"
# model types whose attention is exactly transformers' eager_attention_forward (no logit soft-capping, sinks or
# extra kwargs), so the grouped version computes the same function; others keep sdpa
GQA_MODEL_TYPES = ("llama", "qwen2", "qwen3")


def grouped_eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention (additive mask, softmax in fp32) without expanding grouped K/V heads.

    Query heads h = g*kv_head + j share kv_head (the order of transformers' repeat_kv), so the queries are viewed as
    [batch, kv_heads, group*q, dim] and multiply the cached K/V directly. On a CPU this avoids copying the whole K/V
    cache per layer and step, which the sdpa path does (its flash kernel runs grouped heads only without a mask)."""
    batch, heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scaling = dim**-0.5 if scaling is None else scaling
    scores = torch.matmul(query.reshape(batch, kv_heads, group * q_len, dim), key.transpose(2, 3)) * scaling
    scores = scores.view(batch, kv_heads, group, q_len, kv_len)
    if attention_mask is not None:  # [batch, 1, q, kv], additive (0 or the dtype's minimum)
        scores = scores + attention_mask[:, :, None]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs.view(batch, kv_heads, group * q_len, kv_len), value)
    return out.view(batch, heads, q_len, dim).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(GQA_ATTENTION, grouped_eager_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GQA_ATTENTION, eager_mask)


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


@dataclass
class _Prefix:
    """The KV cache of a token prefix under the current weights (batch 1, per layer keys and values)."""

    ids: tuple[int, ...]
    kv: list[tuple[torch.Tensor, torch.Tensor]]


def common_prefix_len(prompts: list[list[int]]) -> int:
    """Length of the longest common token prefix, leaving every prompt at least one token of its own (the
    forward pass that follows needs a position to read the first logits from)."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


class HFEngine:
    def __init__(
        self,
        model_path: str,
        *,
        dtype: str | torch.dtype = torch.float32,
        max_response_length: int,
        max_batch_size: int = HFOptions.max_batch_size,
        threads: int = 1,
        seed: int = 0,
        attn_implementation: str = "auto",
        share_prefix: bool = HFOptions.share_prefix,
        min_shared_prefix: int = HFOptions.min_shared_prefix,
    ) -> None:
        from transformers import AutoModelForCausalLM, DynamicCache, GenerationConfig
        from transformers.cache_utils import DynamicLayer

        from randopt_verl.core.population import tied_aliases

        torch.set_num_threads(threads)
        if attn_implementation == "auto":
            # measured on SmolLM2-135M, bf16, 2 cores: 10% faster than sdpa, whose CPU kernel needs expanded K/V
            # heads with a padding mask (bench_hf_server.py modes bf16-shared vs bf16-shared-randopt_grouped_eager)
            from transformers import AutoConfig

            model_type = AutoConfig.from_pretrained(model_path).model_type
            attn_implementation = GQA_ATTENTION if model_type in GQA_MODEL_TYPES else "sdpa"
        if attn_implementation == GQA_ATTENTION:
            _register_attention()
        self.attn_implementation = attn_implementation
        self.dtype = resolve_dtype(dtype)
        # fp32 first: the pristine copy keeps the checkpoint's values (a bf16 checkpoint widens exactly)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.float32, attn_implementation=attn_implementation
        ).eval()
        self.pristine: dict[str, torch.Tensor] = {
            n: p.detach().clone() for n, p in self.model.named_parameters()  # a tied tensor once, canonical name
        }
        with torch.no_grad():
            # parameters only: buffers (rotary inverse frequencies) stay fp32 as computed at load
            for p in self.model.parameters():
                p.data = p.data.to(self.dtype)
        self.aliases = tied_aliases(self.model)  # {"lm_head.weight": "model.embed_tokens.weight"} when tied
        gc = self.model.generation_config or GenerationConfig()
        eos = gc.eos_token_id if gc.eos_token_id is not None else self.model.config.eos_token_id
        self.eos_ids: list[int] = [eos] if isinstance(eos, int) else list(eos or [])
        pad = gc.pad_token_id if gc.pad_token_id is not None else self.model.config.pad_token_id
        self.pad_id: int = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)
        self.max_response_length = max_response_length
        self.max_batch_size = max_batch_size
        self.seed = seed
        torch.manual_seed(seed)
        # Prefix reuse needs a cache of plain full-attention layers (sliding-window or hybrid caches drop or
        # transform old entries, so a copied prefix would not be what the unshared path sees).
        self._cache_cls = DynamicCache
        probe = DynamicCache(config=self.model.config)
        self.share_prefix = bool(share_prefix) and all(type(layer) is DynamicLayer for layer in probe.layers)
        self.min_shared_prefix = max(1, int(min_shared_prefix))
        self._prefix: Optional[_Prefix] = None
        self.prefix_stats = {"encoded": 0, "reused": 0, "tokens_saved": 0}
        # One lock: a weight change never overlaps a forward pass.
        self.lock = threading.Lock()
        self.candidate: Optional[tuple] = None  # the held terms ((seed, coeff), ...)

    # -- weights -------------------------------------------------------------------------------------------
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """verl's weight sync: HF-named tensors become the new pristine weights (kept in fp32) and reach the model
        rounded to its dtype, as vLLM's loader rounds them on a GPU."""
        from randopt_verl.core.population import ParamFilter, perturb_module_

        params = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        n = 0
        with self.lock, torch.no_grad():
            for name, tensor in named_tensors:
                canonical = self.aliases.get(name, name)  # a tied alias (lm_head.weight) names the same tensor
                if canonical in params:
                    target = params[canonical]
                    self.pristine[canonical] = tensor.detach().to(torch.float32, copy=True).reshape(target.shape)
                    target.copy_(self.pristine[canonical])
                elif name in buffers:
                    buffers[name].copy_(tensor)
                else:
                    raise KeyError(f"hf rollout: weight {name!r} is not a parameter of the rollout model")
                n += 1
            if self.candidate is not None:  # a partial stream: the parameters it did not carry go back to pristine
                perturb_module_(self.model, None, ParamFilter(None, None), self.pristine)
            self.candidate = None
            self._prefix = None
        return n

    def hold(self, candidate, param_filter=None) -> None:
        """Hold a `Candidate` or `Merged` (`population.combined`: pristine + Σ coeff·ε over its terms in fp32, rounded
        once to the model's dtype), or the pristine weights for None."""
        from randopt_verl.core.population import ParamFilter, perturb_module_

        with self.lock:
            perturb_module_(self.model, candidate, param_filter or ParamFilter(None, None), self.pristine)
            self.candidate = None if candidate is None else candidate.terms()
            self._prefix = None

    def named_weights(self) -> dict[str, torch.Tensor]:
        """The weights the model computes with (in its dtype)."""
        with self.lock:
            return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    # -- generation ----------------------------------------------------------------------------------------
    def generate_batch(
        self, prompts: list[list[int]], sampling: Sampling, max_tokens: list[int] | None = None
    ) -> list[Generated]:
        """Generate for prompts that share `sampling`, in chunks of max_batch_size, in order. The prompts' common
        prefix (computed over the whole call, so every chunk shares the same one) is encoded once."""
        if not prompts:
            return []
        max_tokens = max_tokens or [self.max_response_length] * len(prompts)
        shared = 0
        if self.share_prefix and len(prompts) > 1:
            shared = common_prefix_len(prompts)
            if shared < self.min_shared_prefix:
                shared = 0
        prefix = tuple(prompts[0][:shared])
        out: list[Generated] = []
        for lo in range(0, len(prompts), self.max_batch_size):
            hi = lo + self.max_batch_size
            out.extend(self._generate_chunk(prompts[lo:hi], sampling, max_tokens[lo:hi], prefix))
        return out

    def _prefix_kv(self, prefix: tuple[int, ...]) -> _Prefix:
        """The prefix's KV cache under the current weights (caller holds the lock): reused while the weights and
        the prefix stay the same, else encoded once."""
        if self._prefix is not None and self._prefix.ids == prefix:
            self.prefix_stats["reused"] += 1
            return self._prefix
        cache = self._cache_cls(config=self.model.config)
        self.model(input_ids=torch.tensor([prefix], dtype=torch.long), past_key_values=cache, use_cache=True,
                   logits_to_keep=1)
        self._prefix = _Prefix(ids=prefix, kv=[(layer.keys, layer.values) for layer in cache.layers])
        self.prefix_stats["encoded"] += 1
        return self._prefix

    def _generate_chunk(self, prompts: list[list[int]], sampling: Sampling, max_tokens: list[int],
                        prefix: tuple[int, ...] = ()) -> list[Generated]:
        n_pre, rows = len(prefix), len(prompts)
        suffixes = [p[n_pre:] for p in prompts]
        width = max(len(s) for s in suffixes)
        # rows are prefix | left padding | suffix: every prompt ends at the same column, the padding is masked out,
        # and generate counts positions from the mask (cumsum), so each suffix keeps its unshared positions
        ids = torch.full((rows, n_pre + width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, n_pre + width), dtype=torch.long)
        if n_pre:
            ids[:, :n_pre] = torch.tensor(prefix, dtype=torch.long)
            mask[:, :n_pre] = 1
        for i, s in enumerate(suffixes):
            ids[i, n_pre + width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, n_pre + width - len(s):] = 1
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
            if n_pre:
                kv = self._prefix_kv(prefix).kv
                # each row gets its own copy: generate appends to the cache in place
                kwargs["past_key_values"] = self._cache_cls(
                    [(k.expand(rows, -1, -1, -1).contiguous(), v.expand(rows, -1, -1, -1).contiguous()) for k, v in kv],
                    config=self.model.config,
                )
                self.prefix_stats["tokens_saved"] += n_pre * (rows - 1)
            if sampling.seed is not None and not sampling.greedy:
                torch.manual_seed(sampling.seed)  # this process serves one replica: the global RNG is ours
            result = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        new = result.sequences[:, n_pre + width:]
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

    def __init__(self, engine: HFEngine, window_s: float = HFOptions.batch_window_s) -> None:
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
