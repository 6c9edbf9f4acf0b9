"""The hf rollout engine against its compute roofline: the per-candidate selection pass, several ways, in one run.

    python scripts/bench_hf_server.py [--model PATH] [--prompts 128] [--max-new-tokens 12] [--threads 2]
                                      [--candidates 2] [--modes fp32-unshared,bf16-shared,bf16-unshared-16] [--batcher]
Hardware: any CPU (bf16 modes are skipped where the CPU has no bf16 matrix instructions, unless --force-bf16).
Default model: the embedded SmolLM2-135M-Instruct; prompts: the demo's countdown-lite selection prompts (chat
template applied), greedy. Per mode (dtype-sharing[-batch][-attn]: fp32|bf16, shared|unshared, optionally a batch size
other than --max-batch-size and an attention implementation (sdpa, eager, randopt_grouped_eager; default: the
engine's choice) it loads a fresh engine, then for each of
--candidates candidates times hold (pristine + σ·ε) and generate_batch over all prompts (what RandOpt's
generate_many does). It prints generated tokens/s, seconds per candidate and the ratio of the generation time to a
roofline: the model's matmul FLOPs (2 x Linear weights x every prompt and generated token, plus attention
4 x heads x head_dim x context per token and layer) divided by the best GEMM rate measured in this run for that
dtype on the model's own Linear shapes at this batch size. Shared-prefix reuse does less work than that count, so
its ratio can fall below 1. Modes run one after another in one process, so their ratios are side by side.
--batcher adds the concurrent-request path (the Batcher, what verl's agent loop sends) for the first mode.
Last, for every pair of modes, how many responses differ in at least one token (the same candidates and prompts).
OMP_WAIT_POLICY=PASSIVE, as hardware=cpu sets for its Ray workers (spinning OpenMP threads slow numba's noise kernels).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP


def gemm_rate(shapes: list[tuple[int, int, int]], dtype, seconds: float = 0.5) -> float:
    """Best FLOP/s over `shapes` (M, K, N) for `dtype`, each timed for about `seconds` after a warm-up."""
    import torch

    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        a @ b
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        best = max(best, 2.0 * m * k * n * reps / (time.perf_counter() - t0))
    return best


def model_flops(model, prompt_lens: list[int], new_lens: list[int]) -> tuple[float, list[tuple[int, int]]]:
    """Matmul FLOPs of a pass (every prompt and generated token through every Linear, attention over the context)
    and the Linear weight shapes (in, out)."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    weights = sum(m.weight.numel() for m in {id(m.weight): m for m in linears}.values())
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    flops = 0.0
    for p, g in zip(prompt_lens, new_lens):
        tokens = p + g
        flops += 2.0 * weights * tokens
        # QK^T and AV: 2 x 2 x heads x head_dim per (query, key) pair, causal: sum of context lengths
        flops += 4.0 * heads * head_dim * cfg.num_hidden_layers * tokens * (tokens + 1) / 2
    shapes = sorted({(m.in_features, m.out_features) for m in linears})
    return flops, shapes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=2)
    ap.add_argument("--max-batch-size", type=int, default=64, help="prompts per forward pass (hardware=cpu's 64)")
    ap.add_argument("--modes", default="fp32-unshared,fp32-shared,bf16-unshared,bf16-shared,bf16-unshared-16")
    ap.add_argument("--force-bf16", action="store_true")
    ap.add_argument("--batcher", action="store_true")
    a = ap.parse_args()

    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from randopt_verl.assets import data, embedded
    from randopt_verl.core.population import Candidate
    from randopt_verl.cpu.hf_engine import Batcher, HFEngine, Sampling, bf16_matmul_unit, common_prefix_len
    from randopt_verl.tools import demo

    hf_logging.disable_progress_bar()  # one engine load per mode: keep the table readable
    torch.set_num_threads(a.threads)
    model = a.model or embedded.default_model_path()
    tok = AutoTokenizer.from_pretrained(model)
    rows = data.generate_countdown_lite(a.prompts, seed=demo.DATA_SEED, template=demo.PROMPT)
    prompts = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
               for r in rows]
    default_batch = min(a.max_batch_size, len(prompts))
    greedy = Sampling.from_params({"temperature": 0})
    unit = bf16_matmul_unit()
    lens = sorted(len(p) for p in prompts)
    print(f"model {model}; {len(prompts)} prompts of {lens[0]}-{lens[-1]} tokens (common prefix "
          f"{common_prefix_len(prompts)}), <= {a.max_new_tokens} new tokens, greedy, batch "
          f"{default_batch}, {a.threads} threads; bf16 matrix unit: {unit or 'none'}")

    rates: dict = {}
    gemm_shapes: dict = {}
    summary: list[tuple] = []
    results: dict[str, dict] = {}
    for mode in a.modes.split(","):
        dtype_name, sharing, *rest = mode.split("-")
        batch = next((int(r) for r in rest if r.isdigit()), default_batch)
        attn = next((r for r in rest if not r.isdigit()), "auto")
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        if dtype == torch.bfloat16 and unit is None and not a.force_bf16:
            print(f"{mode}: skipped (no bf16 matrix instructions; --force-bf16 runs it emulated)")
            continue
        engine = HFEngine(model, dtype=dtype, max_response_length=a.max_new_tokens, max_batch_size=batch,
                          threads=a.threads, share_prefix=sharing == "shared", attn_implementation=attn)
        engine.generate_batch(prompts[:4], greedy)  # warm-up (kernels, allocator)
        t_set, t_gen, outs = [], [], None
        for c in range(a.candidates):
            t0 = time.perf_counter()
            engine.hold(Candidate(index=c, seed=1000 + c, sigma=0.002))
            t1 = time.perf_counter()
            outs = engine.generate_batch(prompts, greedy)
            t_gen.append(time.perf_counter() - t1)
            t_set.append(t1 - t0)
            results.setdefault(mode, {})[c] = [o.token_ids for o in outs]
        new_lens = [len(o.token_ids) for o in outs]
        flops, shapes = model_flops(engine.model, [len(p) for p in prompts], new_lens)
        if dtype not in rates:
            # the model's own Linear shapes, at prefill rows (batch x prompt tokens) and decode rows (batch)
            m_rows = sorted({default_batch, min(default_batch * lens[-1], 4096)})
            gemm_shapes[dtype] = [(m, k, n) for m in m_rows for k, n in shapes]
            rates[dtype] = gemm_rate(gemm_shapes[dtype], dtype)
        rate = rates[dtype]
        roof = flops / rate
        gen, setc = min(t_gen), min(t_set)
        summary.append((mode, dtype, gen, setc, flops))
        print(f"{mode:17s} [{engine.attn_implementation}] generate {gen:6.2f} s  {sum(new_lens) / gen:7.1f} tok/s  hold {setc:5.2f} s  "
              f"per candidate {gen + setc:6.2f} s  roofline {roof:5.2f} s at {rate / 1e9:5.0f} GFLOP/s "
              f"({flops / 1e9:.0f} GFLOP)  generate/roofline {gen / roof:5.2f}")
        if a.batcher and mode == a.modes.split(",")[0]:
            async def concurrent():
                b = Batcher(engine)
                got = await asyncio.gather(*[b.submit(p, {"temperature": 0}) for p in prompts])
                return got, b.batches

            t0 = time.perf_counter()
            conc, n_batches = asyncio.run(concurrent())
            t = time.perf_counter() - t0
            same = [o.token_ids for o in conc] == results[mode][a.candidates - 1]
            print(f"{mode:17s} via Batcher {t:6.2f} s in {n_batches} batches; same tokens as generate_batch: {same}")
        del engine

    # The GEMM rate again after all modes: on a shared machine either measurement may have been slowed by others;
    # the faster one is the better estimate of the hardware, and gives the stricter (larger) ratio.
    for dtype in rates:
        again = gemm_rate(gemm_shapes[dtype], dtype)
        print(f"{dtype}: GEMM rate {rates[dtype] / 1e9:.0f} GFLOP/s before the modes, {again / 1e9:.0f} after")
        rates[dtype] = max(rates[dtype], again)
    best = max(rates.values())
    for mode, dtype, gen, setc, flops in summary:
        print(f"{mode:17s} per candidate {gen + setc:6.2f} s  generate/roofline {gen * rates[dtype] / flops:5.2f} "
              f"(own dtype's best rate)  {gen * best / flops:5.2f} (the machine's best rate)")

    # how often the responses differ between modes (the same candidates, the same prompts)
    names = list(results)
    for i, m in enumerate(names):
        for other in names[:i]:
            differ = sum(x != y for c in results[m] for x, y in zip(results[other][c], results[m][c]))
            total = sum(len(results[m][c]) for c in results[m])
            print(f"{m} vs {other}: {differ}/{total} responses differ in at least one token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
