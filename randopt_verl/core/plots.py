"""The two pictures of a RandOpt run, drawn from its run directory alone (so any finished run can be redrawn):

- `density.png`: per sigma, the histogram of candidate selection scores with the base marked (the thicket density:
  how much of the neighbourhood beats the base);
- `accuracy_vs_n.png` (runs with randopt.accuracy_vs_n): each top-k vote's test accuracy against N (read from
  prefixes of the ledger), with its 95% interval;
- `maj_at_k.png`: test accuracy against k for the selected top-k vote (with its 95% interval), the random-k control
  (mean +- std) and the base model's self-consistency maj@k, with the base and the best single expert as lines and,
  when the run was consolidated, the consolidated model and its shuffled control at k = 1 (one forward pass).

    randopt-verl density RUN_DIR        # any CPU
"""

from __future__ import annotations

from pathlib import Path

from randopt_verl.core.ledger import BASE
from randopt_verl.core.rundir import RunDir


def draw(run_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = RunDir(run_dir)
    density_png, maj_png = run.plot_paths
    rows = run.ledger.read().by_index
    base = rows.get(BASE)
    cands = [r for i, r in rows.items() if i >= 0]
    if not cands:
        raise ValueError(f"{run.ledger.path} has no scored candidates yet")
    written = []

    sigmas = sorted({r["sigma"] for r in cands})
    fig, axes = plt.subplots(len(sigmas), 1, figsize=(6, 2.4 * len(sigmas)), squeeze=False)
    for ax, s in zip(axes[:, 0], sigmas):
        scores = [r["score"] for r in cands if r["sigma"] == s]
        ax.hist(scores, bins=min(30, max(5, len(scores) // 2)), color="tab:green", alpha=0.8)
        if base is not None:
            above = sum(x > base["score"] for x in scores) / len(scores)
            ax.axvline(base["score"], color="black", linestyle="--", label=f"base ({above:.0%} of candidates above)")
            ax.legend(fontsize=8)
        ax.set_title(f"sigma = {s:g}: {len(scores)} candidates", fontsize=9)
        ax.set_xlabel("selection score")
        ax.set_ylabel("candidates")
    fig.tight_layout()
    fig.savefig(density_png, dpi=110)
    plt.close(fig)
    written.append(density_png)

    res = run.results()
    if res is not None:
        ks = sorted(int(k) for k in res.get("maj_at_k", {}))
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(ks, [res["maj_at_k"][str(k)] for k in ks], "o-", label="selected top-k vote")
        ci = res.get("maj_at_k_ci95") or {}
        if all(str(k) in ci for k in ks) and ks:  # its 95% interval over the test prompts
            ax.fill_between(ks, [ci[str(k)][0] for k in ks], [ci[str(k)][1] for k in ks], alpha=0.15)
        rk = res.get("random_k", {})
        rks = [k for k in ks if str(k) in rk]
        if rks:
            means = [rk[str(k)]["mean"] for k in rks]
            stds = [rk[str(k)]["std"] for k in rks]
            ax.errorbar(rks, means, yerr=stds, fmt="s--", capsize=3, label="random-k vote (no selection)")
        bm = res.get("base_maj_at_k", {})
        bks = [k for k in ks if str(k) in bm]
        if bks:
            ax.plot(bks, [bm[str(k)] for k in bks], "^:", label="base self-consistency maj@k")
        ax.axhline(res["base"]["test_acc"], color="black", linestyle="--", label="base (greedy)")
        if res.get("experts"):
            ax.axhline(res["experts"][0]["test_acc"], color="tab:red", linestyle="-.", label="best single expert")
        cons = res.get("consolidated")
        if cons:  # one model, one forward pass per prompt: a point at k = 1 beside the votes
            ax.plot([1], [cons["test_acc"]], "D", color="tab:purple", markersize=8,
                    label=f"consolidated model (scale {cons.get('scale')})")
            if "shuffled_control_test_acc" in cons:
                ax.plot([1], [cons["shuffled_control_test_acc"]], "x", color="tab:purple", markersize=8,
                        label="consolidated, shuffled-reward control")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (experts / samples voting)")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(maj_png, dpi=110)
        plt.close(fig)
        written.append(maj_png)
    curve = (res or {}).get("accuracy_vs_n")
    if curve:
        fig, ax = plt.subplots(figsize=(6, 4))
        ns = [int(n) for n in curve["ns"]]
        for k in sorted(int(k) for k in curve["by_n"][str(ns[-1])]["maj_at_k"]):
            acc = [curve["by_n"][str(n)]["maj_at_k"][str(k)] for n in ns]
            ci = [curve["by_n"][str(n)]["maj_at_k_ci95"][str(k)] for n in ns]
            # Wilson's bounds can sit a rounding error inside an accuracy of 0 or 1: no negative bar
            ax.errorbar(ns, acc, yerr=[[max(0.0, a - c[0]) for a, c in zip(acc, ci)],
                                       [max(0.0, c[1] - a) for a, c in zip(acc, ci)]],
                        fmt="o-", capsize=3, label=f"top-{k} vote (95% interval)")
        ax.axhline(res["base"]["test_acc"], color="black", linestyle="--", label="base (greedy)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (candidates searched; prefixes of one run's ledger)")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(run.accuracy_vs_n_plot_path, dpi=110)
        plt.close(fig)
        written.append(run.accuracy_vs_n_plot_path)
    return written
