"""The verl-free core: everything here imports neither verl nor Ray (tested in tests/core/test_layers.py).

noise (the canonical perturbation), population (candidates, parameter filter, perturbation from a pristine copy),
es_update (z-scores and the fp32 ES step), vote (reward normalisation, ranking, majority vote, controls), rundir
(the run directory: file names, index conventions, identity, ledgers and JSONL files), report (every number and
table a user reads).
"""
