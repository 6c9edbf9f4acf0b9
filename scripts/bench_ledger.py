# python scripts/bench_ledger.py [--rows 10000] [--prompts 128] [--full-stride 1]   # any CPU, no GPU
"""Incremental `Ledger.read` vs a full re-read after every append, side by side in one run, on the same rows.

What the RandOpt trainer does per chunk of candidates: append each finished row (fsynced), then read the ledger
(`RunDir.finished`, progress). Arm "incremental": one `Ledger` appends and reads (it parses only the bytes appended
since its previous read). Arm "full": the same rows appended to a second file, each read by a fresh `Ledger` (the
old behaviour: the whole file parsed every time, O(N^2) over a search). Rows are realistic `candidate_row`s with
``--prompts`` per-prompt scores, accs and preds, built before timing starts; both files live in one temporary
directory. Prints each arm's total time (append + read, and read alone) and the ratio full / incremental, and checks
that both arms read the same rows.

--full-stride S > 1 times only every S-th full read and multiplies by S (printed as an estimate): the full arm at
10,000 rows parses ~50 million rows, many minutes on a small CPU. The incremental arm is always timed in full.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path


def make_rows(n: int, prompts: int, seed: int = 0) -> list[dict]:
    from randopt_verl.core.ledger import candidate_row

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        samples = []
        for _ in range(prompts):
            acc = float(rng.random() < 0.4)
            err = "TimeoutError: reward timed out" if rng.random() < 0.01 else None
            samples.append({"score": 0.0 if err else acc + 0.1 * rng.random(), "acc": 0.0 if err else acc,
                            "pred": None if err else str(rng.randrange(1000)), "error": err})
        rows.append(candidate_row(i, rng.randrange(2**31), rng.choice([0.0005, 0.001, 0.002]), samples,
                                  tokens=rng.randrange(10_000, 20_000), wall_s=rng.uniform(1, 3)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--full-stride", type=int, default=1, help="time every S-th full read only (x S, an estimate)")
    a = ap.parse_args()
    from randopt_verl.core.ledger import Ledger

    t = time.perf_counter()
    rows = make_rows(a.rows, a.prompts)
    print(f"built {a.rows} rows x {a.prompts} prompts in {time.perf_counter() - t:.1f} s")
    with tempfile.TemporaryDirectory(prefix="bench_ledger_") as tmp:
        inc_path, full_path = Path(tmp) / "incremental.jsonl", Path(tmp) / "full.jsonl"

        append_s = read_s = 0.0
        with Ledger(inc_path) as led:
            for row in rows:
                t0 = time.perf_counter()
                led.append(row)
                t1 = time.perf_counter()
                inc = led.read()
                read_s += time.perf_counter() - t1
                append_s += t1 - t0
        inc_total, inc_read = append_s + read_s, read_s

        append_s = read_s = 0.0
        timed = 0
        with Ledger(full_path) as writer:
            for i, row in enumerate(rows):
                t0 = time.perf_counter()
                writer.append(row)
                append_s += time.perf_counter() - t0
                if (i + 1) % a.full_stride == 0 or i == len(rows) - 1:
                    t1 = time.perf_counter()
                    full = Ledger(full_path).read()  # a fresh reader: the whole file parsed
                    read_s += time.perf_counter() - t1
                    timed += 1
        full_read = read_s * (len(rows) / timed)
        full_total = append_s + full_read
        size_mb = full_path.stat().st_size / 1e6

    assert inc.rows == full.rows and len(inc.rows) == a.rows, "the two arms read different rows"
    est = "" if a.full_stride == 1 else f" (estimated: {timed} of {len(rows)} reads timed, x{len(rows) / timed:.0f})"
    print(f"ledger: {a.rows} rows, {size_mb:.1f} MB")
    print(f"incremental read: append+read total {inc_total:8.2f} s   reads alone {inc_read:8.2f} s")
    print(f"full re-read:     append+read total {full_total:8.2f} s   reads alone {full_read:8.2f} s{est}")
    print(f"ratio full / incremental: total {full_total / inc_total:.1f}x, reads alone {full_read / inc_read:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
