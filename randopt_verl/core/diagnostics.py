"""What a reviewer asks of a RandOpt result beyond its point estimates: an interval on every accuracy, paired
intervals on the differences the table invites, and how well selection predicted test accuracy.

Plain data, no Ray, no verl. `annotate` adds to a results.json dict (schema: `randopt_verl.core.results_schema`) from the
test ledger's per-prompt answers; every number comes from `randopt_verl.core.stats`:

- ``ci95`` (Wilson, `stats.accuracy_ci`) next to each 0/1-per-prompt accuracy: base, each expert, each vote
  (``maj_at_k_ci95``, ``base_maj_at_k_ci95``), the consolidated model and its control; the fraction of candidates
  beating the base gets a Wilson interval too. random-k's per-prompt values are means over its draws (fractions),
  so its ``ci95`` is a bootstrap over prompts of the mean (`stats.bootstrap_mean`).
- ``paired``: mean differences over the same test prompts with a paired bootstrap interval
  (`stats.paired_bootstrap`): selected top-k vote vs random-k vote (random-k's per-prompt value is the mean over
  its draws, `vote.random_k_per_prompt`), top-k vote vs base, rank-1 expert vs base, consolidated vs its shuffled
  control, consolidated vs base, consolidated vs the top-K vote at the largest k.
- ``diagnostics``: Spearman's rho between selection score and test accuracy over the candidates that have test
  answers (the top-K and the control population), the best of them on test (the oracle, chosen on test: optimistic)
  next to the rank-1 expert (chosen on selection: honest).
- per sigma, the fraction of the control population (a random subset of the candidates, so an unbiased sample)
  whose test accuracy beats the base model's, beside the selection-set fraction.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from . import stats, vote
from .ledger import BASE, base_sample_index


def _ci(accs: Sequence[float]) -> list[float]:
    return list(stats.accuracy_ci(accs))


def _k_outcomes(table: Mapping[Any, Any], members: Sequence[Any]) -> list[float]:
    return [o.acc for o in vote.ensemble_outcomes(table, list(members))]


def votes(table: Mapping[Any, Any], experts: Sequence[Any], ks: Sequence[int],
          reference: Sequence[Any]) -> dict[str, Any]:
    """The top-k votes of ``experts`` (rank order) for each k, with Wilson intervals and the paired difference to
    the same k's vote of ``reference`` over the same prompts (used by accuracy vs N and the dev-chosen sigma)."""
    mine = {k: _k_outcomes(table, experts[:k]) for k in ks}
    return {"experts": list(experts),
            "maj_at_k": {str(k): sum(v) / len(v) for k, v in mine.items()},
            "maj_at_k_ci95": {str(k): _ci(v) for k, v in mine.items()},
            "paired": {str(k): stats.paired_bootstrap(v, _k_outcomes(table, reference[:k])) for k, v in mine.items()}}


