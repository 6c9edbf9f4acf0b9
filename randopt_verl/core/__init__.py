"""The verl-free core: everything here imports neither verl nor Ray (tested in tests/core/test_layers.py).

The algorithm as plain data: noise and noise_spec (the canonical perturbation; noise_triton its CUDA kernel),
population (candidates, parameter filter, merged models, perturbation from a pristine copy), es_update (z-scores and
the fp32 ES step), merge (the consolidation's plan), vote (reward normalisation, ranking, majority vote, controls),
halving, acc_vs_n, sigma_choice, stats and diagnostics (intervals), cost (one axis for every method); the run
directory: rundir (file names, identity), ledger (crash-safe rows, index conventions), manifest (identity
mismatches), jsonio, fingerprint; and what a user reads: results_schema, report, plots.
"""
