"""Hydra configs: randopt_ppo.yaml (primary), trainer/{grpo,randopt,es}.yaml, hardware/{gpu,cpu}.yaml."""
