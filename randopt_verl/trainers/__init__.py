"""verl V1 trainers of this package, registered with verl's `register_trainer` as `trainer.v1.trainer_mode=`
randopt | es | grpo (the `trainer=randopt|es|grpo` presets set that key). The plugin imports them in every process
verl starts, so the TaskRunner finds them by name."""


def register_all() -> None:
    # importing the modules runs their @register_trainer decorators
    from randopt_verl.trainers import es, grpo, randopt  # noqa: F401


# Import verl here, after register_all exists and before any trainer module runs: verl's plugin loader imports
# every trainer module (each imports harness); were harness the first module to import verl, the loader would
# re-enter harness half-initialised (ImportError, e.g. in scripts/bench_search.py).
import verl  # noqa: F401,E402
