"""randopt_verl: RandOpt (random search in weight space, "Neural Thickets") as a verl 0.9.1 trainer.

The algorithm pieces (noise, population, ledger, vote, ES update) are plain modules that take plain data;
the verl glue lives in `randopt_verl.plugin`, `randopt_verl.cpu`, `randopt_verl.workers` and
`randopt_verl.trainers`. See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
