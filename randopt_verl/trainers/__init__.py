"""verl V1 trainers of this package, registered with verl's `register_trainer` under
`trainer.v1.trainer_mode=randopt|es` (the `trainer=randopt|es` presets set that key)."""


def register_all() -> None:
    # Importing the modules runs their @register_trainer decorators. Deferred: verl's trainer module imports
    # transfer_queue and most of verl, which the driver needs only when it runs a trainer.
    import importlib.util

    if importlib.util.find_spec("randopt_verl.trainers.randopt") is not None:
        from randopt_verl.trainers import randopt  # noqa: F401
    if importlib.util.find_spec("randopt_verl.trainers.es") is not None:
        from randopt_verl.trainers import es  # noqa: F401
