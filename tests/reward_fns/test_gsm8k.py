"""reward_fns/gsm8k.py: extraction modes, number normalisation, junk input, verl's own loader."""

import importlib.util
import random
import threading
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[2] / "reward_fns" / "gsm8k.py"


def load(path=PATH):
    spec = importlib.util.spec_from_file_location(f"reward_under_test_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


g = load()

GSM8K_SOLUTION = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"

# (id, response, ground truth, mode, expected acc, expected pred); score == acc always
CASES = [
    ("strict answer", "She sold 72 clips.\n#### 72", "72", "auto", 1.0, "72"),
    ("strict, no ####", "The answer is 72.", "72", "strict", 0.0, ""),
    ("flexible, trailing period", "The answer is 72.", "72", "flexible", 1.0, "72"),
    ("auto falls back to last number", "The answer is 72.", "72", "auto", 1.0, "72"),
    ("auto prefers #### over a later number", "#### 72\nI hope these 3 steps help", "72", "auto", 1.0, "72"),
    ("flexible takes the last number", "#### 72\nI hope these 3 steps help", "72", "flexible", 0.0, "3"),
    ("strict takes the last ####", "#### 5\n...\n#### 72", "72", "strict", 1.0, "72"),
    ("thousands separators", "#### 1,234", "1234", "strict", 1.0, "1234"),
    ("dollars and cents", "It costs $1,234.00 in total.", "1234", "auto", 1.0, "1234"),
    ("decimals keep their value", "#### 72.50", "72.5", "auto", 1.0, "72.5"),
    ("72.0 equals 72", "#### 72.0", "72", "auto", 1.0, "72"),
    ("negative number", "The change is -5", "-5", "auto", 1.0, "-5"),
    ("subtraction is not a sign", "10 - 5", "5", "auto", 1.0, "5"),
    ("unicode minus", "It is \u22127", "-7", "auto", 1.0, "-7"),
    ("percent", "So 50% of them.", "50", "auto", 1.0, "50"),
    ("a list of numbers", "3,4,5", "5", "auto", 1.0, "5"),
    ("#### without a space", "####72", "72", "strict", 1.0, "72"),
    ("#### with a dollar sign", "#### $18", "18", "strict", 1.0, "18"),
    ("wrong answer", "#### 71", "72", "auto", 0.0, "71"),
    ("ground truth is a full GSM8K solution", "72", GSM8K_SOLUTION, "auto", 1.0, "72"),
    ("ground truth with a comma", "1000", "#### 1,000", "auto", 1.0, "1000"),
    ("ground truth as int", "#### 72", 72, "auto", 1.0, "72"),
    ("ground truth as numpy int", "#### 72", np.int64(72), "auto", 1.0, "72"),
    ("no number at all", "I do not know.", "72", "auto", 0.0, ""),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_table(case):
    _, response, gt, mode, acc, pred = case
    out = g.compute_score("openai/gsm8k", response, gt, extra_info={"gsm8k_mode": mode})
    assert out == {"score": acc, "acc": acc, "pred": pred}


def test_mode_precedence():
    response = "The answer is 72."
    assert g.DEFAULT_MODE == "auto"
    assert g.compute_score("x", response, "72")["acc"] == 1.0  # default auto
    assert g.compute_score("x", response, "72", {"gsm8k_mode": "strict"})["acc"] == 0.0  # per item
    # reward_kwargs (keyword argument) beat extra_info
    assert g.compute_score("x", response, "72", {"gsm8k_mode": "strict"}, gsm8k_mode="flexible")["acc"] == 1.0
    assert g.compute_score("x", response, "72", None, gsm8k_mode="STRICT")["acc"] == 0.0
    with pytest.warns(UserWarning, match="unknown gsm8k_mode"):
        assert g.compute_score("x", response, "72", {"gsm8k_mode": "bogus"})["acc"] == 1.0


def test_module_constant_sets_the_default(monkeypatch):
    monkeypatch.setattr(g, "DEFAULT_MODE", "strict")
    assert g.compute_score("x", "The answer is 72.", "72")["acc"] == 0.0


@pytest.mark.parametrize("response", [None, "", 123, b"#### 72", ["#### 72"], "x" * 5_000_000, "9" * 1_000_000])
def test_junk_never_raises(response):
    t0 = time.perf_counter()
    out = g.compute_score("openai/gsm8k", response, "72")
    assert time.perf_counter() - t0 < 2.0
    assert out == {"score": 0.0, "acc": 0.0, "pred": ""}


@pytest.mark.parametrize("gt", [None, "", "no number", {"a": 1}, float("nan")])
def test_junk_ground_truth(gt):
    out = g.compute_score("openai/gsm8k", "#### 72", gt)
    assert out == {"score": 0.0, "acc": 0.0, "pred": "72"}


def test_windowed_last_number_matches_a_full_scan():
    # extract_answer(flexible) only runs the regex near the last digit; it must agree with a full scan
    rng = random.Random(0)
    alphabet = "0123456789,.-$ x)#\n"
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        last = None
        for last in g._NUM_RE.finditer(text):
            pass
        assert g.extract_answer(text, "flexible") == (last.group(0) if last else None), text


def test_normalize_number():
    assert g.normalize_number("$1,234.50") == "1234.5"
    assert g.normalize_number("-0") == "0"
    assert g.normalize_number("1e2") == "100"
    assert g.normalize_number("72.") == "72"
    assert g.normalize_number("abc") is None
    assert g.normalize_number("inf") is None


def test_scorer_works_off_the_main_thread():
    result = {}
    t = threading.Thread(target=lambda: result.update(g.compute_score("openai/gsm8k", "#### 72", "72")))
    t.start()
    t.join(10)
    assert result["acc"] == 1.0


def test_stock_verl_loads_the_file():
    pytest.importorskip("verl")
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create(
        {"reward": {"custom_reward_function": {"path": str(PATH), "name": "compute_score",
                                                "reward_kwargs": {"gsm8k_mode": "strict"}}}}
    )
    fn = get_custom_reward_fn(config)
    assert fn(data_source="openai/gsm8k", solution_str="The answer is 72.", ground_truth="72", extra_info={}) == {
        "score": 0.0, "acc": 0.0, "pred": ""}
    assert fn(data_source="openai/gsm8k", solution_str="#### 72", ground_truth="72", extra_info={})["acc"] == 1.0


# issue 15, defect 5: digit groupings other than thousands were read as their first group ("10,00,000" -> 10)
GROUPING_CASES = [
    ("lakh grouping", "The prize is 10,00,000 rupees.", "1000000", "auto", 1.0, "1000000"),
    ("lakh grouping after ####", "#### 10,00,000", "1000000", "strict", 1.0, "1000000"),
    ("one lakh", "So 1,00,000 in all", "100000", "auto", 1.0, "100000"),
    ("crore with decimals", "Rs. 1,23,45,678.50", "12345678.5", "auto", 1.0, "12345678.5"),
    ("ground truth in lakh grouping", "1000000", "#### 10,00,000", "auto", 1.0, "1000000"),
    ("a list is not a grouping", "10,00", "0", "auto", 1.0, "0"),
    ("a bad grouping is a list", "1,2345", "2345", "auto", 1.0, "2345"),
]


@pytest.mark.parametrize("case", GROUPING_CASES, ids=[c[0] for c in GROUPING_CASES])
def test_digit_groupings(case):
    _, response, gt, mode, acc, pred = case
    assert g.compute_score("openai/gsm8k", response, gt, extra_info={"gsm8k_mode": mode}) == {
        "score": acc, "acc": acc, "pred": pred}


def _written(rng, value):
    """One way a model might write `value` (a Decimal with at most 2 decimals)."""
    sign = "-" if value < 0 else ""
    whole, _, frac = f"{abs(value):f}".partition(".")
    groups = f"{int(whole):,}" if rng.random() < 0.5 else whole
    if rng.random() < 0.2 and len(whole) > 5:  # lakh grouping
        head, tail = whole[:-3], whole[-3:]
        pairs = [head[max(0, i - 2) : i] for i in range(len(head), 0, -2)][::-1]
        groups = ",".join(pairs + [tail])
    frac = frac + "0" * rng.randint(0, 2) if frac or rng.random() < 0.2 else ""
    text = groups + ("." + frac if frac else "")
    text = rng.choice(["", "$"]) + text
    return rng.choice([sign, "\u2212" if sign else ""]) + text if sign else text


def test_same_key_same_verdict_over_generated_responses():
    rng = random.Random(15)
    shared = 0
    for _ in range(60):
        gold = Decimal(rng.choice([rng.randint(0, 10**7), rng.randint(-500, 500), rng.randint(0, 10**5) / 100]))
        gold = gold.quantize(Decimal("0.01")) if gold != gold.to_integral_value() else gold
        verdicts: dict[str, set] = {}
        texts: dict[str, set] = {}
        for _ in range(150):
            value = gold if rng.random() < 0.4 else gold + rng.choice([1, -1, Decimal("0.5"), 100])
            number = _written(rng, value)
            response = rng.choice([f"#### {number}", f"The answer is {number}.", f"{number} apples",
                                   f"so {number}\n#### {number}", f"3 + 4 = 7, then {number}", number])
            for mode in g.MODES:
                out = g.compute_score("openai/gsm8k", response, str(gold), gsm8k_mode=mode)
                verdicts.setdefault(out["pred"], set()).add(out["acc"])
                texts.setdefault(out["pred"], set()).add(response)
        for pred, accs in verdicts.items():
            assert len(accs) == 1, (gold, pred, accs, sorted(texts[pred])[:5])
            shared += len(texts[pred]) > 1
        assert verdicts.get(g.normalize_number(str(gold))) == {1.0}, (gold, verdicts)
    assert shared > 100
