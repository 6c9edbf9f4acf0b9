#!/usr/bin/env bash
# bash recipes/gsm8k_qwen2.5-0.5b/randopt.sh GSM8K_JSONL_DIR     -- 1 NVIDIA GPU (24 GB+), vLLM; 1 replica
# RandOpt on GSM8K with Qwen2.5-0.5B-Instruct on one GPU. GSM8K_JSONL_DIR holds train.jsonl and test.jsonl in the
# openai/gsm8k format (question, answer with "#### n"); nothing is downloaded.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/../.." && pwd)
SRC=${1:?usage: randopt.sh GSM8K_JSONL_DIR}; shift
MODEL=${MODEL:-$HOME/models/Qwen2.5-0.5B-Instruct}
[ -f "$HERE/data/train.parquet" ] || python "$REPO/scripts/convert_dataset.py" gsm8k \
  --train "$SRC/train.jsonl" --val "$SRC/test.jsonl" --out-dir "$HERE/data"
exec python -m randopt_verl.main trainer=randopt hardware=gpu \
  actor_rollout_ref.model.path="$MODEL" data.train_files="$HERE/data/train.parquet" data.val_files="$HERE/data/test.parquet" \
  reward.custom_reward_function.path="$REPO/reward_fns/gsm8k.py" data.max_prompt_length=512 data.max_response_length=512 \
  trainer.n_gpus_per_node=1 actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
  randopt.population_size=200 randopt.top_k=10 randopt.ensemble_ks='[1,5,10]' randopt.selection_size=200 \
  trainer.default_local_dir="$HERE/runs/randopt" "$@"
