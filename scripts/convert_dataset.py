# Run (any CPU, seconds, no network; the input files are ones you already have):
#   python scripts/convert_dataset.py gsm8k --train gsm8k/train.jsonl --val gsm8k/test.jsonl --out-dir data/gsm8k
#   python scripts/convert_dataset.py math --input math500.jsonl --n-train 100 --n-val 400 --out-dir data/math
#   python scripts/convert_dataset.py countdown --input countdown.parquet --n-train 200 --n-val 2000 --out-dir data/countdown
"""Convert local GSM8K / MATH / Countdown files (.json, .jsonl, .parquet) into verl parquet files.

gsm8k: columns question, answer ("... #### 72")             -> data_source openai/gsm8k, reward_fns/gsm8k.py
math: columns problem and answer, or solution with \\boxed{} -> data_source lighteval/MATH, reward_fns/math.py
countdown: columns target and nums (TinyZero) or numbers     -> data_source countdown, reward_fns/countdown.py

Either one --input split by --n-train/--n-val (in file order), or --train and --val files
(--n-train/--n-val then cap each; default all rows).
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

REWARD_FILES = {"gsm8k": "reward_fns/gsm8k.py", "math": "reward_fns/math.py", "countdown": "reward_fns/countdown.py"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(data.CONVERTERS))
    p.add_argument("--input", help="one file to split into train/test")
    p.add_argument("--train", help="train file (with --val)")
    p.add_argument("--val", help="validation/test file (with --train)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--data-source", default=None, help="override the data_source column")
    args = p.parse_args(argv)

    convert = data.CONVERTERS[args.kind]
    kwargs = {"data_source": args.data_source} if args.data_source else {}
    if args.input and not (args.train or args.val):
        rows = convert(args.input, **kwargs)
        if args.n_train is None:
            p.error("--input needs --n-train (and optionally --n-val; default: the rest)")
        out = data.write_splits(rows, args.out_dir, args.n_train, args.n_val)
    elif args.train and args.val and not args.input:
        train = convert(args.train, split="train", **kwargs)
        val = convert(args.val, split="test", **kwargs)
        n_train = len(train) if args.n_train is None else args.n_train
        n_val = len(val) if args.n_val is None else args.n_val
        if n_train > len(train) or n_val > len(val):
            p.error(f"asked for {n_train}/{n_val} rows, files hold {len(train)}/{len(val)}")
        out_dir = Path(args.out_dir)
        out = {
            "train": data.write_parquet(train[:n_train], out_dir / "train.parquet"),
            "test": data.write_parquet(val[:n_val], out_dir / "test.parquet"),
            "n_train": n_train,
            "n_val": n_val,
        }
    else:
        p.error("give either --input, or both --train and --val")
    print(f"wrote {out['train']} ({out['n_train']} rows) and {out['test']} ({out['n_val']} rows)")
    print(f"  data.train_files={out['train']} data.val_files={out['test']}")
    print(f"  reward.custom_reward_function.path={REWARD_FILES[args.kind]}")
    return out


if __name__ == "__main__":
    main()
