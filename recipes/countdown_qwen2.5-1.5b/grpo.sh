#!/usr/bin/env bash
# bash recipes/countdown_qwen2.5-1.5b/grpo.sh     -- 8x NVIDIA GPU (80 GB), vLLM
# verl's own GRPO on the same data, reward and validation. 100k rollouts = 390 steps of 32 prompts x 8 samples
# (the ES paper's GRPO baseline reaches +21.3 points over base on average across its models, ANCHORS.md).
source "$(dirname "$0")/common.sh"
STEPS=${STEPS:-390}
exec python -m randopt_verl.main trainer=grpo "${COMMON[@]}" \
  data.train_batch_size=32 actor_rollout_ref.rollout.n=8 actor_rollout_ref.actor.ppo_mini_batch_size=32 \
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
  actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8 actor_rollout_ref.actor.optim.lr=1e-6 \
  trainer.total_training_steps="$STEPS" trainer.test_freq=50 trainer.save_freq=100 trainer.logger='[console,file]' \
  trainer.experiment_name=grpo trainer.default_local_dir="$HERE/runs/grpo" "$@"
