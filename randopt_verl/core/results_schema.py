"""The results.json schema: what a RandOpt run's final results hold (`randopt_verl.trainers.randopt` writes it
through `RunDir.write_results`; `randopt_verl.core.report.results_table` renders it; `randopt_verl.tools.compare`
reads it).

Plain data, no Ray, no verl; nothing here computes a result. The schema lives apart from the code that fills it
because several modules add to one results dict (the trainer, `randopt_verl.core.diagnostics`,
`randopt_verl.core.halving`, `randopt_verl.core.acc_vs_n`, `randopt_verl.core.sigma_choice`,
`randopt_verl.trainers.randopt` over `randopt_verl.core.merge`) and the report and compare read it: one place says what every key means.

Accuracies are fractions in [0, 1]. k-keyed dicts have string keys in JSON ("5"); the report accepts int or
str keys. Every key except ``base`` may be missing (the row renders as "-"). An interval ``[lo, hi]`` is a 95%
interval: ``ci95`` next to an accuracy is Wilson's (`randopt_verl.core.stats.accuracy_ci`, over the test prompts;
random-k's is a bootstrap over prompts of its per-prompt means); a ``paired`` entry is a paired bootstrap over the
same test prompts (`stats.paired_bootstrap`). Intervals, ``paired`` and ``diagnostics`` are added by
`randopt_verl.core.diagnostics.annotate`; ``consolidated`` by randopt_verl.core.merge.results_block.

    {
      "schema_version": 1,                 # SCHEMA_VERSION
      "n_candidates": int,                 # candidates scored on the whole selection set (halving: survivors)
      "n_selection": int, "n_test": int,   # prompts
      "base": {"test_acc": float,          # base model, greedy, on the test set
               "ci95": [lo, hi],
               "selection_score": float,   # base model's mean reward on the selection set
               "selection_acc": float, "selection_ci95": [lo, hi]},
      "experts": [                         # the selected top-K, in rank order
        {"rank": 1, "index": int, "seed": int, "sigma": float,
         "selection_score": float, "selection_acc": float, "selection_ci95": [lo, hi],
         "test_acc": float, "ci95": [lo, hi]}, ...],
      "maj_at_k":      {"<k>": float},     # selected top-k vote on the test set
      "maj_at_k_ci95": {"<k>": [lo, hi]},
      "random_k":      {"<k>": {"mean": float, "std": float, "draws": [float, ...],
                                "n_population": int, "seed": int, "ci95": [lo, hi]}},
      "base_maj_at_k": {"<k>": float},     # base model self-consistency, k samples
      "base_maj_at_k_ci95": {"<k>": [lo, hi]},
      "fraction_beating_base_by_sigma": {"<sigma>": {
          "n": int, "beating": int, "fraction": float, "ci95": [lo, hi],        # selection set, all candidates
          "test_n": int, "test_beating": int, "test_fraction": float,           # test set, the control population
          "test_ci95": [lo, hi]}},                                              # (a random subset; when present)
      "paired": {                          # each {"diff": a - b, "ci95": [lo, hi], "n": prompts, "n_boot": int}
          "maj_at_k_vs_random_k": {"<k>": {...}},   # random-k per prompt: the mean over its draws
          "maj_at_k_vs_base": {"<k>": {...}},
          "best_expert_vs_base": {...},
          "consolidated_vs_shuffled_control": {...}, "consolidated_vs_base": {...},
          "consolidated_vs_maj_at_k": {..., "k": int}},            # the largest k
      "diagnostics": {
          "n_tested": int,                 # candidates with test answers (top-K and control population)
          "selection_test_spearman": float | null,   # Spearman rho, selection score vs test accuracy over them
          "oracle_best_index": int, "oracle_best_test_acc": float, "oracle_best_ci95": [lo, hi],  # chosen on test
          "selected_best_index": int, "selected_best_test_acc": float, "selected_best_ci95": [lo, hi]},  # rank 1
      "consolidated": {                    # randopt.consolidate.enabled: one merged model, one pass per prompt
          "test_acc": float, "ci95": [lo, hi], "scale": float, "weighting": "zscore", "over": "top_k"|"population",
          "n_members": int, "n_terms": int, "selection_score": float, "selection_score_by_scale": {"<s>": float},
          "forward_passes_per_prompt": 1,
          "test_cost": {"rollouts", "tokens", "wall_s"},       # its test answers: one rollout per prompt
          "selection_cost": {"rollouts", "tokens", "wall_s"},  # scoring the merged models on the selection set
          "shuffled_control_test_acc": float, "shuffled_control_ci95": [lo, hi], "shuffled_control_scale": float,
          "shuffled_control_selection_score": float, "shuffled_control_selection_score_by_scale": {"<s>": float}},
      "selection": {"strategy": "full", "n_candidates": N, "rollouts": N x selection prompts}    # or, halving:
                   {"strategy": "halving", "rule": {"k", "z", "margin", "min_prompts", "block_size", "n_blocks"},
                    "n_candidates": N, "n_survivors": int, "n_stopped": int,   # survivors: the full-data rows
                    "stopped": [{"index", "after_block", "n_prompts", "score_so_far", "vs_index",
                                 "paired_diff", "upper_bound"}, ...],          # partial scores; never in the top-K
                    "rollouts": int, "tokens": int,            # candidates' block rows (the base row apart)
                    "full_rollouts": N x selection prompts, "rollouts_saved": int, "rollouts_ratio": float,
                    "note": str},                              # (randopt_verl.core.halving.summary)
      "sigma_choice": {                    # randopt.sigma_choice=dev (randopt_verl.core.sigma_choice)
          "strategy": "dev", "dev_size": int,              # the last dev_size selection rows, held out of the search
          "by_sigma": {"<sigma>": {"experts": [index, ...], "dev_vote_acc": float, "dev_ci95": [lo, hi],
                                   "dev_mean_score": float}},
          "chosen_sigma": float, "experts": [index, ...],  # the best dev vote's sigma and its top-K
          "maj_at_k": {"<k>": float}, "maj_at_k_ci95": {"<k>": [lo, hi]},   # its top-k votes on the test set
          "vs_mixed": {"<k>": {paired: chosen-sigma vote - the mixed top-k vote}},
          "dev_cost": {"rollouts", "tokens", "wall_s"}},   # included in cost
      "accuracy_vs_n": {                   # randopt.accuracy_vs_n (randopt_verl.core.acc_vs_n.curve)
          "ns": [N/8, N/4, N/2, N (those >= K)], "full_n": N, "extra_test_passes": int,   # in test_cost
          "by_n": {"<n>": {"experts": [index, ...],             # the top-K of ledger rows 0 .. n-1
                           "maj_at_k": {"<k>": float}, "maj_at_k_ci95": {"<k>": [lo, hi]},
                           "vs_full_n": {"<k>": {paired: this vote - the same k's vote at N}}}}},
      "cost":      {"rollouts": int, "tokens": int, "wall_s": float},  # the search (see ARCHITECTURE, cost)
      "test_cost": {"rollouts": int, "tokens": int, "wall_s": float},  # test answers and controls
      "base_sampling_temperature": float                               # when base_maj_at_k is present
    }

"Beating the base" means a selection score strictly above ``base.selection_score``
(`randopt_verl.core.vote.fraction_beating_base`).
"""

SCHEMA_VERSION = 1  # results.json's "schema_version"; the trainer writes it
