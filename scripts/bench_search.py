"""Pure generation vs the full RandOpt per-candidate cycle, side by side in one run, on the same model and prompts.

    python scripts/bench_search.py [--model PATH] [--prompts 64] [--reps 5] [--max-new-tokens 12]
Hardware: any CPU (the hf rollout, 1 replica). Default model: the embedded SmolLM2-135M-Instruct.
The cycle is what `trainer=randopt` does per candidate: weights in (in place from the pristine copy, canonical
noise), greedy generation on the selection set, scoring through verl's reward loop, one fsynced ledger row.
Prints seconds per candidate for each phase and the ratio cycle / generation (target <= 1.05).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="local HF model folder (default: the embedded model)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from randopt_verl.assets import data, embedded
    from randopt_verl.inprocess import compose, trainer_session
    from randopt_verl.core.ledger import Ledger, candidate_row
    from randopt_verl.core.population import Candidate, ParamFilter
    from randopt_verl.trainers.harness import greedy

    model = a.model or embedded.default_model_path()
    work = Path(tempfile.mkdtemp(prefix="bench_search_"))
    files = data.write_splits(data.generate_countdown_lite(a.prompts + 8, seed=0), work / "data", a.prompts, 8)
    config = compose([
        "trainer=randopt", "hardware=cpu", f"actor_rollout_ref.model.path={model}",
        f"data.train_files={files['train']}", f"data.val_files={files['test']}",
        f"reward.custom_reward_function.path={ROOT / 'reward_fns' / 'countdown.py'}",
        "data.max_prompt_length=128", f"data.max_response_length={a.max_new_tokens}",
        f"randopt.selection_size={a.prompts}", "randopt.population_size=8", "randopt.top_k=1",
        "randopt.ensemble_ks=[1]", f"trainer.default_local_dir={work / 'run'}", "trainer.logger=[console]",
    ])
    with trainer_session(config) as trainer:
        sel = trainer.prompts(trainer.train_dataset, a.prompts)
        sampling = greedy(a.max_new_tokens)
        trainer.load_candidates({}, how="sync", param_filter=ParamFilter())
        trainer.generate({0: sel.ids}, sampling)  # warm-up (first batch, numba compile)
        trainer.load_candidates({0: Candidate(0, 1, 1e-3)}, how="server", param_filter=ParamFilter())

        gen = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            trainer.generate({0: sel.ids}, sampling)
            gen.append(time.perf_counter() - t0)

        ledger = Ledger(work / "ledger.jsonl")
        phases = {"weights in": [], "generate": [], "score": [], "ledger": []}
        cycle = []
        for i in range(a.reps):
            cand = Candidate(i, 1000 + i, 1e-3)
            t0 = time.perf_counter()
            trainer.load_candidates({0: cand}, how="server", param_filter=ParamFilter())
            t1 = time.perf_counter()
            outs = trainer.generate({0: sel.ids}, sampling)[0]
            t2 = time.perf_counter()
            responses = [o.token_ids for o in outs]
            samples = trainer.score(sel.rows, responses)
            t3 = time.perf_counter()
            ledger.append(candidate_row(i, cand.seed, cand.sigma, samples, tokens=sum(map(len, responses)),
                                        wall_s=t3 - t0))
            t4 = time.perf_counter()
            for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[k].append(v)
            cycle.append(t4 - t0)
        ledger.close()
        n_params = sum(w.numel() for w in trainer.actor_rollout_wg.named_weights()[0].values())

    g, c = statistics.median(gen), statistics.median(cycle)
    print(f"model {model}: {n_params / 1e6:.1f}M parameters; {a.prompts} prompts x <= {a.max_new_tokens} new tokens; "
          f"median of {a.reps}")
    print(f"pure batched generation      {g:7.3f} s")
    print(f"full per-candidate cycle     {c:7.3f} s")
    for k, v in phases.items():
        print(f"  {k:<26} {statistics.median(v):7.3f} s")
    print(f"ratio cycle / generation     {c / g:7.3f}   (target <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
