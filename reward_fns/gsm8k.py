"""GSM8K reward (exact numeric match), as a plain verl reward file.

Use it with stock verl (no plugin needed; the file imports nothing outside the standard library):

    reward.custom_reward_function.path=reward_fns/gsm8k.py
    reward.custom_reward_function.name=compute_score
    # optional extraction mode for the whole run (strict | flexible | auto):
    +reward.custom_reward_function.reward_kwargs.gsm8k_mode=strict

Extraction modes:

* ``strict``: the number right after the LAST "####" that is followed by a number (verl's own
  ``openai/gsm8k`` scorer uses this rule, with format score 0). No "####", no answer.
* ``flexible``: the last number anywhere in the text (verl's "flexible" rule).
* ``auto`` (DEFAULT): the strict answer when there is one, else the flexible one. This is the rule the
  RandOpt reference uses for its GSM8K vote key ("number after #### else last number"). It is the default
  because instruct models mostly do not write "####" unless few-shot prompted, so strict would score a base
  model near 0 for format alone, and because a trailing remark after "#### 72" must not replace 72 the
  way pure last-number extraction would.

Mode precedence: keyword argument ``gsm8k_mode`` (verl passes ``reward_kwargs`` as keyword arguments) >
``extra_info["gsm8k_mode"]`` (per item) > the module constant ``DEFAULT_MODE``.

Numbers: optional sign (a "-" that directly follows a digit, letter or ")" is read as subtraction, not
a sign; the Unicode minus "−" is a minus), optional "$", digits grouped in thousands ("1,234,567") or
in the Indian lakh/crore style ("10,00,000", "1,23,45,678"), or plain digits, optional decimals (".5" too);
a trailing period, "%" or unit is not part of the number. Commas that fit neither grouping separate a list
("3,4,5" ends in 5). Values compare exactly (``decimal.Decimal``), so "72", "72.0" and "$72.00" are all 72.
The ground truth may be a number, a numeric string, or a full GSM8K answer containing "#### n" (read by the
same rules).

Returned dict, always the same keys: ``score`` = ``acc`` (1.0/0.0) and ``pred`` (the vote key: the
normalised number, e.g. "1234.5"; "" when no number was extracted). ``acc`` is ``pred``'s value against the
ground truth's and nothing else, so answers that share a key share a verdict (tested over generated
responses). Never raises: junk input scores 0 with pred "".

Where this differs from the other scorers, and why:

* verl 0.9.1 (``verl.utils.reward_score.gsm8k``, data_source ``openai/gsm8k``): strict needs "#### " with a
  space and no "$", compares strings after removing commas (so "72.0", "72." and "$72" score 0 against
  "72"), looks at the last 300 characters only, and its flexible mode takes the last run of digits, dots and
  commas ("72." stays "72."). Here values compare as numbers, "####72" and "#### $72" count, and the whole
  response is read (in linear time): formatting must not decide correctness, since RandOpt's vote then
  groups answers by value.
* RandOpt's GSM8K key ("number after #### else last number") is the ``auto`` mode here, with numbers read
  by the rules above, and its verdict is computed from that key.
* The ES paper has no GSM8K scorer.
"""

from __future__ import annotations

import re
import warnings
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["compute_score", "extract_answer", "normalize_number", "DEFAULT_MODE", "MODES"]

MODES = ("strict", "flexible", "auto")
DEFAULT_MODE = "auto"
MAX_NUMBER_CHARS = 100

# A number: optional sign (only when directly attached to the digits and not preceded by a word character
# or ")", so "10 - 5" and "x-5" end in 5, "is -5" in -5), optional "$", digits with proper thousands groups
# ("1,234,567"), Indian lakh/crore groups ("10,00,000", "1,23,45,678": pairs, then a final group of three)
# or plain digits, optional decimals; or ".5"-style decimals. Digits separated by commas that fit neither
# grouping ("3,4,5", "10,00") are a list of numbers, of which the last counts.
_GROUPED = r"\d{1,3}(?:,\d{3})+(?!,?\d)|\d{1,2}(?:,\d{2})+,\d{3}(?!,?\d)"
_NUM = r"(?:(?<![\w)])-)?(?:\$\s?)?(?:(?:" + _GROUPED + r"|\d+)(?:\.\d+)?|\.\d+)"
_NUM_RE = re.compile(_NUM)
_STRICT_RE = re.compile(r"####\s*(" + _NUM + ")")


def normalize_number(text: Any) -> str | None:
    """Canonical string of a numeric token ("$1,234.50" -> "1234.5", "-0" -> "0"); None if not a number."""
    if isinstance(text, bool) or text is None:
        return None
    if isinstance(text, (int, float)):
        text = repr(text)
    if not isinstance(text, str):
        try:
            text = str(text.item())  # numpy scalar
        except Exception:
            return None
    s = text.strip().replace("\u2212", "-").replace("$", "").replace(",", "").replace(" ", "")
    s = s.rstrip(".")
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    try:
        d = Decimal(s)
    except (InvalidOperation, ValueError):
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def extract_answer(text: str, mode: str = DEFAULT_MODE) -> str | None:
    """The raw numeric token the given mode extracts from a response, or None."""
    if not isinstance(text, str):
        return None
    text = text.replace("\u2212", "-")
    if mode not in MODES:
        raise ValueError(f"gsm8k_mode must be one of {MODES}, got {mode!r}")
    if mode in ("strict", "auto"):
        found = _STRICT_RE.findall(text)
        if found:
            return found[-1]
        if mode == "strict":
            return None
    # the last number ends at the last digit: find that with str.rfind (C speed) and run the regex on a
    # short window before it, instead of over the whole text (seconds on megabytes of prose)
    end = max(text.rfind(d) for d in "0123456789")
    if end < 0:
        return None
    last = None
    for last in _NUM_RE.finditer(text, max(0, end - 2 * MAX_NUMBER_CHARS), end + 1):
        pass
    return last.group(0) if last is not None else None


def _ground_truth_value(ground_truth: Any) -> str | None:
    gt = ground_truth
    if isinstance(gt, (bytes, bytearray)):
        gt = gt.decode("utf-8", "replace")
    if isinstance(gt, str):
        if "####" in gt:
            token = extract_answer(gt, "strict")
            return normalize_number(token) if token is not None else None
        direct = normalize_number(gt)
        if direct is not None:
            return direct
        token = extract_answer(gt, "flexible")
        return normalize_number(token) if token is not None else None
    return normalize_number(gt)


def _mode(extra_info: Any, kwargs: dict) -> str:
    mode = kwargs.get("gsm8k_mode")
    if mode is None and isinstance(extra_info, dict):
        mode = extra_info.get("gsm8k_mode")
    if mode is None:
        return DEFAULT_MODE
    clean = str(mode).strip().lower()
    if clean not in MODES:
        warnings.warn(f"gsm8k reward: unknown gsm8k_mode {mode!r}, using {DEFAULT_MODE!r}", stacklevel=3)
        return DEFAULT_MODE
    return clean


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """verl reward entry point; see the module docstring. Never raises."""
    try:
        token = extract_answer(solution_str, _mode(extra_info, kwargs))
        pred = normalize_number(token) if token is not None else None
        if pred is None:
            return {"score": 0.0, "acc": 0.0, "pred": ""}
        gold = _ground_truth_value(ground_truth)
        correct = gold is not None and Decimal(pred) == Decimal(gold)
        acc = 1.0 if correct else 0.0
        return {"score": acc, "acc": acc, "pred": pred}
    except Exception:
        return {"score": 0.0, "acc": 0.0, "pred": ""}
