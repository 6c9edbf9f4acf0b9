#!/usr/bin/env bash
# bash recipes/tiny_cpu/run.sh [randopt|es|grpo]     -- any CPU, about 2-3 minutes each (mostly verl start-up)
# The whole harness on a tiny random Qwen2 built offline: a smoke test of an installation, not a result.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/../.." && pwd)
METHOD=${1:-randopt}; shift || true
[ -d "$HERE/tiny" ] || python -m randopt_verl.assets.tiny_model "$HERE/tiny"
[ -f "$HERE/data/train.parquet" ] || python "$REPO/scripts/make_countdown.py" --lite --out-dir "$HERE/data" --n-train 16 --n-val 16
case "$METHOD" in  # each method's own keys (the randopt.* and es.* nodes exist only under their trainer)
  randopt) OWN=(randopt.population_size=8 randopt.sigmas='[0.02]' randopt.top_k=4 randopt.ensemble_ks='[1,4]'
                randopt.selection_size=16) ;;
  es) OWN=(es.population_size=4 es.selection_size=16 trainer.total_training_steps=2) ;;
  grpo) OWN=(data.train_batch_size=4 trainer.total_training_steps=2) ;;
  *) echo "usage: run.sh [randopt|es|grpo]" >&2; exit 2 ;;
esac
exec python -m randopt_verl.main trainer="$METHOD" hardware=cpu \
  actor_rollout_ref.model.path="$HERE/tiny" data.train_files="$HERE/data/train.parquet" data.val_files="$HERE/data/test.parquet" \
  reward.custom_reward_function.path="$REPO/reward_fns/countdown.py" data.max_prompt_length=128 data.max_response_length=8 \
  "${OWN[@]}" trainer.default_local_dir="$HERE/runs/$METHOD" "$@"