def annotate(results: dict, test_rows: Mapping[int, Mapping[str, Any]], selection_rows: Mapping[int, Mapping],
             control_ids: Sequence[int], consolidated: Optional[dict] = None,
             consolidated_rows: Optional[Mapping[str, Mapping[str, Any]]] = None) -> dict:
    """Add intervals, paired differences, diagnostics and (if given) the ``consolidated`` block to ``results`` in
    place; returns it. ``test_rows``/``selection_rows``: ledger rows by index (with per-prompt ``accs``);
    ``control_ids``: the control population's indices (random-k's voters), in the order random-k drew from."""
    table = {m: list(zip(r["preds"], r["accs"])) for m, r in test_rows.items()}
    base_accs = list(test_rows[BASE]["accs"])
    results["base"]["ci95"] = _ci(base_accs)
    if BASE in selection_rows:
        results["base"]["selection_ci95"] = _ci(selection_rows[BASE]["accs"])
    for e in results.get("experts") or []:
        e["ci95"] = _ci(test_rows[e["index"]]["accs"])
        if e["index"] in selection_rows:
            e["selection_ci95"] = _ci(selection_rows[e["index"]]["accs"])
    ranked = [e["index"] for e in results.get("experts") or []]
    paired: dict[str, Any] = {}

    maj = {int(k): _k_outcomes(table, ranked[: int(k)]) for k in results.get("maj_at_k") or {}}
    results["maj_at_k_ci95"] = {str(k): _ci(v) for k, v in sorted(maj.items())}
    paired["maj_at_k_vs_base"] = {str(k): stats.paired_bootstrap(v, base_accs) for k, v in sorted(maj.items())}
    if results.get("random_k"):
        paired["maj_at_k_vs_random_k"] = {}
        for k, r in results["random_k"].items():
            per_prompt = vote.random_k_per_prompt(table, list(control_ids), int(k), len(r["draws"]), int(r["seed"]))
            r["ci95"] = list(stats.bootstrap_mean(per_prompt))
            if int(k) in maj:
                paired["maj_at_k_vs_random_k"][str(k)] = stats.paired_bootstrap(maj[int(k)], per_prompt)
    if results.get("base_maj_at_k"):
        samples = [table[base_sample_index(s)] for s in range(max(int(k) for k in results["base_maj_at_k"]))]
        results["base_maj_at_k_ci95"] = {str(k): _ci(_k_outcomes(samples, range(int(k))))
                                         for k in results["base_maj_at_k"]}
    if ranked:
        paired["best_expert_vs_base"] = stats.paired_bootstrap(test_rows[ranked[0]]["accs"], base_accs)

    _fractions(results, test_rows, selection_rows, control_ids)
    results["diagnostics"] = _selection_vs_test(results, test_rows, selection_rows)

    if consolidated is not None and consolidated_rows is not None:
        results["consolidated"] = consolidated
        mine = consolidated_rows["weighted"]["accs"]
        paired["consolidated_vs_base"] = stats.paired_bootstrap(mine, base_accs)
        if "shuffled" in consolidated_rows:
            paired["consolidated_vs_shuffled_control"] = stats.paired_bootstrap(
                mine, consolidated_rows["shuffled"]["accs"])
        if maj:
            k = max(maj)
            paired["consolidated_vs_maj_at_k"] = dict(stats.paired_bootstrap(mine, maj[k]), k=k)
    results["paired"] = paired
    return results


def _fractions(results: dict, test_rows, selection_rows, control_ids) -> None:
    """Wilson intervals on the selection fractions, and the control population's test fractions beside them."""
    fb = results.get("fraction_beating_base_by_sigma") or {}
    base_test = float(test_rows[BASE]["acc"])
    for d in fb.values():
        d["ci95"] = list(stats.wilson(d["beating"], d["n"]))
    tested = [i for i in control_ids if i in test_rows and i in selection_rows]
    for i in tested:
        d = fb.setdefault(vote.sigma_key(selection_rows[i]["sigma"]), {"n": 0, "beating": 0, "fraction": None})
        d["test_n"] = d.get("test_n", 0) + 1
        d["test_beating"] = d.get("test_beating", 0) + int(float(test_rows[i]["acc"]) > base_test)
    for d in fb.values():
        if d.get("test_n"):
            d["test_fraction"] = d["test_beating"] / d["test_n"]
            d["test_ci95"] = list(stats.wilson(d["test_beating"], d["test_n"]))


def _selection_vs_test(results: dict, test_rows, selection_rows) -> dict[str, Any]:
    tested = sorted(i for i in test_rows if i >= 0 and i in selection_rows)
    out: dict[str, Any] = {"n_tested": len(tested), "selection_test_spearman": None}
    if not tested:
        return out
    out["selection_test_spearman"] = stats.spearman([selection_rows[i]["score"] for i in tested],
                                                    [test_rows[i]["acc"] for i in tested])
    # the oracle: best on test (ties: better on selection, then lower index), optimistic by construction
    oracle = min(tested, key=lambda i: (-float(test_rows[i]["acc"]), -float(selection_rows[i]["score"]), i))
    out.update(oracle_best_index=oracle, oracle_best_test_acc=test_rows[oracle]["acc"],
               oracle_best_ci95=_ci(test_rows[oracle]["accs"]))
    experts = results.get("experts") or []
    if experts:
        e = experts[0]
        out.update(selected_best_index=e["index"], selected_best_test_acc=e["test_acc"], selected_best_ci95=e["ci95"])
    return out
