#!/usr/bin/env bash
# bash recipes/countdown_qwen2.5-1.5b/randopt.sh     -- 8x NVIDIA GPU (80 GB), vLLM; 8 replicas = 8 candidates at once
# The RandOpt authors' smoke test: N=500 candidates, selection = first 200 Countdown items, K in {10, 50}; they report
# top-10 ensemble 42% and top-50 64% test accuracy. Same budget axis as es.sh and grpo.sh:
# 500 candidates x 200 prompts = 100k search rollouts.
source "$(dirname "$0")/common.sh"
exec python -m randopt_verl.main trainer=randopt "${COMMON[@]}" \
  randopt.population_size=500 randopt.sigmas='[0.0005,0.001,0.002]' randopt.top_k=50 \
  randopt.ensemble_ks='[1,10,50]' randopt.selection_size=200 \
  trainer.experiment_name=randopt trainer.default_local_dir="$HERE/runs/randopt" "$@"
