# Sourced by randopt.sh / es.sh / grpo.sh in this folder: the data, model and reward all three runs share.
# Hardware: one node with 8 NVIDIA GPUs (80 GB), vLLM installed (pip install -e '.[gpu]').
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
MODEL=${MODEL:-$HOME/models/Qwen2.5-1.5B-Instruct}   # a local copy of the model (no hub access needed)
DATA=${DATA:-$HERE/data}
[ -f "$DATA/train.parquet" ] || python "$REPO/scripts/make_countdown.py" --out-dir "$DATA" --n-train 200 --n-val 2000
COMMON=(
  hardware=gpu
  actor_rollout_ref.model.path="$MODEL"
  data.train_files="$DATA/train.parquet"
  data.val_files="$DATA/test.parquet"
  reward.custom_reward_function.path="$REPO/reward_fns/countdown.py"
  data.max_prompt_length=256
  data.max_response_length=1024
  trainer.n_gpus_per_node=8
  trainer.project_name=countdown_qwen2.5-1.5b
  # 8 GPUs / TP 1 = 8 rollout replicas (RandOpt and ES score 8 candidates at a time)
  actor_rollout_ref.rollout.tensor_model_parallel_size=1
  actor_rollout_ref.rollout.gpu_memory_utilization=0.8
)
