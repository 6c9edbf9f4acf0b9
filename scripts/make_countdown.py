# Run (any CPU, a few seconds, no network): python scripts/make_countdown.py --out-dir data/countdown --n-train 200 --n-val 2000 --seed 0
#   CPU demo data:                          python scripts/make_countdown.py --lite --out-dir data/countdown_lite --n-train 64 --n-val 64
"""Write a seeded Countdown dataset (train.parquet, test.parquet) in verl's format.

Full mode: data_source "countdown", TinyZero/ES prompt (<think>/<answer>), scored by reward_fns/countdown.py.
--lite: data_source "countdown_lite", two numbers and one of + - *, answer = the bare expression (the same
reward file scores it in its lite mode). Use the files with verl's data.train_files / data.val_files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from randopt_verl.assets import data
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from randopt_verl.assets import data


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", required=True, help="directory for train.parquet and test.parquet")
    p.add_argument("--n-train", type=int, default=200, help="rows in train.parquet (the selection set)")
    p.add_argument("--n-val", type=int, default=2000, help="rows in test.parquet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--low", type=int, default=None, help="smallest number (default 1)")
    p.add_argument("--high", type=int, default=None, help="largest number (default 99; 20 with --lite)")
    p.add_argument("--min-numbers", type=int, default=3)
    p.add_argument("--max-numbers", type=int, default=4)
    p.add_argument("--max-target", type=int, default=100, help="largest |target|")
    p.add_argument("--allow-negative", action="store_true", help="allow negative targets")
    p.add_argument("--allow-non-integer", action="store_true", help="allow targets with up to 4 decimals")
    p.add_argument("--template", default=None, help="prompt template (Python str.format fields, see randopt_verl/assets/data.py)")
    p.add_argument("--lite", action="store_true", help="two-number countdown_lite items for tiny models")
    args = p.parse_args(argv)

    n = args.n_train + args.n_val
    low = 1 if args.low is None else args.low
    if args.lite:
        rows = data.generate_countdown_lite(
            n, seed=args.seed, low=low, high=20 if args.high is None else args.high,
            allow_negative=args.allow_negative, template=args.template or data.COUNTDOWN_LITE_PROMPT,
        )
    else:
        rows = data.generate_countdown(
            n, seed=args.seed, min_numbers=args.min_numbers, max_numbers=args.max_numbers, low=low,
            high=99 if args.high is None else args.high, max_target=args.max_target,
            allow_negative=args.allow_negative, allow_non_integer=args.allow_non_integer,
            template=args.template or data.COUNTDOWN_PROMPT,
        )
    out = data.write_splits(rows, args.out_dir, args.n_train, args.n_val)
    source = rows[0]["data_source"]
    print(f"wrote {out['train']} ({out['n_train']} rows) and {out['test']} ({out['n_val']} rows), data_source={source!r}")
    print(f"  data.train_files={out['train']} data.val_files={out['test']}")
    print("  reward.custom_reward_function.path=reward_fns/countdown.py")
    return out


if __name__ == "__main__":
    main()
