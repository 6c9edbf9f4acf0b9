"""Everything that can fail before the first rollout, checked in seconds on the machine you are on.

    python -m randopt_verl.tools.cli doctor [--config-only] OVERRIDES...     (installed: randopt-verl doctor ...)

Hardware: any; `--config-only` needs no GPU and starts no Ray, so CI runs it on the GPU commands.

One code path for every entry point, one module per concern:
- `compose(overrides)` (composition.py): the config `python -m randopt_verl.main OVERRIDES` runs (hydra's compose
  API; doctor and main add `hardware=cpu` the same way on a machine without CUDA); a key that does not exist names
  the closest one.
- `config_report(config)` (config_checks.py): this package's checks (randopt_verl/validate.py,
  randopt_verl/config/schema.py), the reward function called on one test row (doctor only), verl's own
  `validate_config`, and the config dataclasses verl's workers build from the tree (actor, ref, rollout, model,
  checkpoint engine), each as one checklist line.
- `install_report(config)` (install_checks.py): the packages the config needs (vLLM at a version verl accepts,
  flash-attn where the FSDP actor runs forward passes with it) -- by metadata, nothing imported.
- `machine_report(config)` (machine_checks.py): torch and CUDA, visible GPUs against trainer.n_gpus_per_node, Ray,
  and the canonical noise on CUDA equal bit for bit to the CPU noise.
- a checklist line is a `Result`; `report.run_check` runs one check and turns its outcome into that line.
- `prepare(config)` (entry.py, with `trainer_init`, `doctor`, `default_env`, `run_dir` and the exit statuses): what
  `randopt_verl.main` and `inprocess` run: the same config and install checks (all but the reward call on one row,
  which a run tolerates per sample), the first failure raised as one `ConfigError` line.
- `trainer_init(config)`: the hook the trainers call in verl's TaskRunner, so
  `python -m verl.trainer.main_ppo --config-name randopt_ppo` gets the same checks and environment (`default_env`,
  also set by the plugin in every process).

This package exports the entry points (`randopt_verl.preflight.prepare`, ...); the checks are in their modules.

Exit statuses (doctor and `randopt_verl.main` alike): 0 the run would start / ran; 2 a config mistake (one line on
stderr, `randopt_verl: config error: ...`, no traceback); 3 (doctor only) the config is fine but this machine is
not ready (a missing package, no CUDA, too few GPUs, CUDA noise not equal to the CPU noise).
"""

from randopt_verl.preflight.composition import compose, hydra_overrides, with_hardware_default
from randopt_verl.preflight.entry import (EXIT_CONFIG, EXIT_MACHINE, EXIT_OK, default_env, doctor, prepare, run_dir,
                                          trainer_init)

__all__ = ["compose", "hydra_overrides", "with_hardware_default", "EXIT_OK", "EXIT_CONFIG", "EXIT_MACHINE",
           "default_env", "doctor", "prepare", "run_dir", "trainer_init"]
