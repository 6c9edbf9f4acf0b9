#!/usr/bin/env bash
# bash recipes/countdown_qwen2.5-1.5b/grpo.sh     -- 8x NVIDIA GPU (80 GB), vLLM and flash-attn (README: Real use on GPUs)
# verl's own GRPO on the same data, reward and validation. 100k rollouts = 390 steps of 32 prompts x 8 samples
# (the ES paper reports its GRPO baseline at +21.3 points over base on average across its models).
# verl stops after trainer.total_epochs even when total_training_steps asks for more: 200 prompts / 32 = 6 steps an
# epoch, so 390 steps take 65 epochs (EPOCHS below; `doctor` refuses too few).
source "$(dirname "$0")/common.sh"
STEPS=${STEPS:-390}
EPOCHS=${EPOCHS:-$(( (STEPS + 5) / 6 ))}
exec python -m randopt_verl.main trainer=grpo "${COMMON[@]}" \
  data.train_batch_size=32 actor_rollout_ref.rollout.n=8 actor_rollout_ref.actor.ppo_mini_batch_size=32 \
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
  actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8 actor_rollout_ref.actor.optim.lr=1e-6 \
  trainer.total_training_steps="$STEPS" trainer.total_epochs="$EPOCHS" trainer.test_freq=50 trainer.save_freq=100 trainer.logger='[console,file]' \
  trainer.experiment_name=grpo trainer.default_local_dir="$HERE/runs/grpo" "$@"
