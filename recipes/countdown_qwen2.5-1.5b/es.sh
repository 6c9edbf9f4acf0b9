#!/usr/bin/env bash
# bash recipes/countdown_qwen2.5-1.5b/es.sh     -- 8x NVIDIA GPU (80 GB), vLLM; 8 replicas = 8 members at once
# ES at scale (Qiu et al. 2025): N=30, sigma=1e-3, alpha=5e-4, the same 200 prompts every iteration. The ES paper
# reports Qwen2.5-1.5B-Instruct Countdown 0.7% -> 37.3% after 500 iterations; at RandOpt's budget (100k
# rollouts = 16-17 iterations of 30 x 200) expect far less: the matched-budget point is in the compare report.
source "$(dirname "$0")/common.sh"
ITERS=${ITERS:-17}
exec python -m randopt_verl.main trainer=es "${COMMON[@]}" \
  es.population_size=30 es.sigma=0.001 es.alpha=0.0005 es.selection_size=200 \
  trainer.total_training_steps="$ITERS" trainer.test_freq=5 trainer.save_freq=5 \
  trainer.experiment_name=es trainer.default_local_dir="$HERE/runs/es" "$@"
