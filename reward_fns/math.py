"""MATH-style reward: the LAST \\boxed{...} answer against the ground truth, as a plain verl reward file.

Use it with stock verl (no plugin needed; it imports the standard library and, when installed, ``math-verify``,
which the default install of randopt-verl includes):

    reward.custom_reward_function.path=reward_fns/math.py
    reward.custom_reward_function.name=compute_score
    # optional: judge by the normalised strings alone, even when math-verify is installed
    +reward.custom_reward_function.reward_kwargs.use_math_verify=false

(The file is named math.py as the project layout asks; verl loads it by path under another module name,
so it never shadows the standard library, but do not put ``reward_fns/`` itself on ``sys.path``.)

Answer: the content of the LAST ``\\boxed{...}`` or ``\\fbox{...}`` (balanced braces; ``\\boxed 5`` without
braces is read up to the next "$" or whitespace). No box, an unbalanced last box, or a box over 2,000
characters: no answer (score 0, pred ""). A ground truth that itself contains a box (a full MATH solution)
is reduced to its last box first; a list or tuple of ground truths uses its first entry.

Vote key (``pred``): the boxed content normalised by ``normalize_answer``, which removes what does not change
the answer and writes what a human calls the same answer one way:
spacing commands and spaces (one space is kept where LaTeX needs it, ``\\cdot b``), ``\\left``/``\\right``,
``\\displaystyle``, ``dfrac``/``tfrac`` -> ``frac``, ``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt2`` ->
``\\sqrt{2}``, braces around a one-token exponent or subscript (``x^{2}`` -> ``x^2``), degrees, "$", "%",
a trailing ``\\text{ unit}``, other ``\\text{..}`` unwrapped, trailing ".", a short left-hand side
("x = 5" -> "5"), thousands separators ("1{,}000", "1,000"), the Unicode minus; and every plain rational
number, alone or as an element of a comma-separated tuple/list, is rewritten by value: an integer as
"-12", anything else as the reduced ``\\frac{p}{q}`` with the sign in front ("0.5", ".50", "1/2",
``\\frac{2}{4}``, ``\\frac{-1}{2}`` -> ``\\frac{1}{2}`` or ``-\\frac{1}{2}``; "2.50" -> ``\\frac{5}{2}``;
"5.0" -> "5").

Verdict (``acc``): computed from the key, never from the raw box, so two answers with one key always get one
verdict (``\\boxed{50\\%}`` and ``\\boxed{50}`` share the key "50" and, against a gold of 1/2, are both wrong).
The key is correct when it equals the normalised ground truth, or else, when math-verify is installed and
enabled, when ``math_verify.verify`` finds the two normalised strings equivalent (``\\sqrt{18}`` and
``3\\sqrt{2}``; ``1+x^2`` and ``x^2+1``). math-verify is bounded so that no answer can stop the process:
verl calls reward functions from an executor thread, where math-verify's own (SIGALRM) timeouts cannot
work, and sympy holding the GIL on a huge number stops every thread (measured: ``(10^{9999})^{9999}``,
``(x+1)^{9999}`` and ``9^{9^{9}}`` had not returned after 20 s; ``\\sin(10^{99999})`` takes 4 s). So
before sympy sees them, both strings must pass ``sympy_safe``: at most 300 characters; no factorial,
binomial, sum, product, integral or limit; no exponent containing an exponent; every numeric exponent at
most 10,000, their product at most 10,000, and at most 100 on a base that contains a letter. A string
that fails keeps the string verdict (that of the key: still one verdict per key). Verdicts are cached per
(gold, key). On the main thread math-verify's own 5 s timeouts apply as well; under randopt_verl the reward
runs in a child process with a time limit (``reward_guard``) anyway.

Returned dict, always the same keys: ``score`` = ``acc`` (1.0/0.0) and ``pred`` ("" when there is no answer).
Never raises.

Where this differs from the other scorers, and why:

* verl 0.9.1's default for MATH data sources (``verl.utils.reward_score.math_reward``, the Hendrycks
  ``strip_string``): string equality after a similar normalisation, which keeps "0.50" apart from "0.5",
  ``\\frac{-1}{2}`` apart from ``-\\frac{1}{2}`` and ``x^{2}`` apart from ``x^2``, and returns a bare float (no
  vote key). Here values decide: the vote must not split members that agree.
* verl's optional ``math_verify`` scorer: math-verify on the raw texts in a spawned process pool with a 30 s
  timeout per call. Here math-verify sees the normalised key (so the key decides the verdict), bounded
  inputs instead of a timeout (a verdict that depends on machine load could differ for one key).
* RandOpt (its MATH vote key is the last ``\\boxed{}``): the same box, normalised as above so that equal
  answers vote together; its verdict comes from that key.
* The ES paper has no MATH scorer.
"""

