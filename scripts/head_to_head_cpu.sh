#!/usr/bin/env bash
# bash scripts/head_to_head_cpu.sh [OUT_DIR]     -- a CPU with 2 cores and 16 GB (2 replicas: 13.5 GB in use measured; 19 minutes on 2 cores)
# RandOpt vs ES vs GRPO on the embedded demo model and task (the demo's data) at one search/training budget of
# 384 rollouts (prompt x sample), through `trainer=randopt|es|grpo` with nothing else changed, then
# `randopt-verl compare`.
#   randopt: 12 candidates x 32 selection prompts         = 384 (+ 32 for scoring the base)
#   es:      2 iterations x 6 members x 32 prompts         = 384
#   grpo:    6 steps x 16 prompts x 4 samples              = 384
# All three validate greedily on the same 100 test prompts with the same reward function.
set -euo pipefail
OUT=$(realpath -m "${1:-head_to_head}")
REPO=$(cd "$(dirname "$0")/.." && pwd)
MODEL=$(python -m randopt_verl.assets.embedded)
# the demo's task and wording: 128 selection-split prompts (RandOpt and ES score the first 32, GRPO trains on 96 of
# them) and 100 test prompts, none shared; the script prints the folder it wrote
DATA=$(python - "$OUT" <<'PY'
import sys
from pathlib import Path
from randopt_verl.tools import demo
print(Path(demo.write_data(Path(sys.argv[1]), 128, 100)["train"]).parent)
PY
)
COMMON=(
  hardware=cpu
  # one rollout replica (and FSDP rank) per core: the CPU engine gains little from a second thread per replica
  trainer.n_gpus_per_node=2
  actor_rollout_ref.model.path="$MODEL"
  data.train_files="$DATA/train.parquet"
  data.val_files="$DATA/test.parquet"
  reward.custom_reward_function.path="$REPO/reward_fns/countdown.py"
  data.max_prompt_length=128
  data.max_response_length=12
  trainer.logger=[console,file]
  trainer.project_name=head_to_head
)
python -m randopt_verl.main trainer=randopt "${COMMON[@]}" trainer.experiment_name=randopt \
  trainer.default_local_dir="$OUT/randopt" randopt.population_size=12 randopt.sigmas='[0.002,0.004]' \
  randopt.selection_size=32 randopt.test_size=100 randopt.top_k=4 randopt.ensemble_ks='[1,2,4]' \
  randopt.controls.population=8
python -m randopt_verl.main trainer=es "${COMMON[@]}" trainer.experiment_name=es trainer.default_local_dir="$OUT/es" \
  es.population_size=6 es.sigma=0.002 es.alpha=0.001 es.selection_size=32 es.test_size=100 \
  trainer.total_training_steps=2 trainer.test_freq=1 trainer.save_freq=-1
python -m randopt_verl.main trainer=grpo "${COMMON[@]}" trainer.experiment_name=grpo \
  trainer.default_local_dir="$OUT/grpo" data.train_batch_size=16 actor_rollout_ref.rollout.n=4 \
  actor_rollout_ref.actor.ppo_mini_batch_size=16 actor_rollout_ref.actor.optim.lr=1e-5 data.val_max_samples=100 \
  trainer.total_training_steps=6 trainer.test_freq=3 trainer.save_freq=-1 trainer.val_before_train=true
randopt-verl compare "$OUT/randopt" "$OUT/es" "$OUT/grpo" --out "$OUT/report.md" --plot "$OUT/compare.png"
