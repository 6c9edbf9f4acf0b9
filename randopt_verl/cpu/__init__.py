"""verl 0.9.1 on CPU: a `cpu` platform, FSDP engines registered for the cpu device, an `hf` rollout backend
(transformers generate in a Ray actor, with request batching and in-place candidate perturbation) and a few
isolated patches (see patches.py). Registered by `randopt_verl.plugin`, which verl imports in every process.
"""
