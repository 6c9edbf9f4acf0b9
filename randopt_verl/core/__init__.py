"""The verl-free core: everything here imports neither verl nor Ray (tested in tests/core/test_layers.py).

noise (the canonical perturbation), population (candidates, parameter filter, perturbation from a pristine copy),
es_update (z-scores and the fp32 ES step), vote (reward normalisation, ranking, majority vote, controls), rundir
(the run directory: file names and identity), ledger (the crash-safe ledger, its index conventions and row format),
manifest (the identity comparison and its errors), jsonio (JSON and JSONL files), fingerprint (model and prompt-set
hashes), results_schema (what results.json holds), report (every number and table a user reads).
"""
