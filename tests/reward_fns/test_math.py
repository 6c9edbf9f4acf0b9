"""reward_fns/math.py: boxed extraction, normalisation, math-verify when installed (skipped cleanly when
not), the string fallback, worker-thread safety, verl's own loader."""

import concurrent.futures
import importlib.util
import random
import time
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "reward_fns" / "math.py"
HAVE_MATH_VERIFY = importlib.util.find_spec("math_verify") is not None
needs_math_verify = pytest.mark.skipif(not HAVE_MATH_VERIFY, reason="math-verify is not installed (a default dependency: pip install -e .)")


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
    ("simplified radical", "\\boxed{\\sqrt{18}}", "3\\sqrt{2}", "\\sqrt{18}"),
    ("reordered polynomial", "\\boxed{1+x^2}", "x^2+1", "1+x^2"),
    ("product needs its space", "\\boxed{a \\cdot b}", "ab", "a\\cdot b"),
    ("radical in a fraction", "\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
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
    assert m.compute_score("x", "\\boxed{\\sqrt{18}}", "3\\sqrt{2}") == {"score": 0.0, "acc": 0.0, "pred": "\\sqrt{18}"}
    assert m.compute_score("x", "\\boxed{0.5}", "\\frac{1}{2}") == {"score": 1.0, "acc": 1.0, "pred": "\\frac{1}{2}"}
    assert m.compute_score("x", "\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}")["acc"] == 1.0


def test_availability_matches_the_environment():
    assert m.math_verify_available() == HAVE_MATH_VERIFY


def test_math_verify_is_in_the_default_install():
    import tomllib

    deps = tomllib.loads((PATH.parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.replace("_", "-").startswith("math-verify") for d in deps)


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


# issue 15, defect 2: answers on which sympy, unbounded in a worker thread, holds the GIL for minutes
# (measured: the first three never return; the sine takes seconds and grows with the exponent)
FREEZERS = ["(10^{9999})^{9999}", "(x+1)^{9999}", "9^{9^{9}}", "\\sin(10^{99999})", "{10^{9999}}^{9999}",
            "(10**9999)**9999", "\\binom{100000}{50000}", "2^{2^{2^{10}}}", "(10^{9})!", "10^{9999}\\cdot 10^{9999}",
            "\\sum_{k=1}^{10^{9}} k", "\\pi^{200}"]
SAFE = ["2^{2005}", "x^2+y^2", "(x+1)^{99}", "10^{9999}", "(10^{99})^{99}", "e^{i\\pi}", "x^{n}", "2^{-10}",
        "\\frac{\\sqrt{3}}{2}", "(1,2)", "3\\sqrt{2}"]


@pytest.mark.parametrize("text", FREEZERS)
def test_expensive_inputs_never_reach_sympy(text):
    assert not m.sympy_safe(text)
    assert not m.sympy_safe(m.normalize_answer(text))


@pytest.mark.parametrize("text", SAFE)
def test_ordinary_answers_reach_sympy(text):
    assert m.sympy_safe(m.normalize_answer(text))


def test_worker_thread_skips_expensive_inputs_quickly():
    t0 = time.perf_counter()
    got = _in_worker_thread(*[("\\boxed{" + t + "}", "10") for t in FREEZERS])
    assert time.perf_counter() - t0 < 10
    assert [o["acc"] for o in got] == [0.0] * len(FREEZERS)
    assert got[0]["pred"] == "(10^{9999})^{9999}"


@needs_math_verify
def test_the_freezing_answer_stays_fast_in_a_worker_thread_with_its_gold():
    # the same answer against a gold it equals in value: the bound refuses sympy, the string verdict stands
    t0 = time.perf_counter()
    (out,) = _in_worker_thread(("\\boxed{(10^{9999})^{9999}}", "10^{99980001}"))
    assert time.perf_counter() - t0 < 10 and out["acc"] == 0.0


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



# issue 15, defect 3: one key, two verdicts. (response, gold, acc, pred): a percent sign is dropped from the key,
# so "50\%" is judged as the key "50" is
PERCENT_CASES = [
    ("\\boxed{50\\%}", "\\frac{1}{2}", 0.0, "50"),
    ("\\boxed{50}", "\\frac{1}{2}", 0.0, "50"),
    ("\\boxed{50\\%}", "50", 1.0, "50"),
    ("\\boxed{50}", "50\\%", 1.0, "50"),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0, "\\frac{1}{2}"),
]


@pytest.mark.parametrize("use_math_verify", [True, False], ids=["default", "string-only"])
@pytest.mark.parametrize("case", PERCENT_CASES, ids=[f"{c[0]} vs {c[1]}" for c in PERCENT_CASES])
def test_percent_is_judged_as_its_key(case, use_math_verify):
    response, gold, acc, pred = case
    assert m.compute_score("x", response, gold, use_math_verify=use_math_verify) == {"score": acc, "acc": acc, "pred": pred}


# issue 15, defect 4: equal in value, different strings: one key and "correct" without math-verify.
# (id, response, gold, expected key)
SAME_VALUE_CASES = [
    ("decimal vs fraction", "\\boxed{0.5}", "\\frac{1}{2}", "\\frac{1}{2}"),
    ("decimal vs fraction, 0.25", "\\boxed{0.25}", "\\frac14", "\\frac{1}{4}"),
    ("leading dot", "\\boxed{.5}", "\\frac{1}{2}", "\\frac{1}{2}"),
    ("slash fraction", "\\boxed{3/4}", "0.75", "\\frac{3}{4}"),
    ("unreduced fraction", "\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", "\\frac{1}{2}"),
    ("sign inside the numerator", "\\boxed{\\frac{-1}{2}}", "-\\frac{1}{2}", "-\\frac{1}{2}"),
    ("sign inside the denominator", "\\boxed{\\frac{1}{-2}}", "-\\frac12", "-\\frac{1}{2}"),
    ("sign and dfrac", "\\boxed{-\\dfrac{3}{2}}", "\\frac{-3}{2}", "-\\frac{3}{2}"),
    ("trailing zeros", "\\boxed{2.50}", "2.5", "\\frac{5}{2}"),
    ("trailing zeros of an integer", "\\boxed{3.000}", "3", "3"),
    ("trailing zeros of a negative", "\\boxed{-7.0}", "-7", "-7"),
    ("braces around a one-token exponent", "\\boxed{x^{2}+1}", "x^2+1", "x^2+1"),
    ("braces around a one-token subscript", "\\boxed{a_{1}}", "a_1", "a_1"),
    ("unicode minus", "\\boxed{\u22123}", "-3", "-3"),
    ("unicode minus on a fraction", "\\boxed{\u2212\\frac{1}{2}}", "-0.5", "-\\frac{1}{2}"),
    ("tuple of decimals", "\\boxed{(0.5, 2.0)}", "\\left(\\frac{1}{2}, 2\\right)", "(\\frac{1}{2},2)"),
    ("interval", "\\boxed{[-1.0, \\frac{6}{4})}", "[-1,\\frac32)", "[-1,\\frac{3}{2})"),
    ("dollars with cents", "\\boxed{\\$1.50}", "\\frac{3}{2}", "\\frac{3}{2}"),
]


@pytest.mark.parametrize("use_math_verify", [True, False], ids=["default", "string-only"])
@pytest.mark.parametrize("case", SAME_VALUE_CASES, ids=[c[0] for c in SAME_VALUE_CASES])
def test_equal_values_share_a_key_and_are_correct(case, use_math_verify):
    _, response, gold, key = case
    assert m.compute_score("x", response, gold, use_math_verify=use_math_verify) == {"score": 1.0, "acc": 1.0, "pred": key}
    assert m.normalize_answer(gold) == key


def test_different_values_keep_different_keys():
    for a, b in [("0.5", "0.55"), ("\\frac{1}{3}", "0.333"), ("-\\frac{1}{2}", "\\frac{1}{2}"), ("x^{2}", "x^{21}"),
                 ("2.50", "25"), ("(1,2)", "(2,1)"), ("a_{1}", "a_{12}"), ("(1,000,000)", "(1,0,0)")]:
        assert m.normalize_answer(a) != m.normalize_answer(b), (a, b)


def _variants(rng, value):
    """Ways to write the rational `value` in a box, plus near misses."""
    from fractions import Fraction

    v = Fraction(value)
    sign = "-" if v < 0 else ""
    a = abs(v)
    forms = [f"{sign}\\frac{{{a.numerator}}}{{{a.denominator}}}", f"{sign}\\dfrac{{{a.numerator * 2}}}{{{a.denominator * 2}}}",
             f"\\frac{{{sign}{a.numerator}}}{{{a.denominator}}}", f"{sign}{a.numerator}/{a.denominator}",
             ("\u2212" if sign else "") + f"\\frac{{{a.numerator}}}{{{a.denominator}}}"]
    if (a * 1000).denominator == 1:
        dec = f"{float(a):.3f}"
        forms += [sign + dec, sign + dec.rstrip("0"), f"{sign}{dec}\\%", f"x = {sign}{dec}", f"{sign}{dec}\\text{{ cm}}"]
    if a.denominator == 1:
        forms += [f"{sign}{a.numerator}", f"{sign}{a.numerator}.0", f"{sign}{a.numerator}^\\circ", f"{sign}{a.numerator:,}"]
    forms += [f"({f}, 2)" for f in forms[:2]] + [f"x^{{2}}+{f}" for f in forms[:2]] + [f"x^2+{f}" for f in forms[:1]]
    return forms


@pytest.mark.parametrize("use_math_verify", [True, False], ids=["default", "string-only"])
def test_same_key_same_verdict_over_generated_responses(use_math_verify):
    """For each gold: every response with one vote key gets one acc, over equal values written many ways, near
    misses, percent and unit suffixes, tuples and polynomials, wrapped in prose."""
    from fractions import Fraction

    rng = random.Random(15)
    golds = ["\\frac{1}{2}", "50", "-\\frac{3}{4}", "2.5", "x^2+\\frac{1}{2}", "(\\frac{1}{2}, 2)", "3\\sqrt{2}",
             "1000000", "\\frac{7}{3}", "0"]
    values = [Fraction(1, 2), Fraction(50), Fraction(-3, 4), Fraction(5, 2), Fraction(7, 3), Fraction(0),
              Fraction(1000000), Fraction(1, 200), Fraction(-50), Fraction(3, 2)]
    extra = ["\\sqrt{18}", "3\\sqrt{2}", "\\sqrt{2}\\cdot 3", "x^2+0.5", "\\frac{1}{2}+x^{2}", "(10^{9999})^{9999}"]
    shared = 0
    for gold in golds:
        verdicts: dict[str, set] = {}
        texts: dict[str, set] = {}
        for value in values:
            for form in _variants(rng, value) + extra:
                response = rng.choice(["\\boxed{%s}", "So the answer is $\\boxed{%s}$.", "\\boxed{0} or \\fbox{%s}"]) % form
                out = m.compute_score("lighteval/MATH", response, gold, use_math_verify=use_math_verify)
                verdicts.setdefault(out["pred"], set()).add(out["acc"])
                texts.setdefault(out["pred"], set()).add(form)
        for pred, accs in verdicts.items():
            assert len(accs) == 1, (gold, pred, accs, sorted(texts[pred])[:6])
            shared += len(texts[pred]) > 1
        assert verdicts[m.normalize_answer(gold)] == {1.0}
    assert shared > 50
