"""Every number and table a user reads: one module formats them, so the trainer's results, `randopt-verl density`,
`randopt-verl compare` and the demo show the same quantity the same way.

Plain data, no Ray, no verl. Inputs are the files the trainers write (results.json, whose schema is in
`randopt_verl.core.results_schema`, and the runs `randopt_verl.tools.compare.load_run` reads); nothing here computes a result.

Formats: an accuracy is a percentage with one decimal ("52.5%"); a count is exact below 1000 and three significant
digits above ("2.36k", "150.00k" keeps two decimals); a duration is "4.2s", "3m20s" or "1h02m"; a missing or
non-finite value is "-". Tables are markdown with aligned columns.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

__all__ = ["pct", "pct_ci", "points", "count", "duration", "markdown", "results_table", "compare_table",
           "seed_groups_table", "spread"]


def _finite(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def pct(x: Any) -> str:
    """A fraction in [0, 1] as a percentage with one decimal."""
    v = _finite(x)
    return "-" if v is None else f"{100.0 * v:.1f}%"


def pct_ci(x: Any, ci: Any = None) -> str:
    """An accuracy with its 95% interval: "52.5% [41.0, 63.2]" (the interval in percent; omitted when absent)."""
    lo, hi = (ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None))
    lo, hi = _finite(lo), _finite(hi)
    if lo is None or hi is None:
        return pct(x)
    return f"{pct(x)} [{100.0 * lo:.1f}, {100.0 * hi:.1f}]"


def points(x: Any, ci: Any = None) -> str:
    """A difference of accuracies in percentage points with its interval: "+3.0 pts [-1.0, +7.0]"."""
    v = _finite(x)
    if v is None:
        return "-"
    lo, hi = (ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None))
    lo, hi = _finite(lo), _finite(hi)
    text = f"{100.0 * v:+.1f} pts"
    return text if lo is None or hi is None else f"{text} [{100.0 * lo:+.1f}, {100.0 * hi:+.1f}]"


def spread(d: Mapping[str, Any] | None, fmt=None) -> str:
    """``{"mean", "sd", "n"}`` (core.stats.mean_sd) as "52.5% ± 3.1% (n=3)"."""
    if not d or _finite(d.get("mean")) is None:
        return "-"
    fmt = fmt or pct
    return f"{fmt(d['mean'])} ± {fmt(d.get('sd'))} (n={d.get('n')})"


def count(n: Any) -> str:
    """Rollouts or tokens: exact below 1000, else two decimals with k/M/G."""
    v = _finite(n)
    if v is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.2f}{unit}"
    return str(int(v))


def duration(s: Any) -> str:
    """Seconds as 4.2s, 3m20s or 1h02m."""
    v = _finite(s)
    if v is None:
        return "-"
    h, rem = divmod(v, 3600)
    m, sec = divmod(rem, 60)
    return f"{int(h)}h{int(m):02d}m" if h else f"{int(m)}m{int(sec):02d}s" if m else f"{sec:.1f}s"


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table with every column padded to its widest cell."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def _by_k(d: Mapping[Any, Any] | None) -> dict[int, Any]:
    return {int(k): v for k, v in (d or {}).items()}


def _cost_row(label: str, c: Mapping[str, Any]) -> list[str]:
    return [label, count(c.get("rollouts")), count(c.get("tokens")), duration(c.get("wall_s"))]


def results_table(results: Mapping[str, Any]) -> str:
    """The tables of one RandOpt results.json (schema in `randopt_verl.core.results_schema`); every key but ``base`` may be
    missing (its cell renders as "-"). Accuracies carry their 95% interval in brackets where results.json has one.

    "Best single expert" is the rank-1 expert's test accuracy (chosen on the selection set: an honest number); the
    best test accuracy among the candidates with test answers is shown too, labelled as chosen on test (the oracle:
    an optimistic one), with Spearman's rho between selection and test score over those candidates.
    """
    base = results.get("base", {})
    experts = results.get("experts") or []
    diag = results.get("diagnostics") or {}
    parts = []

    head = [["base model (greedy)", pct_ci(base.get("test_acc"), base.get("ci95"))]]
    if experts:
        e = experts[0]
        head.append([f"best single expert (rank 1 on selection: #{e.get('index')}, sigma {e.get('sigma')})",
                     pct_ci(e.get("test_acc"), e.get("ci95"))])
        if diag.get("oracle_best_index") is not None:
            head.append([f"best on test of {diag.get('n_tested')} tested candidates (chosen on test: optimistic; "
                         f"#{diag['oracle_best_index']})", pct_ci(diag.get("oracle_best_test_acc"),
                                                                  diag.get("oracle_best_ci95"))])
        else:
            tested = [x for x in experts if _finite(x.get("test_acc")) is not None]
            if tested:
                b = max(tested, key=lambda x: (x["test_acc"], -x.get("rank", 0)))
                head.append([f"best of top-{len(experts)} on test (chosen on test: optimistic; #{b.get('index')})",
                             pct_ci(b["test_acc"], b.get("ci95"))])
    else:
        head.append(["best single expert", "-"])
    cons = results.get("consolidated")
    if cons:
        head.append([f"consolidated model (one forward pass per prompt; {cons.get('weighting')} weights over "
                     f"{cons.get('over')}, {cons.get('n_members')} members, scale {cons.get('scale')})",
                     pct_ci(cons.get("test_acc"), cons.get("ci95"))])
        if "shuffled_control_test_acc" in cons:
            head.append([f"consolidated, shuffled-reward control (scale {cons.get('shuffled_control_scale')})",
                         pct_ci(cons.get("shuffled_control_test_acc"), cons.get("shuffled_control_ci95"))])
    if "selection_test_spearman" in diag:
        rho = _finite(diag.get("selection_test_spearman"))
        head.append([f"Spearman rho, selection score vs test accuracy ({diag.get('n_tested')} tested candidates)",
                     "-" if rho is None else f"{rho:+.2f}"])
    sel = results.get("selection") or {}
    if sel.get("strategy") == "halving":  # N is the population; n_candidates counts the survivors' full rows
        head.append(["candidates searched (N)", str(sel.get("n_candidates"))])
        head.append([f"stopped early by halving (partial scores, never in the top-K; blocks of "
                     f"{(sel.get('rule') or {}).get('block_size')} prompts)", str(sel.get("n_stopped"))])
        head.append(["search rollouts, halving / full (N x selection prompts)",
                     f"{count(sel.get('rollouts'))} / {count(sel.get('full_rollouts'))} "
                     f"({pct(sel.get('rollouts_ratio'))}; saved {count(sel.get('rollouts_saved'))})"])
    labels = (("n_candidates", "candidates scored on the whole selection set" if sel.get("strategy") == "halving"
               else "candidates searched (N)"), ("n_selection", "selection prompts"), ("n_test", "test prompts"))
    for key, label in labels:
        if key in results:
            head.append([label, str(results[key])])
    parts.append(markdown(["metric", "value (95% CI)"], head))

    maj, rnd, bmaj = _by_k(results.get("maj_at_k")), _by_k(results.get("random_k")), _by_k(results.get("base_maj_at_k"))
    maj_ci, bmaj_ci = _by_k(results.get("maj_at_k_ci95")), _by_k(results.get("base_maj_at_k_ci95"))
    ks = sorted(set(maj) | set(rnd) | set(bmaj))
    if ks:
        rows = []
        for k in ks:
            r = rnd.get(k)
            rtxt = "-" if r is None else f"{pct(r.get('mean'))} ± {pct(r.get('std'))} ({len(r.get('draws') or [])} draws)"
            if r is not None and r.get("ci95"):
                rtxt += f" [{100.0 * r['ci95'][0]:.1f}, {100.0 * r['ci95'][1]:.1f}]"
            rows.append([str(k), pct_ci(maj.get(k), maj_ci.get(k)), rtxt, pct_ci(bmaj.get(k), bmaj_ci.get(k))])
        parts.append(markdown(["k", "selected top-k vote", "random-k vote (mean ± std)", "base maj@k"], rows))
        pops = sorted({r.get("n_population") for r in rnd.values() if r.get("n_population") is not None})
        if pops:
            parts.append(f"random-k control drew from {', '.join(map(str, pops))} evaluated candidates")

    paired = _paired_rows(results.get("paired") or {})
    if paired:
        n = next((p.get("n") for _, p in paired if p.get("n")), None)
        parts.append(markdown(["difference on the same test prompts", "mean (paired bootstrap 95% CI)"],
                              [[label, points(p.get("diff"), p.get("ci95"))] for label, p in paired])
                     + f"\n\npaired bootstrap over the {n} test prompts ({next((p.get('n_boot') for _, p in paired), '-')} "
                       "resamples); an interval that excludes 0 is a difference the test set resolves")

    fb = results.get("fraction_beating_base_by_sigma") or {}
    if fb:
        rows = []
        for s_, d in sorted(fb.items(), key=lambda kv: float(kv[0])):
            test = "-" if not d.get("test_n") else (f"{d.get('test_beating')}/{d.get('test_n')} "
                                                    f"{pct_ci(d.get('test_fraction'), d.get('test_ci95'))}")
            rows.append([str(s_), str(d.get("n", "-")), str(d.get("beating", "-")),
                         pct_ci(d.get("fraction"), d.get("ci95")), test])
        parts.append(markdown(["sigma", "candidates", "beating base (selection)", "fraction",
                               "beating base on test (random control subset)"], rows))

    sc = results.get("sigma_choice")
    if sc:
        rows = [[f"sigma {s_}{' (chosen)' if float(s_) == float(sc.get('chosen_sigma')) else ''}",
                 pct_ci(d.get("dev_vote_acc"), d.get("dev_ci95")), ", ".join(f"#{i}" for i in d.get("experts", []))]
                for s_, d in sorted((sc.get("by_sigma") or {}).items(), key=lambda kv: float(kv[0]))]
        parts.append(markdown([f"sigma chosen on the dev split ({sc.get('dev_size')} selection rows held out; no "
                               "test answer read)", "top-K vote on dev", "experts"], rows))
        sks = sorted(int(k) for k in sc.get("maj_at_k") or {})
        rows = [[str(k), pct_ci(maj.get(k), maj_ci.get(k)),
                 pct_ci(sc["maj_at_k"][str(k)], (sc.get("maj_at_k_ci95") or {}).get(str(k))),
                 points((sc.get("vs_mixed") or {}).get(str(k), {}).get("diff"),
                        (sc.get("vs_mixed") or {}).get(str(k), {}).get("ci95"))] for k in sks]
        parts.append(markdown(["k", "mixed-sigma top-k vote (test)", f"sigma {sc.get('chosen_sigma')} top-k vote "
                               "(test)", "chosen - mixed (paired)"], rows))

    curve = results.get("accuracy_vs_n")
    if curve:
        ns = [int(n) for n in curve.get("ns") or []]
        cks = sorted(int(k) for k in curve["by_n"][str(ns[-1])]["maj_at_k"]) if ns else []
        rows = []
        for n in ns:
            e = curve["by_n"][str(n)]
            top = e.get("vs_full_n", {}).get(str(cks[-1])) or {}
            rows.append([str(n)] + [pct_ci(e["maj_at_k"].get(str(k)), e["maj_at_k_ci95"].get(str(k))) for k in cks]
                        + [points(top.get("diff"), top.get("ci95"))])
        parts.append(markdown(["N (ledger prefix)"] + [f"top-{k} vote" for k in cks]
                              + [f"top-{cks[-1] if cks else '-'} vote - at N = {curve.get('full_n')} (paired)"], rows)
                     + f"\n\nfrom prefixes of one run's ledger (prefix-stable population); "
                       f"{curve.get('extra_test_passes')} extra experts' test passes (in test_cost)")

    crow = [_cost_row("search", results.get("cost") or {})]
    if results.get("test_cost"):
        crow.append(_cost_row("test answers and controls", results["test_cost"]))
    if cons and cons.get("selection_cost"):
        crow.append(_cost_row("consolidation: merged models on the selection set", cons["selection_cost"]))
    if cons and cons.get("test_cost"):
        crow.append(_cost_row("consolidated model's test answers (1 per prompt)", cons["test_cost"]))
    parts.append(markdown(["cost", "rollouts", "generated tokens", "wall time"], crow))
    return "\n\n".join(parts) + "\n"


def _paired_rows(paired: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The paired differences in reading order, labelled."""
    rows = []
    for k, p in sorted(_by_k(paired.get("maj_at_k_vs_random_k")).items()):
        rows.append((f"selected top-{k} vote − random-{k} vote (mean over draws)", p))
    for k, p in sorted(_by_k(paired.get("maj_at_k_vs_base")).items()):
        rows.append((f"selected top-{k} vote − base", p))
    if paired.get("best_expert_vs_base"):
        rows.append(("best single expert − base", paired["best_expert_vs_base"]))
    if paired.get("consolidated_vs_shuffled_control"):
        rows.append(("consolidated − shuffled-reward control", paired["consolidated_vs_shuffled_control"]))
    if paired.get("consolidated_vs_base"):
        rows.append(("consolidated − base", paired["consolidated_vs_base"]))
    if paired.get("consolidated_vs_maj_at_k"):
        p = paired["consolidated_vs_maj_at_k"]
        rows.append((f"consolidated − selected top-{p.get('k')} vote", p))
    return rows


