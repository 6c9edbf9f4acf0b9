"""The hf rollout engine: batched vs one-at-a-time generation on the same prompts, side by side in one run.

    python scripts/bench_hf_server.py [--model PATH] [--prompts 32] [--max-new-tokens 32] [--threads 2]
Hardware: any CPU. Default model: the embedded SmolLM2-135M-Instruct. Three ways, same prompts, greedy:
one request at a time (what the prototype server did), concurrent requests through the Batcher (what verl's agent
loop sends), and one ordered batch (`generate_many`, what RandOpt uses). Prints seconds, tokens/s and speed-ups.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    from transformers import AutoTokenizer

    from randopt_verl.assets import data, embedded
    from randopt_verl.cpu.hf_engine import Batcher, HFEngine, Sampling

    model = a.model or embedded.default_model_path()
    tok = AutoTokenizer.from_pretrained(model)
    rows = data.generate_countdown_lite(a.prompts, seed=1)
    prompts = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
               for r in rows]
    engine = HFEngine(model, max_response_length=a.max_new_tokens, max_batch_size=a.prompts, threads=a.threads)
    greedy = Sampling.from_params({"temperature": 0})
    engine.generate_batch(prompts[:2], greedy)  # warm-up

    t0 = time.perf_counter()
    single = [engine.generate_batch([p], greedy)[0] for p in prompts]
    t_single = time.perf_counter() - t0

    async def concurrent():
        batcher = Batcher(engine)
        outs = await asyncio.gather(*[batcher.submit(p, {"temperature": 0}) for p in prompts])
        return outs, batcher.batches

    t0 = time.perf_counter()
    conc, n_batches = asyncio.run(concurrent())
    t_conc = time.perf_counter() - t0

    t0 = time.perf_counter()
    batched = engine.generate_batch(prompts, greedy)
    t_batch = time.perf_counter() - t0

    tokens = sum(len(o.token_ids) for o in single)
    same = [o.token_ids for o in single] == [o.token_ids for o in batched] == [o.token_ids for o in conc]
    print(f"model {model}; {a.prompts} prompts, <= {a.max_new_tokens} new tokens, {a.threads} threads; "
          f"{tokens} tokens generated; identical outputs in all three: {same}")
    print(f"one at a time                {t_single:7.2f} s  {tokens / t_single:7.1f} tok/s  1.00x")
    print(f"concurrent via Batcher       {t_conc:7.2f} s  {tokens / t_conc:7.1f} tok/s  {t_single / t_conc:5.2f}x"
          f"  ({n_batches} batches)")
    print(f"one ordered batch            {t_batch:7.2f} s  {tokens / t_batch:7.1f} tok/s  {t_single / t_batch:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
