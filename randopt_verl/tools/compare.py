"""RandOpt, ES and GRPO runs side by side: accuracy against what it cost (rollouts, generated tokens, wall time).

    randopt-verl compare RUN_DIR... [--out report.md] [--plot compare.png]     # any CPU

`load_run` reads one run directory of any of the three trainers into one shape::

    {"name": str, "method": "randopt" | "es" | "grpo", "path": str,
     "accuracy_label": str,                       # what "accuracy" is: "maj@K" (randopt) or "val acc"
     "curve": [(rollouts, tokens, wall_s, accuracy), ...],
     "final": {"accuracy", "rollouts", "tokens", "wall_s",
               "n", "ci95"},                      # test prompts behind the accuracy, its Wilson 95% interval (or None)
     "maj_at_k": {k: accuracy} | None,            # randopt only
     "base_accuracy": float | None}

Formats read:

- RandOpt: ``results.json`` (schema in `randopt_verl.core.results_schema`). Its accuracy is the selected top-k vote at the
  largest k reported (labelled "maj@K" in the table); the curve is the base model at cost 0 and that vote at the
  run's total cost (the search spends its budget before any answer exists, so there is no curve in between).
- ES and GRPO: ``metrics.jsonl``, one ``{"step": int, "data": {...}}`` per line (verl's file logger format; the
  ES trainer writes it into ``es.run_dir``, the GRPO trainer points verl's file logger at
  ``trainer.default_local_dir/metrics.jsonl``; a ``.jsonl`` file may also be passed itself). ``data`` holds the cumulative ``cost/rollouts``, ``cost/tokens`` and
  ``cost/wall_s``, and on validation steps the accuracy: ``val/acc`` (ES) or the mean of every
  ``val-core/<data_source>/acc/mean@1`` (GRPO). A row without cost keys (e.g. verl's validation before training)
  takes the cost of the row before it (0 at the start). The method is ``data["meta/method"]`` when present, else
  "es" if any row has ``es/`` keys, else "grpo" if any has ``actor/`` keys. The validation at step 0 (before any
  update) is the base accuracy. Unreadable lines (a torn last line of a killed run) are skipped. A RandOpt run
  also writes a metrics.jsonl (its progress); without results.json it is refused as unfinished.

The final point is the last validation: its accuracy at the cost spent when it was measured. Its number of test
prompts ``n`` (RandOpt: results.json ``n_test``; ES: ``val/n``; else, from the run's config, the smaller of GRPO's
``data.val_max_samples`` or ES's ``es.test_size`` and the rows of ``data.val_files``) gives the table its Wilson 95%
interval. The table is rendered by
`randopt_verl.core.report.compare_table`.

Seeds: runs that differ only in their seeds are repeats of one experiment. `load_run` also reads each run's resolved
config (RandOpt and ES: manifest.json; GRPO: config.json, which its trainer writes; `RunDir.config`), and
`group_by_seed` groups runs whose configs are equal once the seeds (every key named ``seed`` or ``*_seed``:
randopt.seed, es.seed, GRPO's data.seed, actor_rollout_ref.rollout.seed, ...) and the per-run names and places
(``run_dir``, ``default_local_dir``, ``experiment_name``, ``project_name``, ``logger``, ``plots``) are set aside.
Each group of two or more is reported as mean ± sd (sample sd) with n (`report.seed_groups_table`), and the plot
draws the group's spread as error bars at its mean final cost. A run without a config is its own group.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from randopt_verl.core import report as _report
from randopt_verl.core.jsonio import read_json, read_jsonl
from randopt_verl.core.rundir import METRICS, RESULTS, RunDir
from randopt_verl.core.stats import wilson

log = logging.getLogger(__name__)

METHODS = ("randopt", "es", "grpo")
_GRPO_ACC = re.compile(r"^val-core/.+/acc/mean@1$")
_COST_KEYS = ("cost/rollouts", "cost/tokens", "cost/wall_s")


def _num(x: Any) -> float | None:
    """A finite number, or None (missing, null, NaN, not a number)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


# ------------------------------------------------------------------------------------------- randopt


def _load_randopt(path: Path, name: str) -> dict:
    res = read_json(path)
    if not isinstance(res, Mapping):
        raise ValueError(f"{path} is not a results.json object")
    base = _num((res.get("base") or {}).get("test_acc"))
    maj = {int(k): float(v) for k, v in (res.get("maj_at_k") or {}).items() if _num(v) is not None}
    cost = res.get("cost") or {}
    rollouts, tokens, wall = _num(cost.get("rollouts")), _num(cost.get("tokens")), _num(cost.get("wall_s"))
    if maj:
        k = max(maj)
        acc, label = maj[k], f"maj@{k}"
    else:  # no vote reported: the rank-1 expert alone
        experts = res.get("experts") or []
        acc, label = (_num(experts[0].get("test_acc")) if experts else None), "best expert"
    if acc is None:
        raise ValueError(f"{path} has no test accuracy (neither maj_at_k nor experts[0].test_acc)")
    curve = []
    if base is not None:
        curve.append((0, 0, 0.0, base))
    curve.append((_int(rollouts), _int(tokens), wall, acc))
    return {
        "name": name, "method": "randopt", "path": str(path.parent), "accuracy_label": label,
        "curve": curve,
        "final": {"accuracy": acc, "rollouts": _int(rollouts), "tokens": _int(tokens), "wall_s": wall,
                  "n": _int(_num(res.get("n_test")))},
        "maj_at_k": dict(sorted(maj.items())) or None,
        "base_accuracy": base,
    }


