"""A dense toy reward for tests: the tiny random model rarely answers right, so score = fraction of digit
characters (varies across candidates and samples), acc = the ground truth appears as the last number, pred = the
last number. Same signature as any verl reward function. It raises on the items with ground truth "19", as a buggy
user reward might: the harness must record that sample's error and go on."""

import re


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    if str(ground_truth) == "19":
        raise ValueError("toy reward: this item always fails")
    s = solution_str or ""
    nums = re.findall(r"\d+", s)
    pred = nums[-1] if nums else ""
    return {
        "score": sum(c.isdigit() for c in s) / max(1, len(s)),
        "acc": float(pred == str(ground_truth)),
        "pred": pred,
    }
