"""MATH-style reward: the LAST \\boxed{...} answer against the ground truth, as a plain verl reward file.

Use it with stock verl (no plugin needed; the optional ``math-verify`` package is used when importable:
``pip install math-verify`` or ``pip install 'randopt-verl[math]'``):

    reward.custom_reward_function.path=reward_fns/math.py
    reward.custom_reward_function.name=compute_score
    # optional: force the plain normalised-string comparison even when math-verify is installed
    +reward.custom_reward_function.reward_kwargs.use_math_verify=false

(The file is named math.py as the project layout asks; verl loads it by path under another module name,
so it never shadows the standard library, but do not put ``reward_fns/`` itself on ``sys.path``.)

Answer: the content of the LAST ``\\boxed{...}`` or ``\\fbox{...}`` (balanced braces; ``\\boxed 5`` without
braces is read up to the next "$" or whitespace). No box, an unbalanced last box, or a box over 2,000
characters: no answer (score 0, pred ""). A ground truth that itself contains a box (a full MATH solution)
is reduced to its last box first.

Comparison, in order:
1. normalised strings equal (see ``normalize_answer``: spaces, ``\\left``/``\\right``, ``\\!``/``\\,``-style
   spacing, ``dfrac``/``tfrac`` -> ``frac``, ``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt2`` -> ``\\sqrt{2}``,
   trailing ".", degrees, "$", "%", trailing ``\\text{ unit}``, other ``\\text{..}`` unwrapped,
   thousands separators, "x = 5" -> "5", "5.0" -> "5", ".5" -> "0.5", integer "a/b" -> ``\\frac{a}{b}``);
2. else, when ``math_verify`` is importable and enabled: ``math_verify.parse`` both (boxed) and
   ``math_verify.verify(gold, pred)``. math-verify's own timeouts use ``signal.alarm``, which only works
   on the main thread; verl calls reward functions from an executor thread, so off the main thread the
   timeouts are disabled (``parsing_timeout=None``, ``timeout_seconds=None``) and, because sympy can then
   run unbounded (measured: ``\\binom{100000}{50000}`` never returns), inputs that look expensive (over 300
   characters, factorials, binomials, sums/products/integrals/limits, nested or 6+-digit exponents) skip
   math-verify and keep the string result. Any math-verify exception counts as "not equal".

Returned dict, always the same keys: ``score`` = ``acc`` (1.0/0.0) and ``pred`` (the normalised boxed
content, the vote key; "" when there is no answer). Equivalent answers written differently ("0.5" and
``\\frac{1}{2}``) get different vote keys. Never raises.
"""

from __future__ import annotations

import re
import threading
from typing import Any

__all__ = ["compute_score", "last_boxed", "normalize_answer", "is_equiv", "math_verify_available"]

USE_MATH_VERIFY = True  # used only when the package is importable
MATH_VERIFY_TIMEOUT_S = 5  # on the main thread only (SIGALRM)
MAX_ANSWER_CHARS = 2000
MAX_VERIFY_CHARS = 300