from __future__ import annotations

import functools
import re
import threading
from fractions import Fraction
from typing import Any

__all__ = [
    "compute_score",
    "last_boxed",
    "normalize_answer",
    "keys_equivalent",
    "is_equiv",
    "sympy_safe",
    "math_verify_available",
]

USE_MATH_VERIFY = True  # used only when the package is importable
MATH_VERIFY_TIMEOUT_S = 5  # on the main thread only (SIGALRM)
MAX_ANSWER_CHARS = 2000

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
# Normalisation: the vote key
# --------------------------------------------------------------------------------------------------

_SPACING_RE = re.compile(r"\\[!,;: ]|~")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_UNIT_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{\s+[^{}]*\}\s*$")
_TEXT_RE = re.compile(r"\\(?:text|textbf|textit|mbox|mathrm|mathbf)\{([^{}]*)\}")
_SPACES_RE = re.compile(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])|\s+")
_FRAC_SHORT_RE = re.compile(r"\\frac(\d)(\d)")
_FRAC_HALF_RE = re.compile(r"\\frac(\d)(?=\{)|\\frac(\{[^{}]*\})(\d)")
_SQRT_RE = re.compile(r"\\sqrt([0-9a-zA-Z])")
_ONE_TOKEN_SCRIPT_RE = re.compile(r"([\^_])\{([0-9a-zA-Z])\}")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_RATIONAL_RE = re.compile(
    rf"(?P<sign>[+-]?)(?:\\frac\{{(?P<fn>{_NUMBER})\}}\{{(?P<fd>{_NUMBER})\}}|(?P<sn>{_NUMBER})/(?P<sd>{_NUMBER})"
    rf"|(?P<n>{_NUMBER}))"
)
_MAX_NUMBER_CHARS = 100
_LEADING_ZEROS_RE = re.compile(r"[+-]?0\d+")


def _fix_frac_half(m: re.Match) -> str:
    if m.group(1) is not None:
        return "\\frac{" + m.group(1) + "}"
    return "\\frac" + m.group(2) + "{" + m.group(3) + "}"


def _rational(text: str) -> Fraction | None:
    """The value of a plain rational number: "-3", "2.50", ".5", "1/2", "\\frac{-1}{2}", "-\\frac{2}{4}"."""
    if len(text) > _MAX_NUMBER_CHARS:
        return None
    m = _RATIONAL_RE.fullmatch(text)
    if not m:
        return None
    try:
        if m.group("n") is not None:
            value = Fraction(m.group("n"))
        else:
            num, den = (m.group("fn"), m.group("fd")) if m.group("fn") is not None else (m.group("sn"), m.group("sd"))
            value = Fraction(num) / Fraction(den)
    except (ValueError, ZeroDivisionError):
        return None
    return -value if m.group("sign") == "-" else value


