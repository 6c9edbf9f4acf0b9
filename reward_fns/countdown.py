"""Countdown reward with the ES / RandOpt semantics, as a plain verl reward file.

Use it with stock verl (no plugin needed; the file imports nothing outside the standard library):

    reward.custom_reward_function.path=reward_fns/countdown.py
    reward.custom_reward_function.name=compute_score
    # optional, passed to compute_score as keyword arguments by verl:
    +reward.custom_reward_function.reward_kwargs.allow_unary_minus=true

Two modes, chosen per item:

* full (default; ``data_source`` "countdown" or anything else): the ES / RandOpt reward
  ``score = 0.1 * format + answer`` (max 1.1).

  - ``format`` is 1.0 when ``"<think>" + response`` matches ``^<think>.*?</think>\\n<answer>.*?</answer>$``
    (DOTALL, Python ``re`` semantics, exactly the reference regex: so one trailing newline is tolerated);
    otherwise 0.1 if a ``<think>...</think>`` block exists plus 0.5 if an ``<answer>...</answer>`` block exists.
    The ``"<think>"`` prefix is there because the reference prefilled it in the prompt; a chat model that
    writes its own ``<think>`` still matches.
  - ``answer`` is 1.0 when the content of the LAST ``<answer>`` block is a valid equation for the item
    (see "Valid equation") whose value is within 1e-5 of the target.

* lite (``data_source == "countdown_lite"``, or ground truth ``"mode": "lite"``, or the keyword argument
  ``mode="lite"``): for tiny models that cannot follow the tag format. The response should be just the
  expression. Code-fence lines (```` ``` ````, ```` ```text ````) are dropped, then the first non-empty line is
  taken, backticks and a trailing period are stripped. ``score = acc = answer`` in {0, 1}.

Valid equation (both modes): leading/trailing whitespace is stripped; the text may contain only digits,
``+ - * /``, parentheses and spaces, optionally followed by one ``= <number>`` (a plain literal such as
``24``, ``-3``, ``2.5`` or ``7/3``) which must equal the expression's own value within 1e-5: an equation that
is false as written (``(10 / (60 - 57)) * 80 = 266.67``, whose left side is 800/3) is no answer at all. The
expression is parsed by a small recursive-descent parser (model text is never passed to ``eval``): binary
``+ - * /`` with the usual precedence and left associativity, parentheses, non-negative integer literals.
Unary minus/plus is REFUSED by default: Countdown combines the given numbers with the four binary operations,
and a leading sign is not one of them (the reference accepted it only as a side effect of using Python
``eval``). Pass ``allow_unary_minus=True`` to accept a ``-`` in operand position (e.g. ``-3 + 5``) for parity
with the reference. The integer literals must be exactly the given numbers as a multiset (each used once,
none missing). Division by zero makes the equation invalid. Arithmetic is exact (``fractions.Fraction``).
``answer`` is 1 when that exact value is within 1e-5 of the target.

Returned dict, always with the same four keys (verl stacks reward extras by the first item's keys, so a
missing key in a later item would crash it): ``score`` (float), ``acc`` (1.0/0.0, equals ``answer``),
``pred`` (the vote key: the exact value of a valid equation, whether or not it hits the target, as an
integer "21" or a reduced fraction "7/3", "-5/2"; "" when there is no valid equation) and ``format`` (a
diagnostic, not part of the lite score: the format component in full mode; in lite mode 1.0 when the
extracted line parses as an arithmetic expression over integers, whatever its numbers, else 0.0), useful
to tell format fixes from reasoning gains. ``acc`` is a function of ``pred`` and the item alone (``pred``
"" means 0; otherwise its value against the target), so answers that share a vote key share a verdict
(tests/reward_fns/test_countdown.py checks this over generated responses).

Where this differs from the other scorers, and why:

* ES paper / es-at-scale grader: same format regexes and 0.1·format + answer; its answer check is a character
  filter (no ``=``) and Python ``eval``, so a leading sign passes and float arithmetic decides the 1e-5
  comparison. Here: no ``eval`` (safety), exact arithmetic, ``= value`` accepted when true,
  unary sign refused unless asked for (see above).
* RandOpt (its vote key is "the numeric value of a valid formula"; a later fix accepts a trailing
  ``= target``): the key here is the exact value rather than a rounded float, so two values that round alike
  but fall on either side of the 1e-5 tolerance cannot share a key; a trailing ``= v`` must be true (``v``
  equal to the expression's value), because a key shared by a right answer and a false equation scoring 0
  made the vote's verdict depend on which member ranked first.
* verl 0.9.1 ships no Countdown scorer (``verl.utils.reward_score`` has none), so there is nothing to match.

Ground truth: a dict ``{"target": t, "numbers": [...]}`` (``"nums"`` is accepted for ``"numbers"``), or a JSON
string of it (what ``randopt_verl.assets.data`` writes into parquet), numbers possibly a numpy array. Targets may be
negative or non-integer (int, float or a string such as "-3", "2.5", "7/3").

Never raises: junk input (None, wrong types, empty or huge strings) scores 0 with pred "". An unusable
ground truth (missing target or numbers, not a number, not JSON) scores all zeros, format included.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from typing import Any

__all__ = [
    "compute_score",
    "format_reward",
    "extract_answer",
    "parse_expression",
    "evaluate_expression",
    "check_equation",
    "canonical_value",
    "parse_ground_truth",
    "lite_extract",
]

TOLERANCE = 1e-5
# Refuse unary minus unless the caller asks for it (see the module docstring).
ALLOW_UNARY_MINUS = False
# Limits that keep a hostile or degenerate answer from costing more than a few microseconds.
MAX_EXPRESSION_CHARS = 1000
MAX_PAREN_DEPTH = 50
MAX_LITERAL_DIGITS = 30

_RHS_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+)\s*)?$")
_ALLOWED_LHS_RE = re.compile(r"^[0-9+\-*/() ]+$")


class InvalidExpression(ValueError):
    """The answer text is not a valid Countdown expression."""


# --------------------------------------------------------------------------------------------------
# Safe parser: tokens are integer literals, + - * / ( ); nothing else is ever interpreted.
# Grammar (left associative):
#   expr   := term (('+' | '-') term)*
#   term   := factor (('*' | '/') factor)*
#   factor := INT | '(' expr ')' | '-' factor   (the last only with allow_unary_minus)
# The tree is a nested tuple: ("num", Fraction) | ("neg", node) | (op, left, right).
# --------------------------------------------------------------------------------------------------


def _tokenize(text: str) -> list:
    tokens = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == " ":
            i += 1
        elif c.isdigit() and c.isascii():
            j = i
            while j < n and text[j].isascii() and text[j].isdigit():
                j += 1
            if j - i > MAX_LITERAL_DIGITS:
                raise InvalidExpression("integer literal too long")
            tokens.append(("num", int(text[i:j])))
            i = j
        elif c in "+-*/()":
            tokens.append((c, None))
            i += 1
        else:
            raise InvalidExpression(f"character not allowed: {c!r}")
    return tokens


class _Parser:
    def __init__(self, tokens: list, allow_unary_minus: bool):
        self.tokens = tokens
        self.pos = 0
        self.depth = 0
        self.allow_unary_minus = allow_unary_minus

    def peek(self):
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self):
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def expr(self):
        node = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()[0]
            node = (op, node, self.term())
        return node

    def term(self):
        node = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()[0]
            node = (op, node, self.factor())
        return node

    def factor(self):
        kind = self.peek()
        if kind == "num":
            return ("num", Fraction(self.take()[1]))
        if kind == "(":
            self.take()
            self.depth += 1
            if self.depth > MAX_PAREN_DEPTH:
                raise InvalidExpression("parentheses nested too deeply")
            node = self.expr()
            if self.peek() != ")":
                raise InvalidExpression("unbalanced parentheses")
            self.take()
            self.depth -= 1
            return node
        if kind == "-" and self.allow_unary_minus:
            self.take()
            self.depth += 1
            if self.depth > MAX_PAREN_DEPTH:
                raise InvalidExpression("too many unary signs")
            node = ("neg", self.factor())
            self.depth -= 1
            return node
        if kind is None:
            raise InvalidExpression("unexpected end of expression")
        raise InvalidExpression(f"unexpected token {kind!r}")


def parse_expression(text: str, allow_unary_minus: bool = ALLOW_UNARY_MINUS):
    """Parse an arithmetic expression into a tree; raise InvalidExpression on anything else."""
    if not isinstance(text, str):
        raise InvalidExpression("not a string")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise InvalidExpression("expression too long")
    tokens = _tokenize(text)
    if not tokens:
        raise InvalidExpression("empty expression")
    parser = _Parser(tokens, allow_unary_minus)
    tree = parser.expr()
    if parser.pos != len(tokens):
        raise InvalidExpression(f"unexpected token {parser.peek()!r}")
    return tree


def _literals(node) -> list:
    out, stack = [], [node]
    while stack:
        nd = stack.pop()
        if nd[0] == "num":
            out.append(nd[1])
        elif nd[0] == "neg":
            stack.append(nd[1])
        else:
            stack.extend((nd[1], nd[2]))
    return out


def _evaluate(node) -> Fraction:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "neg":
        return -_evaluate(node[1])
    a, b = _evaluate(node[1]), _evaluate(node[2])
    if kind == "+":
        return a + b
    if kind == "-":
        return a - b
    if kind == "*":
        return a * b
    if b == 0:
        raise InvalidExpression("division by zero")
    return a / b


def evaluate_expression(text: str, allow_unary_minus: bool = ALLOW_UNARY_MINUS) -> Fraction:
    """Exact value of an expression string (raises InvalidExpression, incl. division by zero)."""
    return _evaluate(parse_expression(text, allow_unary_minus))


# --------------------------------------------------------------------------------------------------
# Ground truth, numbers, canonical values
# --------------------------------------------------------------------------------------------------


def _to_fraction(x: Any) -> Fraction | None:
    """A number from int/float/str/numpy scalar; None when it is not a finite number."""
    try:
        if isinstance(x, bool) or x is None:
            return None
        if isinstance(x, Fraction):
            return x
        if isinstance(x, int):
            return Fraction(x)
        if isinstance(x, str):
            s = x.strip()
            if not s or len(s) > 100:
                return None
            if "/" in s:
                num, den = s.split("/", 1)
                return Fraction(int(num.strip())) / Fraction(int(den.strip()))
            return Fraction(s)
        if hasattr(x, "item") and not isinstance(x, (list, tuple, dict)):  # numpy scalar / 0-d array
            x = x.item()
            if isinstance(x, (int, float, str)) and not isinstance(x, bool):
                return _to_fraction(x)
            return None
        if isinstance(x, float):
            if not math.isfinite(x):
                return None
            return Fraction(x)
    except (ValueError, ZeroDivisionError, TypeError, OverflowError):
        return None
    return None


def parse_ground_truth(ground_truth: Any) -> tuple[Fraction, list[Fraction], dict] | None:
    """(target, numbers, raw dict) from a dict or a JSON string; None when unusable."""
    gt = ground_truth
    if isinstance(gt, (bytes, bytearray)):
        gt = gt.decode("utf-8", "replace")
    if isinstance(gt, str):
        if len(gt) > 100_000:
            return None
        try:
            gt = json.loads(gt)
        except ValueError:
            return None
    if not isinstance(gt, dict):
        try:  # pandas / pyarrow struct-like mappings
            gt = dict(gt)
        except (TypeError, ValueError):
            return None
    target = _to_fraction(gt.get("target"))
    raw_numbers = gt.get("numbers", gt.get("nums"))
    if target is None or raw_numbers is None or isinstance(raw_numbers, (str, bytes, dict)):
        return None
    try:
        raw_numbers = list(raw_numbers)
    except TypeError:
        return None
    numbers = [_to_fraction(v) for v in raw_numbers]
    if not numbers or any(v is None for v in numbers):
        return None
    return target, numbers, gt


def canonical_value(value: Fraction | float | int) -> str:
    """Vote key of a numeric value, exact: an integer prints as "21", anything else as the reduced fraction
    "7/3" or "-5/2" (a float is read through its shortest repr, so 2.5 -> "5/2")."""
    if isinstance(value, float):
        value = Fraction(repr(value))
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator}"


def _close(a: Fraction, b: Fraction) -> bool:
    try:
        return abs(a - b) < Fraction(TOLERANCE)
    except (TypeError, ValueError):
        return False


def check_equation(text: str, target: Fraction, numbers: list, allow_unary_minus: bool = ALLOW_UNARY_MINUS):
    """Check an answer string. Returns (correct: bool, pred: str).

    pred is the exact value of the expression (``canonical_value``) when the answer is a valid equation (right
    characters, parses, uses exactly the given numbers, no division by zero, and an optional "= <number>"
    that equals the expression's value within TOLERANCE), else "". correct is that value being within
    TOLERANCE of the target: a function of pred alone, so two answers with one key always get one verdict.
    """
    if not isinstance(text, str):
        return False, ""
    text = text.strip()
    if not text or len(text) > MAX_EXPRESSION_CHARS:
        return False, ""
    rhs_value = None
    if "=" in text:
        parts = text.split("=")
        if len(parts) != 2:
            return False, ""
        text, rhs = parts[0].strip(), parts[1]
        m = _RHS_RE.match(rhs)
        if not m:
            return False, ""
        rhs_value = _to_fraction(m.group(1) if m.group(2) is None else f"{m.group(1)}/{m.group(2)}")
        if rhs_value is None:
            return False, ""
    if not text or not _ALLOWED_LHS_RE.match(text):
        return False, ""
    try:
        tree = parse_expression(text, allow_unary_minus)
    except InvalidExpression:
        return False, ""
    if sorted(_literals(tree)) != sorted(numbers):
        return False, ""
    try:
        value = _evaluate(tree)
    except InvalidExpression:
        return False, ""
    if rhs_value is not None and not _close(rhs_value, value):
        # a false equation ("(10 / (60 - 57)) * 80 = 266.67" is 800/3 = 266.67): no answer, whatever the
        # left side is worth, so it never shares a vote key with the right answer while scoring 0
        return False, ""
    return _close(value, target), canonical_value(value)


# --------------------------------------------------------------------------------------------------
# Response handling
# --------------------------------------------------------------------------------------------------


# The reference used the regexes below. Their lazy ``.*?`` is quadratic on adversarial text (e.g. 10^5
# "<answer>" openings with no closing tag take minutes), so the same predicates are computed with
# ``str.find`` in linear time; tests/reward_fns/test_countdown.py checks the equivalence on random strings.
#   think block:  re.search(r"<think>.*?</think>", text, re.DOTALL)
#   answer block: re.search(r"<answer>.*?</answer>", text, re.DOTALL)
#   full format:  re.match(r"^<think>.*?</think>\n<answer>.*?</answer>$", text, re.DOTALL)
#   last answer:  re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)[-1]
_MID = "</think>\n<answer>"


def _has_block(text: str, open_tag: str, close_tag: str) -> bool:
    i = text.find(open_tag)
    return i >= 0 and text.find(close_tag, i + len(open_tag)) >= 0


def _full_format(text: str) -> bool:
    if not text.startswith("<think>"):
        return False
    k = text.find(_MID, len("<think>"))
    if k < 0:
        return False
    # ``$`` matches at the very end, or just before one final newline.
    for end in (len(text), len(text) - 1):
        body = text[:end]
        if end < len(text) and text[end:] != "\n":
            continue
        if body.endswith("</answer>") and k + len(_MID) <= len(body) - len("</answer>"):
            return True
    return False


def format_reward(response: str) -> float:
    """The ES / RandOpt format component (on ``"<think>" + response``): 1.0, or 0.1*think + 0.5*answer."""
    text = "<think>" + response
    if _full_format(text):
        return 1.0
    reward = 0.0
    if _has_block(text, "<think>", "</think>"):
        reward += 0.1
    if _has_block(text, "<answer>", "</answer>"):
        reward += 0.5
    return reward


def extract_answer(response: str) -> str | None:
    """Content of the LAST <answer>...</answer> block (non-overlapping, leftmost-shortest), or None."""
    last, pos = None, 0
    while True:
        i = response.find("<answer>", pos)
        if i < 0:
            return last
        j = response.find("</answer>", i + len("<answer>"))
        if j < 0:
            return last
        last = response[i + len("<answer>") : j]
        pos = j + len("</answer>")


_FENCE_RE = re.compile(r"^\s*```[\w+-]*\s*$")


def lite_extract(response: str) -> str | None:
    """Short-answer mode: first non-empty, non-fence line, without backticks and trailing periods."""
    for line in response.splitlines():
        if _FENCE_RE.match(line):
            continue
        line = line.strip().lstrip("`").rstrip("`. \t")
        if line:
            return line
    return None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _is_lite(data_source: Any, gt: dict, kwargs: dict) -> bool:
    mode = kwargs.get("mode")
    if mode is not None:
        return str(mode) == "lite"
    return data_source == "countdown_lite" or gt.get("mode") == "lite"


def _zero() -> dict:
    return {"score": 0.0, "acc": 0.0, "pred": "", "format": 0.0}


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """verl reward entry point; see the module docstring. Never raises."""
    try:
        return _compute_score(data_source, solution_str, ground_truth, kwargs)
    except Exception:  # a scorer must never take the trainer down
        return _zero()


def _parses(text: str, allow_unary_minus: bool) -> bool:
    lhs = text.split("=")[0].strip()
    if not lhs or not _ALLOWED_LHS_RE.match(lhs):
        return False
    try:
        parse_expression(lhs, allow_unary_minus)
    except InvalidExpression:
        return False
    return True


def _compute_score(data_source, solution_str, ground_truth, kwargs) -> dict:
    parsed = parse_ground_truth(ground_truth)
    if parsed is None:  # a data error: no partial (format) credit that could hide it
        return _zero()
    if not isinstance(solution_str, str):
        solution_str = ""
    allow_unary = _truthy(kwargs.get("allow_unary_minus", ALLOW_UNARY_MINUS))
    target, numbers, gt = parsed
    lite = _is_lite(data_source, gt, kwargs)

    if lite:
        answer_text = lite_extract(solution_str)
        fmt = 1.0 if answer_text is not None and _parses(answer_text, allow_unary) else 0.0
    else:
        answer_text = extract_answer(solution_str)
        fmt = format_reward(solution_str)

    correct, pred = False, ""
    if answer_text is not None:
        correct, pred = check_equation(answer_text, target, numbers, allow_unary)
    answer = 1.0 if correct else 0.0
    score = answer if lite else 0.1 * fmt + answer
    return {"score": float(score), "acc": answer, "pred": pred, "format": float(fmt)}
