"""reward_fns/math.py: boxed extraction, normalisation, math-verify when installed (skipped cleanly when
not), the string fallback, worker-thread safety, verl's own loader."""

import concurrent.futures
import importlib.util
import time
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "reward_fns" / "math.py"
HAVE_MATH_VERIFY = importlib.util.find_spec("math_verify") is not None
needs_math_verify = pytest.mark.skipif(not HAVE_MATH_VERIFY, reason="math-verify is not installed (optional: pip install math-verify)")


def load(path=PATH):
    spec = importlib.util.spec_from_file_location(f"reward_under_test_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


m = load()

# Equal after string normalisation alone: must hold with and without math-verify.
# (id, response, ground truth, expected acc, expected pred)
STRING_CASES = [
    ("plain", "So the answer is \\boxed{5}.", "5", 1.0, "5"),
    ("dfrac", "\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", 1.0, "\\frac{1}{2}"),
    ("frac shorthand", "\\boxed{\\frac12}", "\\frac{1}{2}", 1.0, "\\frac{1}{2}"),
    ("fbox", "\\fbox{3}", "3", 1.0, "3"),
    ("last box wins", "first \\boxed{2}, finally \\boxed{3}", "3", 1.0, "3"),
    ("last box wins (wrong)", "first \\boxed{3}, finally \\boxed{2}", "3", 0.0, "2"),
    ("nested braces", "\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", 1.0, "\\frac{\\sqrt{3}}{2}"),
    ("unit text", "\\boxed{5\\text{ cm}}", "5", 1.0, "5"),
    ("degrees", "\\boxed{90^\\circ}", "90", 1.0, "90"),
    ("left/right", "\\boxed{\\left( 1, 2 \\right)}", "(1,2)", 1.0, "(1,2)"),
    ("percent", "\\boxed{10\\%}", "10", 1.0, "10"),
    ("x = 5", "\\boxed{x = 5}", "5", 1.0, "5"),
    ("thousands", "\\boxed{1{,}000}", "1000", 1.0, "1000"),
    ("trailing period", "\\boxed{5.}", "5", 1.0, "5"),
    ("thin spaces", "\\boxed{\\!12\\,}", "12", 1.0, "12"),
    ("text answer", "\\boxed{\\text{(C)}}", "(C)", 1.0, "(C)"),
    ("boxed with a space", "the answer is \\boxed 7$.", "7", 1.0, "7"),
    ("ground truth is a full solution", "\\boxed{6}", "Thus the total is $\\boxed{6}$.", 1.0, "6"),
    ("wrong", "\\boxed{7}", "6", 0.0, "7"),
    ("no box", "The answer is 5.", "5", 0.0, ""),
    ("unbalanced last box", "\\boxed{5} then \\boxed{5", "5", 0.0, ""),
    ("empty box", "\\boxed{}", "5", 0.0, ""),
]

# Equivalent only mathematically: need math-verify.
MATH_VERIFY_CASES = [
    ("decimal vs fraction", "\\boxed{0.5}", "\\frac{1}{2}", "0.5"),
    ("simplified radical", "\\boxed{\\sqrt{18}}", "3\\sqrt{2}", "\\sqrt{18}"),
    ("reordered polynomial", "\\boxed{1+x^2}", "x^2+1", "1+x^2"),
    ("unreduced fraction", "\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", "\\frac{2}{4}"),
]


@pytest.mark.parametrize("case", STRING_CASES, ids=[c[0] for c in STRING_CASES])
@pytest.mark.parametrize("use_math_verify", [True, False], ids=["default", "string-only"])
def test_string_cases(case, use_math_verify):
    _, response, gt, acc, pred = case
    out = m.compute_score("lighteval/MATH", response, gt, use_math_verify=use_math_verify)
    assert out == {"score": acc, "acc": acc, "pred": pred}


@needs_math_verify
@pytest.mark.parametrize("case", MATH_VERIFY_CASES, ids=[c[0] for c in MATH_VERIFY_CASES])
def test_math_verify_cases(case):
    _, response, gt, pred = case
    assert m.math_verify_available()
    assert m.compute_score("lighteval/MATH", response, gt) == {"score": 1.0, "acc": 1.0, "pred": pred}


@pytest.mark.parametrize("case", MATH_VERIFY_CASES, ids=[c[0] for c in MATH_VERIFY_CASES])
def test_string_fallback_does_not_claim_math_equivalence(case, monkeypatch):
    _, response, gt, pred = case
    # both switches: the keyword argument and the module constant
    assert m.compute_score("lighteval/MATH", response, gt, use_math_verify="false") == {"score": 0.0, "acc": 0.0, "pred": pred}
    monkeypatch.setattr(m, "USE_MATH_VERIFY", False)
    assert m.compute_score("lighteval/MATH", response, gt) == {"score": 0.0, "acc": 0.0, "pred": pred}


def test_without_math_verify_installed(monkeypatch):
    # simulate the package being absent even where it is installed
    monkeypatch.setattr(m, "_MV", False)
    assert not m.math_verify_available()
    assert m.compute_score("x", "\\boxed{0.5}", "\\frac{1}{2}") == {"score": 0.0, "acc": 0.0, "pred": "0.5"}
    assert m.compute_score("x", "\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}")["acc"] == 1.0


def test_availability_matches_the_environment():
    assert m.math_verify_available() == HAVE_MATH_VERIFY


def _in_worker_thread(*calls):
    # verl's reward loop runs scorers through run_in_executor: a worker thread, where SIGALRM is unusable
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return [pool.submit(m.compute_score, "lighteval/MATH", r, gt).result(timeout=30) for r, gt in calls]


def test_worker_thread_string_cases():
    calls = [(c[1], c[2]) for c in STRING_CASES]
    got = _in_worker_thread(*calls)
    assert [o["acc"] for o in got] == [c[3] for c in STRING_CASES]


@needs_math_verify
def test_worker_thread_uses_math_verify_without_signals():
    got = _in_worker_thread(*[(c[1], c[2]) for c in MATH_VERIFY_CASES])
    assert [o["acc"] for o in got] == [1.0] * len(MATH_VERIFY_CASES)


def test_worker_thread_skips_expensive_inputs_quickly():
    # without a timeout sympy would never return on these (measured for the binomial)
    t0 = time.perf_counter()
    got = _in_worker_thread(("\\boxed{\\binom{100000}{50000}}", "10"), ("\\boxed{2^{2^{2^{10}}}}", "10"),
                            ("\\boxed{(10^{9})!}", "10"))
    assert time.perf_counter() - t0 < 10
    assert [o["acc"] for o in got] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("response", [None, "", 5, ["\\boxed{5}"], "\\boxed{" * 100_000, "x" * 5_000_000,
                                      "\\boxed{" + "1" * 10_000 + "}"])
def test_junk_never_raises(response):
    t0 = time.perf_counter()
    assert m.compute_score("lighteval/MATH", response, "5") == {"score": 0.0, "acc": 0.0, "pred": ""}
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize("gt", [None, "", {"a": 1}, "\\boxed{unbalanced"])
def test_junk_ground_truth(gt):
    assert m.compute_score("lighteval/MATH", "\\boxed{5}", gt, use_math_verify=False) == {"score": 0.0, "acc": 0.0, "pred": "5"}


def test_numeric_ground_truth():
    assert m.compute_score("x", "\\boxed{5}", 5)["acc"] == 1.0
    assert m.compute_score("x", "\\boxed{5}", ["5", "five"])["acc"] == 1.0


def test_stock_verl_loads_the_file():
    pytest.importorskip("verl")
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create({"reward": {"custom_reward_function": {"path": str(PATH), "name": "compute_score"}}})
    fn = get_custom_reward_fn(config)
    assert fn(data_source="lighteval/MATH", solution_str="\\boxed{\\dfrac{1}{2}}", ground_truth="\\frac{1}{2}",
              extra_info={}) == {"score": 1.0, "acc": 1.0, "pred": "\\frac{1}{2}"}