def _write_rational(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "{([":
            depth += 1
        elif c in "})]":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _numbers_by_value(s: str) -> str:
    """Each plain rational number, alone or as an element of a tuple/list/interval, written by value."""
    value = _rational(s)
    if value is not None:
        return _write_rational(value)
    open_, close = (s[0], s[-1]) if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" else ("", "")
    inner = s[len(open_) : len(s) - len(close)]
    if "," not in inner:
        return s
    parts = _split_top_level(inner)
    out = []
    for part in parts:
        # "(1,000,000)" may be a number in parentheses: an element with leading zeros is left as written
        value = None if _LEADING_ZEROS_RE.fullmatch(part) else _rational(part)
        out.append(_write_rational(value) if value is not None else part)
    return open_ + ",".join(out) + close


def normalize_answer(answer: Any) -> str:
    """The vote key of a final answer (see the module docstring); "" for junk."""
    if answer is None or isinstance(answer, bool):
        return ""
    if not isinstance(answer, str):
        answer = str(answer)
    s = answer.strip()
    if not s or len(s) > MAX_ANSWER_CHARS:
        return ""
    s = s.replace("\n", " ").replace("\\displaystyle", "").replace("\u2212", "-")
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
    # spaces go, except one after a control word followed by a letter ("\cdot b" must not become "\cdotb")
    s = _SPACES_RE.sub(lambda m: m.group(1) + " " if m.group(1) else "", s)
    s = _FRAC_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_RE.sub(_fix_frac_half, s)
    s = _SQRT_RE.sub(r"\\sqrt{\1}", s)
    s = _ONE_TOKEN_SCRIPT_RE.sub(r"\1\2", s)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    return _numbers_by_value(s) if s else ""


# --------------------------------------------------------------------------------------------------
# math-verify, bounded
# --------------------------------------------------------------------------------------------------

_MV: Any = None  # None = not tried yet, False = unavailable, else the imported functions
_MV_LOCK = threading.Lock()
MAX_VERIFY_CHARS = 300
MAX_EXPONENT = 10_000  # one numeric exponent, and the product of all of them
MAX_SYMBOLIC_EXPONENT = 100  # a numeric exponent on a base with a letter: (x+1)^{9999} expands forever
_NO_SYMPY_RE = re.compile(r"binom|choose|!|\\prod|\\sum|\\int|\\lim|\\oint")
_INT_RE = re.compile(r"[+-]?\d+(?:\.\d+)?")


def _group_before(s: str, end: int) -> str:
    """The base of a "^" at index ``end``: the bracketed group or the token just before it."""
    i = end - 1
    if i < 0:
        return ""
    if s[i] in ")]}":
        depth = 0
        for j in range(i, -1, -1):
            depth += s[j] in ")]}"
            depth -= s[j] in "([{"
            if depth == 0:
                return s[j : i + 1]
        return s[: i + 1]
    j = i
    while j >= 0 and (s[j].isalnum() or s[j] in ".\\"):
        j -= 1
    return s[j + 1 : i + 1]


def _exponent_after(s: str, start: int) -> str:
    """The exponent of a "^" whose exponent starts at ``start``: a {group}, a digit run or one character."""
    if start >= len(s):
        return ""
    if s[start] == "{":
        depth = 0
        for j in range(start, len(s)):
            depth += s[j] == "{"
            depth -= s[j] == "}"
            if depth == 0:
                return s[start + 1 : j]
        return s[start + 1 :]
    m = _INT_RE.match(s, start)
    return m.group(0) if m else s[start]


def sympy_safe(text: str) -> bool:
    """Whether ``text`` is cheap enough to hand to math-verify/sympy with no timeout (module docstring)."""
    if len(text) > MAX_VERIFY_CHARS or _NO_SYMPY_RE.search(text):
        return False
    s = text.replace("**", "^")
    product = 1
    for i, c in enumerate(s):
        if c != "^":
            continue
        exponent = _exponent_after(s, i + 1).strip()
        if "^" in exponent:
            return False  # a tower
        if not _INT_RE.fullmatch(exponent):
            continue  # symbolic: sympy keeps it unevaluated
        e = abs(float(exponent))
        if e > MAX_EXPONENT:
            return False
        if e >= 2:
            product *= e
            if product > MAX_EXPONENT:
                return False
        if e > MAX_SYMBOLIC_EXPONENT and any(ch.isalpha() for ch in _group_before(s, i)):
            return False
    return True


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


@functools.lru_cache(maxsize=65536)
def _math_verify_equal(gold: str, pred: str) -> bool:
    """math-verify on two normalised answers, both already ``sympy_safe``; cached, so one (gold, key) pair
    is judged once per process."""
    parse, verify, latex_cfg, expr_cfg = _MV
    # math-verify's own timeouts use SIGALRM, which works on the main thread only
    timeout = MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
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


def keys_equivalent(gold_key: str, pred_key: str, use_math_verify: bool = True) -> bool:
    """The verdict on a vote key: equal normalised strings, else (bounded) math-verify equivalence."""
    if not pred_key or not gold_key:
        return False
    if gold_key == pred_key:
        return True
    if not (use_math_verify and USE_MATH_VERIFY and math_verify_available()):
        return False
    if not (sympy_safe(gold_key) and sympy_safe(pred_key)):
        return False
    return _math_verify_equal(gold_key, pred_key)


def is_equiv(gold: str, pred: str, use_math_verify: bool = True) -> bool:
    """Whether two final answers (raw box contents) are equivalent: the verdict on their normalised keys."""
    return keys_equivalent(normalize_answer(gold), normalize_answer(pred), use_math_verify)


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
        use_mv = _truthy(kwargs.get("use_math_verify", True))
        correct = keys_equivalent(normalize_answer(_gold_text(ground_truth)), pred, use_math_verify=use_mv)
        acc = 1.0 if correct else 0.0
        return {"score": acc, "acc": acc, "pred": pred}
    except Exception:
        return {"score": 0.0, "acc": 0.0, "pred": ""}
