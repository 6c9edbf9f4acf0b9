"""σ chosen apart from the test set (`randopt.sigma_choice=dev`): per σ, the top-K of that σ's candidates votes on a
dev split held out of the selection data; the σ whose vote is best on dev is chosen, and its top-K is reported next
to the mixed-σ default (the top-K over every σ).

Plain data, no Ray, no verl. Nothing here sees a test answer: `per_sigma_top_k` reads the search's ledger rows
(scored on the selection rows the search used), `choose` reads the dev answers only. The dev split is the last
``randopt.dev_size`` rows of the selection data; the search is scored on the rows before it, so no prompt is both.

`choose`: per σ, the K experts' majority vote (`vote.ensemble_outcomes`) on the dev prompts; its accuracy, Wilson
interval and mean reward of the experts; the chosen σ has the best dev vote accuracy (ties: the higher mean dev
score of its experts, then the smaller σ).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from . import stats, vote


def per_sigma_top_k(rows: Mapping[int, Mapping[str, Any]], k: int) -> dict[float, list[int]]:
    """{σ: the indices of the top-K candidates with that σ (`vote.rank` order)}, σ ascending; candidates only."""
    sigmas = sorted({float(r["sigma"]) for i, r in rows.items() if i >= 0})
    return {s: [r["index"] for r in vote.rank(r for i, r in rows.items() if i >= 0 and float(r["sigma"]) == s)[:k]]
            for s in sigmas}


def choose(dev_rows: Mapping[int, Mapping[str, Any]], experts: Mapping[float, list[int]]) -> dict[str, Any]:
    """The dev split's verdict per σ and the chosen σ (see the module docstring). ``dev_rows``: dev ledger rows by
    candidate index, with per-prompt ``preds``, ``accs`` and ``scores``."""
    table = {i: list(zip(r["preds"], r["accs"])) for i, r in dev_rows.items()}
    by_sigma = {}
    for s, members in experts.items():
        accs = [o.acc for o in vote.ensemble_outcomes(table, members)]
        by_sigma[s] = {"experts": list(members), "dev_vote_acc": math.fsum(accs) / len(accs),
                       "dev_ci95": list(stats.accuracy_ci(accs)),
                       "dev_mean_score": math.fsum(dev_rows[i]["score"] for i in members) / len(members)}
    chosen = min(by_sigma, key=lambda s: (-by_sigma[s]["dev_vote_acc"], -by_sigma[s]["dev_mean_score"], s))
    return {"by_sigma": {vote.sigma_key(s): v for s, v in by_sigma.items()}, "chosen_sigma": chosen,
            "experts": by_sigma[chosen]["experts"]}
