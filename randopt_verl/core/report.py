"""Every number and table a user reads: one module formats them, so the trainer's results, `randopt-verl density`,
`randopt-verl compare` and the demo show the same quantity the same way.

Plain data, no Ray, no verl. Inputs are the files the trainers write (results.json, whose schema is in
`randopt_verl.core.vote`, and the runs `randopt_verl.tools.compare.load_run` reads); nothing here computes a result.

Formats: an accuracy is a percentage with one decimal ("52.5%"); a count is exact below 1000 and three significant
digits above ("2.36k", "150.00k" keeps two decimals); a duration is "4.2s", "3m20s" or "1h02m"; a missing or
non-finite value is "-". Tables are markdown with aligned columns.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

__all__ = ["pct", "count", "duration", "markdown", "results_table", "compare_table"]


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
    """The tables of one RandOpt results.json (schema in `randopt_verl.core.vote`); every key but ``base`` may be
    missing (its cell renders as "-").

    "Best single expert" is the rank-1 expert's test accuracy (chosen on the selection set: an honest number); the
    best test accuracy among the top-K is shown too, labelled as chosen on test (an optimistic one).
    """
    base = results.get("base", {})
    experts = results.get("experts") or []
    parts = []

    head = [["base model (greedy)", pct(base.get("test_acc"))]]
    if experts:
        e = experts[0]
        head.append([f"best single expert (rank 1 on selection: #{e.get('index')}, sigma {e.get('sigma')})",
                     pct(e.get("test_acc"))])
        tested = [x for x in experts if _finite(x.get("test_acc")) is not None]
        if tested:
            b = max(tested, key=lambda x: (x["test_acc"], -x.get("rank", 0)))
            head.append([f"best of top-{len(experts)} on test (chosen on test: optimistic; #{b.get('index')})",
                         pct(b["test_acc"])])
    else:
        head.append(["best single expert", "-"])
    for key, label in (("n_candidates", "candidates searched (N)"), ("n_selection", "selection prompts"),
                       ("n_test", "test prompts")):
        if key in results:
            head.append([label, str(results[key])])
    parts.append(markdown(["metric", "value"], head))

    maj, rnd, bmaj = _by_k(results.get("maj_at_k")), _by_k(results.get("random_k")), _by_k(results.get("base_maj_at_k"))
    ks = sorted(set(maj) | set(rnd) | set(bmaj))
    if ks:
        rows = []
        for k in ks:
            r = rnd.get(k)
            rtxt = "-" if r is None else f"{pct(r.get('mean'))} ± {pct(r.get('std'))} ({len(r.get('draws') or [])} draws)"
            rows.append([str(k), pct(maj.get(k)), rtxt, pct(bmaj.get(k))])
        parts.append(markdown(["k", "selected top-k vote", "random-k vote (mean ± std)", "base maj@k"], rows))
        pops = sorted({r.get("n_population") for r in rnd.values() if r.get("n_population") is not None})
        if pops:
            parts.append(f"random-k control drew from {', '.join(map(str, pops))} evaluated candidates")

    fb = results.get("fraction_beating_base_by_sigma") or {}
    if fb:
        rows = [[str(s), str(d.get("n", "-")), str(d.get("beating", "-")), pct(d.get("fraction"))]
                for s, d in sorted(fb.items(), key=lambda kv: float(kv[0]))]
        parts.append(markdown(["sigma", "candidates", "beating base (selection)", "fraction"], rows))

    crow = [_cost_row("search", results.get("cost") or {})]
    if results.get("test_cost"):
        crow.append(_cost_row("test answers and controls", results["test_cost"]))
    parts.append(markdown(["cost", "rollouts", "generated tokens", "wall time"], crow))
    return "\n\n".join(parts) + "\n"


def compare_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """One row per run (the shape `randopt_verl.tools.compare.load_run` returns), in the order given, plus what
    each column means."""
    headers = ["run", "method", "accuracy", "maj@k", "base", "rollouts", "tokens", "wall time"]
    rows = []
    for r in runs:
        f = r["final"]
        maj = r.get("maj_at_k")
        rows.append([
            str(r["name"]), r["method"], f"{pct(f['accuracy'])} ({r.get('accuracy_label', 'accuracy')})",
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
    notes.append("Costs are cumulative rollouts, generated tokens and wall time of the search or training work "
                 "(weights-in included; validation, test answers, checkpoint I/O and start-up excluded) up to that "
                 "accuracy.")
    return markdown(headers, rows) + "\n\n" + "\n".join(notes) + "\n"