_BOX_COMMANDS = ("\\boxed", "\\fbox")


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} in text, or None (missing or unbalanced)."""
    if not isinstance(text, str):
        return None
    start, command = -1, ""
    for cmd in _BOX_COMMANDS:
        i = text.rfind(cmd)
        if i > start:
            start, command = i, cmd
    if start < 0:
        return None
    i = start + len(command)
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            c = text[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    content = text[i + 1 : j]
                    return content if len(content) <= MAX_ANSWER_CHARS else None
        return None
    if i < len(text) and text[i] == " ":
        content = text[i:].strip().split("$")[0].split()
        return content[0] if content else None
    return None


# --------------------------------------------------------------------------------------------------
# Normalisation (string fallback and vote key)
# --------------------------------------------------------------------------------------------------

_SPACING_RE = re.compile(r"\\[!,;: ]|~")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_UNIT_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{\s+[^{}]*\}\s*$")
_TEXT_RE = re.compile(r"\\(?:text|textbf|textit|mbox|mathrm|mathbf)\{([^{}]*)\}")
_FRAC_SHORT_RE = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_HALF_RE = re.compile(r"\\frac\s*(\d)\s*(?=\{)|\\frac\s*(\{[^{}]*\})\s*(\d)")
_SQRT_RE = re.compile(r"\\sqrt\s*([0-9a-zA-Z])")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_TRAILING_ZEROS_RE = re.compile(r"(-?\d+)\.0+")
_SIMPLE_FRACTION_RE = re.compile(r"(-?\d+)/(\d+)")
_LEADING_DOT_RE = re.compile(r"(?<![\d}])\.(\d)")


def _fix_frac_half(m: re.Match) -> str:
    if m.group(1) is not None:
        return "\\frac{" + m.group(1) + "}"
    return "\\frac" + m.group(2) + "{" + m.group(3) + "}"


def normalize_answer(answer: Any) -> str:
    """Canonical string of a final answer (Hendrycks-MATH-style normalisation); "" for junk."""
    if answer is None or isinstance(answer, bool):
        return ""
    if not isinstance(answer, str):
        answer = str(answer)
    s = answer.strip()
    if not s or len(s) > MAX_ANSWER_CHARS:
        return ""
    s = s.replace("\n", " ").replace("\\displaystyle", "")
    s = _SPACING_RE.sub("", s)
    s = _LEFT_RIGHT_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _DEGREE_RE.sub("", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = _UNIT_RE.sub("", s).strip()
    s = _TEXT_RE.sub(r"\1", s)
    s = s.replace("{,}", "")
    s = s.strip()
    while s.endswith("."):
        s = s[:-1].rstrip()
    # "x = 5" / "k=3" -> right-hand side when the left side is a short variable name
    parts = s.split("=")
    if len(parts) == 2 and 0 < len(parts[0].strip()) <= 2:
        s = parts[1].strip()
    s = s.replace(" ", "")
    s = _FRAC_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_RE.sub(_fix_frac_half, s)
    s = _SQRT_RE.sub(r"\\sqrt{\1}", s)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    s = _LEADING_DOT_RE.sub(r"0.\1", s)
    m = _TRAILING_ZEROS_RE.fullmatch(s)
    if m:
        s = m.group(1)
    m = _SIMPLE_FRACTION_RE.fullmatch(s)
    if m:
        s = "\\frac{" + m.group(1) + "}{" + m.group(2) + "}"
    if s == "-0":
        s = "0"
    return s


# --------------------------------------------------------------------------------------------------
# math-verify (optional)
# --------------------------------------------------------------------------------------------------

_MV: Any = None  # None = not tried yet, False = unavailable, else the imported functions
_MV_LOCK = threading.Lock()
_RISKY_RE = re.compile(
    r"binom|choose|!|\\prod|\\sum|\\int|\\lim"
    r"|\^\s*\{[^{}]*\^"  # exponent containing an exponent: x^{2^{..}}
    r"|\^\s*\d+\s*\^|\*\*[^*]*\*\*"  # towers without braces
    r"|\^\s*\{?\s*-?\d{6,}"  # 6+ digit exponent
)


def math_verify_available() -> bool:
    """Whether math-verify can be imported (imported once, lazily: it pulls in sympy)."""
    global _MV
    if _MV is None:
        with _MV_LOCK:
            if _MV is None:
                try:
                    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

                    _MV = (parse, verify, LatexExtractionConfig, ExprExtractionConfig)
                except Exception:
                    _MV = False
    return _MV is not False


def _math_verify_equal(gold: str, pred: str) -> bool:
    if not math_verify_available():
        return False
    parse, verify, latex_cfg, expr_cfg = _MV
    on_main = threading.current_thread() is threading.main_thread()
    if not on_main:
        raw = _SPACING_RE.sub("", gold) + " " + _SPACING_RE.sub("", pred)
        if len(gold) > MAX_VERIFY_CHARS or len(pred) > MAX_VERIFY_CHARS or _RISKY_RE.search(raw):
            return False
    timeout = MATH_VERIFY_TIMEOUT_S if on_main else None
    try:
        configs = [latex_cfg(), expr_cfg()]
        g = parse("\\boxed{" + gold + "}", configs, parsing_timeout=timeout)
        p = parse("\\boxed{" + pred + "}", configs, parsing_timeout=timeout)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=timeout))
    except BaseException as e:  # math-verify's TimeoutException, sympy errors, RecursionError, ...
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return False


def is_equiv(gold: str, pred: str, use_math_verify: bool = True) -> bool:
    """Normalised-string equality, then math-verify equivalence when enabled and importable."""
    ng, np_ = normalize_answer(gold), normalize_answer(pred)
    if not np_:
        return False
    if ng and ng == np_:
        return True
    if use_math_verify and USE_MATH_VERIFY:
        return _math_verify_equal(gold, pred)
    return False


# --------------------------------------------------------------------------------------------------
# verl entry point
# --------------------------------------------------------------------------------------------------


def _gold_text(ground_truth: Any) -> str | None:
    gt = ground_truth
    if isinstance(gt, (bytes, bytearray)):
        gt = gt.decode("utf-8", "replace")
    if isinstance(gt, (list, tuple)) and gt:  # some datasets store a list of accepted answers
        gt = gt[0]
    if gt is None or isinstance(gt, bool):
        return None
    if not isinstance(gt, str):
        gt = str(gt.item()) if hasattr(gt, "item") else str(gt)
    if "\\boxed" in gt or "\\fbox" in gt:
        gt = last_boxed(gt)
    return gt


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """verl reward entry point; see the module docstring. Never raises."""
    try:
        content = last_boxed(solution_str)
        pred = normalize_answer(content) if content is not None else ""
        if not pred:
            return {"score": 0.0, "acc": 0.0, "pred": ""}
        gold = _gold_text(ground_truth)
        use_mv = _truthy(kwargs.get("use_math_verify", True))
        correct = gold is not None and is_equiv(gold, content, use_math_verify=use_mv)
        acc = 1.0 if correct else 0.0
        return {"score": acc, "acc": acc, "pred": pred}
    except Exception:
        return {"score": 0.0, "acc": 0.0, "pred": ""}
