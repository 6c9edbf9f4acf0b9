"""reward_fns/countdown.py: hand-checked cases, junk input, speed on adversarial text, verl's own loader."""

import importlib.util
import json
import random
import re
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[2] / "reward_fns" / "countdown.py"


def load(path=PATH):
    # the way verl loads a custom reward file: by path, under a private module name
    spec = importlib.util.spec_from_file_location(f"reward_under_test_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cd = load()

GT = {"target": 24, "numbers": [3, 8, 1]}


def full(answer, think="reasoning"):
    """A response in the exact expected format (the prompt's "<think>" is prepended by the scorer)."""
    return f"{think}</think>\n<answer>{answer}</answer>"


# (id, data_source, response, ground_truth, kwargs, expected score, acc, pred)
CASES = [
    ("correct", "countdown", full("3 * 8 * 1"), GT, {}, 1.1, 1.0, "24"),
    ("model writes its own <think>", "countdown", "<think>" + full("3*8*1"), GT, {}, 1.1, 1.0, "24"),
    ("trailing = target", "countdown", full("(3 * 8) / 1 = 24"), GT, {}, 1.1, 1.0, "24"),
    # a false equation is no answer: it must not share the key "24" with the right answer while scoring 0
    ("trailing = wrong number", "countdown", full("3 * 8 * 1 = 25"), GT, {}, 0.1, 0.0, ""),
    ("trailing = true but off target", "countdown", full("3 + 8 + 1 = 12"), GT, {}, 0.1, 0.0, "12"),
    ("target written first", "countdown", full("24 = 3 * 8 * 1"), GT, {}, 0.1, 0.0, ""),
    ("negative target", "countdown", full("2 - 7"), {"target": -5, "numbers": [2, 7]}, {}, 1.1, 1.0, "-5"),
    ("fractional target", "countdown", full("5 / 2"), {"target": 2.5, "numbers": [5, 2]}, {}, 1.1, 1.0, "5/2"),
    ("repeating target in JSON", "countdown", full("7 / 3"), '{"target": 2.3333333, "numbers": [7, 3]}', {},
     1.1, 1.0, "7/3"),
    ("target as string", "countdown", full("7/3"), {"target": "7/3", "numbers": [7, 3]}, {}, 1.1, 1.0, "7/3"),
    ("wrong value", "countdown", full("3 + 8 + 1"), GT, {}, 0.1, 0.0, "12"),
    ("wrong numbers", "countdown", full("4 * 6"), GT, {}, 0.1, 0.0, ""),
    ("reused number", "countdown", full("3 * 8 * 1 * 1"), GT, {}, 0.1, 0.0, ""),
    ("missing number", "countdown", full("3 * 8"), GT, {}, 0.1, 0.0, ""),
    ("letters", "countdown", full("abs(3 * 8 * 1)"), GT, {}, 0.1, 0.0, ""),
    ("__import__", "countdown", full("__import__('os').system('true')"), GT, {}, 0.1, 0.0, ""),
    ("power **", "countdown", full("2 ** 3"), {"target": 8, "numbers": [2, 3]}, {}, 0.1, 0.0, ""),
    ("decimal literal", "countdown", full("3.0 * 8 * 1"), GT, {}, 0.1, 0.0, ""),
    ("division by zero", "countdown", full("5 / (3 - 3)"), {"target": 0, "numbers": [5, 3, 3]}, {}, 0.1, 0.0, ""),
    ("nested parens", "countdown", full("((1 + 2) + 3) * 4"), {"target": 24, "numbers": [1, 2, 3, 4]}, {},
     1.1, 1.0, "24"),
    ("unbalanced parens", "countdown", full("(3 * 8 * 1"), GT, {}, 0.1, 0.0, ""),
    ("unary minus refused", "countdown", full("-3 + 5"), {"target": 2, "numbers": [3, 5]}, {}, 0.1, 0.0, ""),
    ("unary minus allowed by kwarg", "countdown", full("-3 + 5"), {"target": 2, "numbers": [3, 5]},
     {"allow_unary_minus": True}, 1.1, 1.0, "2"),
    ("multiple answers, last right", "countdown",
     "t</think>\n<answer>3 + 8 + 1</answer>\n<answer>3 * 8 * 1</answer>", GT, {}, 1.1, 1.0, "24"),
    ("multiple answers, last wrong", "countdown",
     "t</think>\n<answer>3 * 8 * 1</answer>\n<answer>3 + 8 + 1</answer>", GT, {}, 0.1, 0.0, "12"),
    ("answer only (no think)", "countdown", "<answer>3*8*1</answer>", GT, {}, 0.05 + 1.0, 1.0, "24"),
    ("no newline between blocks", "countdown", "x</think><answer>3*8*1</answer>", GT, {}, 0.06 + 1.0, 1.0, "24"),
    ("text after the answer", "countdown", full("3*8*1") + " done", GT, {}, 0.06 + 1.0, 1.0, "24"),
    ("one trailing newline is fine", "countdown", full("3*8*1") + "\n", GT, {}, 1.1, 1.0, "24"),
    ("whitespace around the equation", "countdown", full("\n 3 * 8 * 1 \n"), GT, {}, 1.1, 1.0, "24"),
    ("think only", "countdown", "no answer here</think>", GT, {}, 0.01, 0.0, ""),
    ("empty answer block", "countdown", full(""), GT, {}, 0.1, 0.0, ""),
    ("empty response", "countdown", "", GT, {}, 0.0, 0.0, ""),
    ("numbers as floats, numpy target", "countdown", full("3*8*1"), {"target": np.int64(24), "numbers": [3.0, 8.0, 1.0]},
     {}, 1.1, 1.0, "24"),
    ("numpy numbers ('nums')", "countdown", full("3*8*1"), {"target": 24, "nums": np.array([1, 3, 8])}, {},
     1.1, 1.0, "24"),
    # lite mode: the bare expression on the first non-empty line; score = acc
    ("lite", "countdown_lite", "16 + 5", {"target": 21, "numbers": [16, 5]}, {}, 1.0, 1.0, "21"),
    ("lite = target", "countdown_lite", "16 + 5 = 21", {"target": 21, "numbers": [16, 5]}, {}, 1.0, 1.0, "21"),
    ("lite code fence", "countdown_lite", "```text\n16 + 5\n```", {"target": 21, "numbers": [16, 5]}, {}, 1.0, 1.0, "21"),
    ("lite backticks + period", "countdown_lite", "\n`16 + 5`.", {"target": 21, "numbers": [16, 5]}, {}, 1.0, 1.0, "21"),
    ("lite only the first line counts", "countdown_lite", "16 - 5\n16 + 5", {"target": 21, "numbers": [16, 5]}, {},
     0.0, 0.0, "11"),
    ("lite prose", "countdown_lite", "The answer is 16 + 5", {"target": 21, "numbers": [16, 5]}, {}, 0.0, 0.0, ""),
    ("lite via ground truth mode", "countdown", "16 * 5", '{"target": 80, "numbers": [16, 5], "mode": "lite"}', {},
     1.0, 1.0, "80"),
    ("lite via kwarg", "countdown", "16 * 5", {"target": 80, "numbers": [16, 5]}, {"mode": "lite"}, 1.0, 1.0, "80"),
    ("full via kwarg beats data_source", "countdown_lite", "16 * 5", {"target": 80, "numbers": [16, 5]},
     {"mode": "full"}, 0.0, 0.0, ""),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_table(case):
    _, source, response, gt, kwargs, score, acc, pred = case
    out = cd.compute_score(source, response, gt, extra_info={"split": "test"}, **kwargs)
    assert out["score"] == pytest.approx(score)
    assert out["acc"] == acc
    assert out["pred"] == pred
    assert set(out) == {"score", "acc", "pred", "format"}


@pytest.mark.parametrize(
    "response, gt",
    [
        (None, GT),
        (12345, GT),
        (full("3*8*1"), None),
        (full("3*8*1"), "not json"),
        (full("3*8*1"), {"target": "abc", "numbers": [3, 8, 1]}),
        (full("3*8*1"), {"target": 24}),
        (full("3*8*1"), {"target": 24, "numbers": "3,8,1"}),
        (full("3*8*1"), {"target": float("nan"), "numbers": [3, 8, 1]}),
        (full("3*8*1"), 24),
    ],
)
def test_junk_never_raises_and_scores_zero(response, gt):
    assert cd.compute_score("countdown", response, gt) == {"score": 0.0, "acc": 0.0, "pred": "", "format": 0.0}


@pytest.mark.parametrize(
    "response",
    [
        "<think>" * 100_000 + "</think>\n<answer>" * 100_000,  # quadratic for the reference regexes
        "<answer>" * 200_000,
        "<answer>" + "(" * 100_000 + "3*8*1" + ")" * 100_000 + "</answer>",
        "a" * 5_000_000,
        full("+".join(["1"] * 100_000)),
    ],
)
def test_huge_adversarial_inputs_are_fast(response):
    for source in ("countdown", "countdown_lite"):
        t0 = time.perf_counter()
        out = cd.compute_score(source, response, GT)
        assert time.perf_counter() - t0 < 2.0
        assert out["acc"] == 0.0 and out["pred"] == ""


def test_linear_time_format_checks_match_the_reference_regexes():
    # the reference's regexes, applied as the reference did
    think = re.compile(r"<think>.*?</think>", re.DOTALL)
    answer = re.compile(r"<answer>.*?</answer>", re.DOTALL)
    whole = re.compile(r"^<think>.*?</think>\n<answer>.*?</answer>$", re.DOTALL)
    content = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
    pieces = ["<think>", "</think>", "<answer>", "</answer>", "\n", "x", "</think>\n<answer>", "answer>", "<"]
    rng = random.Random(0)
    for _ in range(20_000):
        resp = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        text = "<think>" + resp
        ref_format = 1.0 if whole.match(text) else (0.1 if think.search(text) else 0.0) + (0.5 if answer.search(text) else 0.0)
        found = content.findall(resp)
        assert cd.format_reward(resp) == ref_format, resp
        assert cd.extract_answer(resp) == (found[-1] if found else None), resp


def test_evaluator_is_exact_and_refuses_everything_else():
    assert cd.evaluate_expression("1 + 2 * 3") == 7
    assert cd.evaluate_expression("(1 + 2) * 3") == 9
    assert cd.evaluate_expression("8 - 3 - 2") == 3  # left associative
    assert cd.evaluate_expression("8 / 4 / 2") == 1
    assert cd.evaluate_expression("1 / 3 * 3") == 1  # exact, no float error
    assert cd.evaluate_expression("7 / 3") == Fraction(7, 3)
    for bad in ["", "1 +", "(1", "1)", "1 2", "2 ** 3", "-1", "1e3", "1.5", "x", "1 // 2", "1 % 2", "(" * 60 + "1" + ")" * 60]:
        with pytest.raises(cd.InvalidExpression):
            cd.evaluate_expression(bad)
    with pytest.raises(cd.InvalidExpression):
        cd.evaluate_expression("1 / (2 - 2)")
    assert cd.evaluate_expression("-(2 - 5)", allow_unary_minus=True) == 3


def test_canonical_value_is_exact():
    assert cd.canonical_value(Fraction(21)) == "21"
    assert cd.canonical_value(21.0) == "21"
    assert cd.canonical_value(2.5) == "5/2"
    assert cd.canonical_value(Fraction(-5)) == "-5"
    assert cd.canonical_value(Fraction(7, 3)) == "7/3"
    assert cd.canonical_value(Fraction(14, -6)) == "-7/3"
    # a rounded key would merge these two, though only the first is within 1e-5 of 0
    assert cd.canonical_value(Fraction(99999, 10**10)) != cd.canonical_value(Fraction(100001, 10**10))


def test_scorer_works_off_the_main_thread():
    # verl's reward loop calls the scorer through run_in_executor (a worker thread)
    result = {}
    t = threading.Thread(target=lambda: result.update(cd.compute_score("countdown", full("3*8*1"), json.dumps(GT))))
    t.start()
    t.join(10)
    assert result["acc"] == 1.0


def test_stock_verl_loads_the_file():
    pytest.importorskip("verl")
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create(
        {"reward": {"custom_reward_function": {"path": str(PATH), "name": "compute_score",
                                                "reward_kwargs": {"allow_unary_minus": True}}}}
    )
    fn = get_custom_reward_fn(config)
    # called the way verl's NaiveRewardManager calls it (keyword arguments), reward_kwargs merged in
    out = fn(data_source="countdown", solution_str=full("-3 + 5"), ground_truth='{"target": 2, "numbers": [3, 5]}',
             extra_info={"index": 0})
    assert out == {"score": pytest.approx(1.1), "acc": 1.0, "pred": "2", "format": 1.0}


# issue 15, defect 1: a right expression whose "= value" is rounded shared the key of the right answer and
# scored 0. Target 800/3 = 266.666..., numbers 10, 60, 57, 80. (id, response, expected score, acc, pred)
ROUNDED_RHS_GT = {"target": 266.6666667, "numbers": [10, 60, 57, 80]}
ROUNDED_RHS_CASES = [
    ("right, no right-hand side", full("(10 / (60 - 57)) * 80"), 1.1, 1.0, "800/3"),
    ("right, rounded right-hand side", full("(10 / (60 - 57)) * 80 = 266.67"), 0.1, 0.0, ""),
    ("right, right-hand side within 1e-5", full("(10 / (60 - 57)) * 80 = 266.666667"), 1.1, 1.0, "800/3"),
    ("right, exact fraction on the right", full("(10 / (60 - 57)) * 80 = 800/3"), 1.1, 1.0, "800/3"),
    ("wrong, true right-hand side", full("(10 / (60 - 57)) + 80 = 83.333333"), 0.1, 0.0, "250/3"),
    ("wrong, false right-hand side", full("(10 / (60 - 57)) + 80 = 266.67"), 0.1, 0.0, ""),
]


@pytest.mark.parametrize("case", ROUNDED_RHS_CASES, ids=[c[0] for c in ROUNDED_RHS_CASES])
def test_a_false_equation_is_no_answer(case):
    _, response, score, acc, pred = case
    for gt in (ROUNDED_RHS_GT, {"target": "800/3", "numbers": [10, 60, 57, 80]}):
        out = cd.compute_score("countdown", response, gt)
        assert (out["score"], out["acc"], out["pred"]) == (pytest.approx(score), acc, pred)
    lite = cd.compute_score("countdown_lite", response.split("<answer>")[1].split("</answer>")[0], ROUNDED_RHS_GT)
    assert (lite["acc"], lite["pred"]) == (acc, pred)


def _random_expression(rng, numbers):
    if len(numbers) == 1:
        return str(numbers[0])
    k = rng.randint(1, len(numbers) - 1)
    left, right = _random_expression(rng, numbers[:k]), _random_expression(rng, numbers[k:])
    return f"({left} {rng.choice('+-*/')} {right})" if rng.random() < 0.7 else f"{left} {rng.choice('+-*/')} {right}"


def _right_hand_sides(rng, value):
    exact = float(value)
    return ["", f" = {round(exact)}", f" = {exact:.2f}", f" = {exact:.6f}", f" = {exact:.9f}",
            f" = {value.numerator}/{value.denominator}", f" = {rng.randint(-50, 500)}"]


def test_same_key_same_verdict_over_generated_responses():
    """For each item: every response with one vote key gets one acc (and "" always 0), over expressions built
    from the item's numbers (right, wrong, misused numbers), with true, rounded and false right-hand sides, in
    both modes and in malformed wrappers."""
    rng = random.Random(15)
    shared = correct = 0
    for _ in range(150):
        numbers = [rng.randint(1, 99) for _ in range(rng.choice([2, 3, 4]))]
        try:
            target = cd.evaluate_expression(_random_expression(rng, rng.sample(numbers, len(numbers))))
        except cd.InvalidExpression:
            continue
        gt_forms = [{"target": float(target), "numbers": numbers},
                    {"target": f"{target.numerator}/{target.denominator}", "numbers": numbers}]
        for gt in gt_forms:
            verdicts: dict[str, set] = {}
            texts: dict[str, set] = {}
            for _ in range(40):
                used = rng.sample(numbers, len(numbers))
                if rng.random() < 0.15:  # misuse the numbers
                    used = used[:-1] if len(used) > 2 and rng.random() < 0.5 else used + [rng.randint(1, 9)]
                expr = _random_expression(rng, used)
                try:
                    value = cd.evaluate_expression(expr)
                except cd.InvalidExpression:
                    value = Fraction(0)
                for rhs in _right_hand_sides(rng, value):
                    answer = expr + rhs
                    for source, response in [("countdown", full(answer)), ("countdown", "<answer>" + answer),
                                             ("countdown", f"t</think><answer>{answer}</answer> ok"),
                                             ("countdown_lite", answer), ("countdown_lite", f"`{answer}`.")]:
                        out = cd.compute_score(source, response, gt)
                        verdicts.setdefault(out["pred"], set()).add(out["acc"])
                        texts.setdefault(out["pred"], set()).add(answer)
            for pred, accs in verdicts.items():
                assert len(accs) == 1, (gt, pred, accs, sorted(texts[pred])[:5])
                if pred == "":
                    assert accs == {0.0}
                else:
                    assert accs == {float(abs(Fraction(pred) - target) < Fraction(cd.TOLERANCE))}
                    shared += len(texts[pred]) > 1
                    correct += accs == {1.0}
    assert shared > 500 and correct > 100  # the property was exercised, not vacuous