def _int(x: float | None) -> int | None:
    return None if x is None else int(x)


# ------------------------------------------------------------------------------------------- es, grpo


def _read_metrics(path: Path) -> list[tuple[int | None, dict]]:
    rows = []
    for row in read_jsonl(path):
        if not isinstance(row.get("data"), dict):
            log.warning("%s: a row is not a {step, data} row; skipped", path)
            continue
        step = row.get("step")
        rows.append((step if isinstance(step, int) and not isinstance(step, bool) else None, row["data"]))
    return rows


def _method(rows: list[tuple[int | None, dict]], path: Path) -> str:
    for _, d in rows:
        m = d.get("meta/method")
        if isinstance(m, str) and m:
            if m not in METHODS:
                raise ValueError(f"{path}: meta/method is {m!r}, expected one of {', '.join(METHODS)}")
            return m
    keys = {k for _, d in rows for k in d}
    if any(k.startswith("es/") for k in keys):
        return "es"
    if any(k.startswith("actor/") for k in keys):
        return "grpo"
    if "val/acc" in keys:  # an ES run stopped after its first validation
        return "es"
    if any(_GRPO_ACC.match(k) for k in keys):
        return "grpo"
    raise ValueError(f"{path}: cannot tell the method (no meta/method, es/ or actor/ keys)")


def _accuracy(d: Mapping[str, Any]) -> float | None:
    if "val/acc" in d:
        return _num(d["val/acc"])
    vals = [_num(v) for k, v in d.items() if _GRPO_ACC.match(k)]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _load_metrics(path: Path, name: str) -> dict:
    rows = _read_metrics(path)
    if not rows:
        raise ValueError(f"{path} has no metric rows")
    method = _method(rows, path)
    if method == "randopt":  # the search's progress log: its accuracies exist only once results.json is written
        raise ValueError(f"{path} is the progress log of a RandOpt search that has not finished: there is no "
                         f"{RESULTS} beside it yet")
    cost: list[float | None] = [0, 0, 0.0]
    curve, base, n = [], None, None
    for step, d in rows:
        if any(k in d for k in _COST_KEYS):
            cost = [_num(d.get(k)) for k in _COST_KEYS]
        acc = _accuracy(d)
        if acc is None:
            continue
        curve.append((_int(cost[0]), _int(cost[1]), cost[2], acc))
        n = _int(_num(d.get("val/n")))
        if step == 0:
            base = acc
    if not curve:
        raise ValueError(f"{path} has no validation accuracy yet (no val/acc or val-core/*/acc/mean@1 row)")
    r, t, w, a = curve[-1]
    return {
        "name": name, "method": method, "path": str(path.parent), "accuracy_label": "val acc",
        "curve": curve,
        "final": {"accuracy": a, "rollouts": r, "tokens": t, "wall_s": w, "n": n},
        "maj_at_k": None,
        "base_accuracy": base,
    }


def load_run(run_dir: str | os.PathLike) -> dict:
    """One run of any trainer, normalised (see the module docstring). ``run_dir`` may also be a metrics .jsonl."""
    p = Path(run_dir)
    if p.is_file() and p.suffix == ".jsonl":
        return dict(_load_metrics(p, p.stem), config=None)
    if not p.is_dir():
        raise FileNotFoundError(f"run directory {p} does not exist")
    name, run = p.resolve().name, RunDir(p)
    if run.results_path.is_file():
        out = _load_randopt(run.results_path, name)
    elif run.metrics_path.is_file():
        out = _load_metrics(run.metrics_path, name)
    else:
        raise FileNotFoundError(
            f"{p} has neither {RESULTS} (a finished RandOpt run) nor {METRICS} (an ES or GRPO run): nothing to compare"
        )
    out["config"] = run.config()
    final = out["final"]
    if final["n"] is None and out["method"] in ("es", "grpo"):
        final["n"] = _val_n(out["config"], out["method"])
    n = final["n"]
    final["ci95"] = list(wilson(round(final["accuracy"] * n), n)) if n else None
    return out