def compare_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """One row per run (the shape `randopt_verl.tools.compare.load_run` returns), in the order given, plus what
    each column means."""
    headers = ["run", "method", "accuracy", "maj@k", "base", "rollouts", "tokens", "wall time"]
    rows = []
    for r in runs:
        f = r["final"]
        maj = r.get("maj_at_k")
        n = f.get("n")
        rows.append([
            str(r["name"]), r["method"],
            f"{pct_ci(f['accuracy'], f.get('ci95'))} ({r.get('accuracy_label', 'accuracy')}{f', n={n}' if n else ''})",
            ", ".join(f"@{k} {pct(v)}" for k, v in sorted(maj.items())) if maj else "-",
            pct(r.get("base_accuracy")), count(f.get("rollouts")), count(f.get("tokens")), duration(f.get("wall_s")),
        ])
    notes = []
    if any(r["method"] == "randopt" for r in runs):
        notes.append("RandOpt accuracy: the selected top-k vote at the largest k reported (maj@K), which answers "
                     "each test prompt K times; base: the base model's greedy test accuracy. RandOpt cost: the "
                     "search (the test answers are apart, results.json test_cost).")
    if any(r["method"] != "randopt" for r in runs):
        notes.append("ES/GRPO accuracy: the last validation; base: the validation before the first update.")
    notes.append("[lo, hi]: Wilson 95% interval over the n test prompts (prompts only: not over seeds; repeat the runs "
                 "over seeds for that).")
    notes.append("Costs are cumulative rollouts, generated tokens and wall time of the search or training work "
                 "(weights-in included; validation, test answers, checkpoint I/O and start-up excluded) up to that "
                 "accuracy.")
    return markdown(headers, rows) + "\n\n" + "\n".join(notes) + "\n"


def seed_groups_table(groups: Sequence[Mapping[str, Any]]) -> str:
    """Runs repeated over seeds (`randopt_verl.tools.compare.group_by_seed`): mean ± sd (sample sd) with n."""
    rows = []
    for g in groups:
        seeds = "; ".join(", ".join(f"{k}={v}" for k, v in s.items())
                          for s in g.get("seeds") or []) or "-"
        rows.append([str(g["name"]), g["method"], str(g["n"]),
                     f"{spread(g.get('accuracy'))} ({g.get('accuracy_label') or 'accuracy'})",
                     spread(g.get("base_accuracy")), spread(g.get("rollouts"), count),
                     spread(g.get("wall_s"), duration), seeds])
    return (markdown(["runs (same config but the seed)", "method", "n", "accuracy mean ± sd", "base mean ± sd",
                      "rollouts", "wall time", "seeds"], rows)
            + "\n\nmean ± sample standard deviation over the runs that differ only in their seeds\n")
