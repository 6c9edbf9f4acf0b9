"""Full vs halving selection on the same population, side by side in one run, judged on the top-K vote's test accuracy.

    nice -n 5 python scripts/bench_halving.py [--population 32] [--selection 128] [--test 200] [--top-k 4]
        [--block-size 16] [--z 1.645] [--replicas 2] [--out bench_halving] > bench_halving.log 2>&1
Hardware: any CPU (the hf rollout; --replicas R rollout replicas, one per core is fastest); measured on this project's
2-core machine (AVX512-BF16, no AMX), 2 replicas x 1 thread, about 14 GB of memory at the peak.
Task and model: the demo's (randopt_verl/tools/demo.py): countdown-lite on the embedded SmolLM2-135M-Instruct, sigmas
{0.002, 0.004}, greedy answers of at most 12 tokens. One trainer process (verl's harness, in process) runs the same
population twice into two run directories: randopt.selection.strategy=full, then =halving (every other setting the
same; the halving run's directory is run_halving_z<z>); the controls and the consolidation are off (the comparison
needs neither).
Prints (and writes to <out>/bench_halving.json): the search's rollouts, tokens and wall time of both and their ratio,
how many candidates halving stopped, the overlap of the two top-K sets, and each top-k vote's test accuracy (Wilson
95% interval) with the paired difference halving - full over the same test prompts (paired bootstrap 95% interval).
Rerunning resumes both run directories from their ledgers (nothing is scored twice).
Then a replay (no rollouts): the race of randopt_verl/core/halving.py run on the full search's own per-prompt scores,
cut into the same blocks, for each z in --replay-z: the rollouts it would have spent and its top-K's overlap with the
full top-K (where the overlap is K, the top-K vote's test answers are the full search's by construction). A replay
is not a measurement of the halving run: in bf16, a block answered alone can differ from the same prompts answered
in the full set's batches (different batch shapes). `--replay-only` prints the replay of an existing <out>/run_full.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="local HF model folder (default: the embedded model)")
    ap.add_argument("--population", type=int, default=32)
    ap.add_argument("--selection", type=int, default=128)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--z", type=float, default=1.645, help="randopt.selection.z of the halving run")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--out", default="bench_halving")
    ap.add_argument("--replay-z", default="0,0.5,1,1.645", help="z values of the replayed race (comma-separated)")
    ap.add_argument("--replay-only", action="store_true", help="only the replay, on an existing <out>/run_full")
    a = ap.parse_args()
    out = Path(a.out).resolve()
    if a.replay_only:
        replay(out / "run_full", a)
        return 0
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RANDOPT_VERL_ROLLOUT_THREADS", "1")  # one thread per replica (demo: one replica per core)

    from omegaconf import OmegaConf

    from randopt_verl.assets import embedded
    from randopt_verl.core import report, stats, vote
    from randopt_verl.core.ledger import BASE
    from randopt_verl.core.rundir import RunDir
    from randopt_verl.inprocess import compose, trainer_session
    from randopt_verl.tools import demo

    out.mkdir(parents=True, exist_ok=True)
    ks = sorted({k for k in (1, 2, 4, a.top_k) if k <= a.top_k})
    preset = dict(demo.COMMON, population_size=a.population, selection_size=a.selection, test_size=a.test,
                  top_k=a.top_k, ensemble_ks=ks, control_population=a.top_k, random_k_draws=0, consolidate=False)
    files = demo.write_data(out, a.selection, a.test)
    dirs = {"full": out / "run_full", "halving": out / f"run_halving_z{a.z:g}"}
    # the demo's command line (console.quiet is the demo's subprocess setting: in process, Ray's output stays here)
    args = [x for x in demo.overrides(a.model or embedded.default_model_path(), files, dirs["full"], preset,
                                      a.replicas) if not x.startswith("console.quiet")]
    args += ["randopt.plots=false", f"randopt.selection.block_size={a.block_size}", f"randopt.selection.z={a.z}"]
    wall = {}
    with trainer_session(compose(args)) as trainer:
        for strategy, run_dir in dirs.items():
            # the same trainer, population and prompts; only the selection strategy and the run directory change
            OmegaConf.update(trainer.config, "randopt.selection.strategy", strategy)
            OmegaConf.update(trainer.config, "randopt.run_dir", str(run_dir))
            t0 = time.perf_counter()
            trainer.fit(None)
            wall[strategy] = time.perf_counter() - t0

    res = {s: RunDir(d).results() for s, d in dirs.items()}
    tests = {s: RunDir(d).test_ledger.read().by_index for s, d in dirs.items()}
    ranked = {s: [e["index"] for e in r["experts"]] for s, r in res.items()}
    per_prompt = {s: {k: [o.acc for o in vote.ensemble_outcomes(
        {m: list(zip(row["preds"], row["accs"])) for m, row in tests[s].items()}, ranked[s][:k])] for k in ks}
        for s in res}
    base_accs = tests["full"][BASE]["accs"]
    assert base_accs == tests["halving"][BASE]["accs"], "the two runs answered the test set differently"
    cost = {s: r["cost"] for s, r in res.items()}
    sel = res["halving"]["selection"]
    summary = {
        "config": vars(a), "ks": ks,
        "cost": cost, "fit_wall_s_this_process": wall,
        "search_rollouts_ratio": cost["halving"]["rollouts"] / cost["full"]["rollouts"],
        "search_tokens_ratio": cost["halving"]["tokens"] / cost["full"]["tokens"],
        "search_wall_ratio": cost["halving"]["wall_s"] / cost["full"]["wall_s"],
        "halving": {key: sel[key] for key in ("rule", "n_stopped", "n_survivors", "rollouts", "full_rollouts",
                                              "rollouts_saved", "rollouts_ratio")},
        "top_k": ranked, "top_k_overlap": len(set(ranked["full"]) & set(ranked["halving"])),
        "base_test_acc": {"acc": sum(base_accs) / len(base_accs), "ci95": list(stats.accuracy_ci(base_accs))},
        "vote": {str(k): {s: {"acc": sum(per_prompt[s][k]) / len(base_accs),
                              "ci95": list(stats.accuracy_ci(per_prompt[s][k]))} for s in res}
                 | {"halving_minus_full": stats.paired_bootstrap(per_prompt["halving"][k], per_prompt["full"][k])}
                 for k in ks},
    }
    (out / "bench_halving.json").write_text(json.dumps(summary, indent=2) + "\n")

    print(f"\nfull vs halving: {a.population} candidates, {a.selection} selection and {a.test} test prompts, "
          f"K = {a.top_k}, blocks of {a.block_size}; {a.replicas} replicas")
    rows = [[s, report.count(cost[s]["rollouts"]), report.count(cost[s]["tokens"]),
             report.duration(cost[s]["wall_s"]), report.duration(wall[s])] for s in res]
    rows.append(["halving / full", f"{summary['search_rollouts_ratio']:.1%}", f"{summary['search_tokens_ratio']:.1%}",
                 f"{summary['search_wall_ratio']:.1%}", "-"])
    print(report.markdown(["search (base row included)", "rollouts", "generated tokens", "search wall",
                           "fit wall (this process; a resumed run skips what is done)"], rows))
    print(f"\nhalving stopped {sel['n_stopped']} of {a.population} candidates; candidates' rollouts "
          f"{sel['rollouts']} of {sel['full_rollouts']} ({sel['rollouts_ratio']:.1%}, saved {sel['rollouts_saved']})")
    print(f"top-{a.top_k} overlap: {summary['top_k_overlap']}/{a.top_k} (full {ranked['full']}, halving "
          f"{ranked['halving']})\n")
    rows = [[str(k), report.pct_ci(v["full"]["acc"], v["full"]["ci95"]),
             report.pct_ci(v["halving"]["acc"], v["halving"]["ci95"]),
             report.points(v["halving_minus_full"]["diff"], v["halving_minus_full"]["ci95"])]
            for k, v in ((int(k), v) for k, v in summary["vote"].items())]
    print(report.markdown(["k", "full: top-k vote (Wilson 95%)", "halving: top-k vote (Wilson 95%)",
                           "halving - full (paired bootstrap 95%)"], rows))
    print(f"\nbase model (greedy): {report.pct_ci(summary['base_test_acc']['acc'], summary['base_test_acc']['ci95'])}"
          f"; written {out / 'bench_halving.json'}")
    replay(dirs["full"], a)
    return 0


def replay(full_dir: Path, a: argparse.Namespace) -> None:
    """The halving race replayed on the full search's per-prompt scores, for each z (see the module docstring)."""
    from randopt_verl.core import halving, report, vote
    from randopt_verl.core.rundir import RunDir

    rows = RunDir(full_dir).finished()
    n_sel = rows[0]["n"]
    n_blocks = -(-n_sel // a.block_size)
    scores = {(i, b): r["scores"][b * a.block_size : (b + 1) * a.block_size] for i, r in rows.items()
              for b in range(n_blocks)}
    full_top = [r["index"] for r in vote.rank(rows.values())[: a.top_k]]
    out = []
    for z in (float(x) for x in a.replay_z.split(",")):
        rule = halving.Rule(a.top_k, z, 0.0, 32)  # min_prompts: the config default
        state = halving.race(scores, list(rows), n_blocks, rule)
        spent = sum(len(scores[(i, b)]) for i in rows for b in range(n_blocks)
                    if i in state.survivors or b <= state.stopped[i]["after_block"])
        top = [r["index"] for r in vote.rank(rows[i] for i in state.survivors)[: a.top_k]]
        full = len(rows) * n_sel
        out.append([f"{z:g}", str(len(state.stopped)), f"{spent} / {full} ({spent / full:.1%})",
                    f"{len(set(top) & set(full_top))}/{a.top_k}"])
    print(f"\nreplay on {full_dir}'s scores (no rollouts; blocks of {a.block_size}, min_prompts 32, margin 0):")
    print(report.markdown(["z", "stopped", "candidates' rollouts / full", "top-K overlap with full"], out))


if __name__ == "__main__":
    sys.exit(main())