def _val_n(config: Mapping[str, Any] | None, method: str) -> int | None:
    """The test prompts behind a validation accuracy, from the run's config when its metrics do not say (GRPO's
    verl validation; ES runs from before `val/n`): the cap (GRPO data.val_max_samples, ES es.test_size) and the
    rows of data.val_files, whichever is smaller (None when neither can be read: the table then shows no
    interval)."""
    config = config or {}
    data = config.get("data") or {}
    files = data.get("val_files")
    files = [files] if isinstance(files, str) else list(files or [])
    try:
        import pyarrow.parquet as pq

        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files) if files else None
    except Exception:  # moved or unreadable files: fall back to the cap alone
        rows = None
    cap = (config.get("es") or {}).get("test_size") if method == "es" else data.get("val_max_samples")
    cap = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None
    if rows is None:
        return cap
    return min(rows, cap) if cap else rows


# ------------------------------------------------------------------------------------------- seeds

_SEED_KEY = re.compile(r"(^|_)seed$")
_PER_RUN_KEYS = {"run_dir", "default_local_dir", "experiment_name", "project_name", "logger", "plots"}


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def split_seeds(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(the config's identity without seeds and per-run names, as a canonical string; {seed key: value})."""
    import json

    flat = _flat(config)
    seeds = {k: v for k, v in flat.items() if _SEED_KEY.search(k.rsplit(".", 1)[-1])}
    rest = {k: v for k, v in flat.items() if k not in seeds and k.rsplit(".", 1)[-1] not in _PER_RUN_KEYS}
    return json.dumps(rest, sort_keys=True, default=str), seeds


def group_by_seed(runs: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Runs grouped by their config without seeds (see the module docstring), in first-seen order. Each group:
    ``{"name", "method", "runs": [names], "seeds": [{key: value} that vary], "n", "accuracy", "base_accuracy",
    "rollouts", "tokens", "wall_s"}`` with each number as ``stats.mean_sd`` over the group's runs."""
    from randopt_verl.core import stats

    groups: dict[str, list] = {}
    for i, r in enumerate(runs):
        key, seeds = split_seeds(r["config"]) if r.get("config") else (f"#{i}", {})
        groups.setdefault(f"{r['method']}|{r.get('accuracy_label')}|{key}", []).append((r, seeds))
    out = []
    for members in groups.values():
        runs_, seeds = [m[0] for m in members], [m[1] for m in members]
        varying = sorted({k for s in seeds for k in s if len({repr(x.get(k)) for x in seeds}) > 1})

        def spread(values):
            return stats.mean_sd([v for v in values if v is not None])

        out.append({
            "name": runs_[0]["name"] if len(runs_) == 1 else f"{runs_[0]['name']} (+{len(runs_) - 1})",
            "method": runs_[0]["method"], "accuracy_label": runs_[0].get("accuracy_label"),
            "runs": [r["name"] for r in runs_], "n": len(runs_),
            "seeds": [{k: s.get(k) for k in varying} for s in seeds],
            "accuracy": spread([r["final"]["accuracy"] for r in runs_]),
            "base_accuracy": spread([r.get("base_accuracy") for r in runs_]),
            "rollouts": spread([r["final"].get("rollouts") for r in runs_]),
            "tokens": spread([r["final"].get("tokens") for r in runs_]),
            "wall_s": spread([r["final"].get("wall_s") for r in runs_]),
        })
    return out


# ------------------------------------------------------------------------------------------- report


def report(runs: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of the runs, in the order given, then the seed groups (mean ± sd) when any run repeats."""
    text = _report.compare_table(runs)
    groups = group_by_seed(runs)
    if any(g["n"] > 1 for g in groups):
        text += "\n" + _report.seed_groups_table(groups)
    return text


def plot(runs: Sequence[Mapping[str, Any]], out_png: str | os.PathLike) -> Path:
    """Two panels, accuracy against rollouts and against tokens; one line per run, its base dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_png = Path(out_png)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(runs):
        color = colors[i % len(colors)]
        label = f"{r['name']} ({r['method']}, {r.get('accuracy_label', 'accuracy')})"
        style = "o:" if r["method"] == "randopt" else "o-"
        for ax, col in zip(axes, (0, 1)):
            pts = [(p[col], p[3]) for p in r["curve"] if p[col] is not None]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], style, color=color, label=label, markersize=4)
                if r["method"] == "randopt":  # the one answer the search produced: a big marker
                    ax.plot(*pts[-1], "*", color=color, markersize=12)
            if r.get("base_accuracy") is not None:
                ax.axhline(r["base_accuracy"], color=color, linestyle="--", linewidth=1, alpha=0.7)
    for i, g in enumerate(group_by_seed(runs)):  # repeats over seeds: mean ± sd of the final accuracy
        if g["n"] < 2:
            continue
        for ax, key in zip(axes, ("rollouts", "tokens")):
            x, acc = g[key].get("mean"), g["accuracy"]
            if x is not None and math.isfinite(x):
                ax.errorbar([x], [acc["mean"]], yerr=[acc["sd"]], xerr=[g[key]["sd"]], fmt="s", color="black",
                            capsize=4, markersize=5, label=f"{g['name']}: mean ± sd over {g['n']} seeds")
    for ax, xl in zip(axes, ("rollouts (cumulative)", "generated tokens (cumulative)")):
        ax.set_xlabel(xl)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="dashed: base accuracy", title_fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
