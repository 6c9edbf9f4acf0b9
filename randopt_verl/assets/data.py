"""Datasets in verl's parquet format: a seeded Countdown generator, a two-number "countdown_lite" generator
for the CPU demo, and converters from local GSM8K / MATH / Countdown files (json, jsonl, parquet).

Every row has verl's keys (``verl.utils.dataset.rl_dataset.RLHFDataset`` reads them):
``data_source`` (str, picks the scorer), ``prompt`` (chat messages ``[{"role": "user", "content": ...}]``;
the agent loop applies the chat template), ``ability``, ``reward_model`` ``{"style": "rule",
"ground_truth": ...}`` and ``extra_info`` ``{"split", "index", ...}``. Countdown ground truth is stored as a
JSON string ``{"target": t, "numbers": [...]}`` (parquet structs and lists come back as numpy arrays or
dicts with missing keys, a JSON string round-trips exactly); ``reward_fns/countdown.py`` accepts it.

``write_splits`` writes ``train.parquet`` and ``test.parquet`` for verl's ``data.train_files`` and
``data.val_files``. The thin CLIs are ``scripts/make_countdown.py`` and ``scripts/convert_dataset.py``.
Pure standard library plus pyarrow; no network.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
from fractions import Fraction
from typing import Any, Iterable, Sequence

__all__ = [
    "COUNTDOWN_PROMPT",
    "COUNTDOWN_LITE_PROMPT",
    "GSM8K_INSTRUCTION",
    "MATH_INSTRUCTION",
    "generate_countdown",
    "generate_countdown_lite",
    "countdown_row",
    "read_records",
    "convert_gsm8k",
    "convert_math",
    "convert_countdown",
    "CONVERTERS",
    "write_parquet",
    "write_splits",
]

# TinyZero / ES style: reasoning in <think></think>, final equation in <answer></answer>.
# Fields: {numbers} (e.g. "[3, 8, 1]"), {target}.
COUNTDOWN_PROMPT = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic arithmetic "
    "operations (+, -, *, /) and each number can only be used once. Show your reasoning in <think> </think> "
    "tags. And return the final equation in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
)
# Short-answer prompt for tiny models. Fields: {a}, {b}, {numbers} ("16 and 5"), {target}, {ops} ("+ - *").
COUNTDOWN_LITE_PROMPT = (
    "Using the numbers {a} and {b}, each exactly once, and one of {ops}, make {target}. "
    "Answer with only the expression."
)
# verl's own examples/data_preprocess/gsm8k.py and math_dataset.py instructions.
GSM8K_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
MATH_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_NON_INTEGER_DENOMINATOR = 10_000  # non-integer targets must have at most 4 decimals (exactly printable)


# --------------------------------------------------------------------------------------------------
# Countdown generator
# --------------------------------------------------------------------------------------------------


def _combine(op: str, left: tuple, right: tuple) -> tuple | None:
    """(value, text, precedence) of ``left op right`` with minimal parentheses; None on division by 0."""
    lv, lt, lp = left
    rv, rt, rp = right
    if op == "+":
        value = lv + rv
    elif op == "-":
        value = lv - rv
    elif op == "*":
        value = lv * rv
    else:
        if rv == 0:
            return None
        value = lv / rv
    prec = _PREC[op]
    if lp < prec:
        lt = f"({lt})"
    if rp < prec or (rp == prec and op in "-/"):
        rt = f"({rt})"
    return value, f"{lt} {op} {rt}", prec


def _random_expression(rng: random.Random, numbers: Sequence[int], ops: str) -> tuple | None:
    """A random binary expression tree using every number once: (value, text)."""
    pool = [(Fraction(x), str(x), 3) for x in numbers]
    rng.shuffle(pool)
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        node = _combine(rng.choice(ops), pool[i], pool[j])
        if node is None:
            return None
        pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [node]
    return pool[0][0], pool[0][1]


def _target_ok(value: Fraction, allow_negative: bool, allow_non_integer: bool, max_target: int) -> bool:
    if value.denominator != 1:
        if not allow_non_integer or _NON_INTEGER_DENOMINATOR % value.denominator != 0:
            return False
    if value < 0 and not allow_negative:
        return False
    if value == 0:
        return False
    return abs(value) <= max_target


def _json_number(value: Fraction) -> int | float:
    return int(value) if value.denominator == 1 else float(value)


def _display_number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def countdown_row(
    numbers: Sequence[int],
    target: int | float,
    index: int,
    template: str = COUNTDOWN_PROMPT,
    data_source: str = "countdown",
    split: str = "train",
    extra: dict | None = None,
) -> dict:
    """One verl row for a Countdown item (ground truth as a JSON string)."""
    numbers = [int(x) for x in numbers]
    gt: dict[str, Any] = {"target": target, "numbers": numbers}
    prompt = template.format(numbers=str(numbers), target=_display_number(target))
    extra_info = {"split": split, "index": int(index)}
    extra_info.update(extra or {})
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": prompt}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": json.dumps(gt)},
        "extra_info": extra_info,
    }


def generate_countdown(
    n: int,
    seed: int = 0,
    min_numbers: int = 3,
    max_numbers: int = 4,
    low: int = 1,
    high: int = 99,
    max_target: int = 100,
    allow_negative: bool = False,
    allow_non_integer: bool = False,
    ops: str = "+-*/",
    trees_per_set: int = 32,
    template: str = COUNTDOWN_PROMPT,
    data_source: str = "countdown",
    split: str = "train",
) -> list[dict]:
    """``n`` Countdown rows, each target reachable by construction.

    For each item: draw 3..4 numbers in [low, high], build ``trees_per_set`` random binary expression trees
    over all of them with exact rational arithmetic, keep the values that make a sensible target
    (non-zero, |target| <= max_target (default 100, TinyZero-like), an integer unless
    ``allow_non_integer`` (then at most 4 decimals, so the prompt shows it exactly), non-negative unless
    ``allow_negative``) and pick one of those distinct values uniformly; a number set with none is
    redrawn. The generating expression is kept in ``extra_info["solution"]``. One
    ``random.Random(seed)`` drives everything: same arguments, same rows.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 1 <= min_numbers <= max_numbers:
        raise ValueError(f"need 1 <= min_numbers <= max_numbers, got {min_numbers}, {max_numbers}")
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high (the parser reads non-negative integer literals), got {low}, {high}")
    if not ops or set(ops) - set("+-*/"):
        raise ValueError(f"ops must be a non-empty subset of '+-*/', got {ops!r}")
    if trees_per_set < 1 or max_target < 1:
        raise ValueError(f"need trees_per_set >= 1 and max_target >= 1, got {trees_per_set}, {max_target}")
    rng = random.Random(seed)
    rows: list[dict] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 1000 * (n + 1):
            raise RuntimeError("could not generate reachable targets with these settings (is max_target too small?)")
        numbers = [rng.randint(low, high) for _ in range(rng.randint(min_numbers, max_numbers))]
        candidates: dict[Fraction, str] = {}
        for _ in range(trees_per_set):
            expr = _random_expression(rng, numbers, ops)
            if expr is not None and _target_ok(expr[0], allow_negative, allow_non_integer, max_target):
                candidates.setdefault(expr[0], expr[1])
        if not candidates:
            continue
        # uniform over the distinct reachable values found, so easy values that many trees reach (the
        # plain sum, say) are not over-represented
        value = rng.choice(sorted(candidates))
        rows.append(
            countdown_row(
                numbers, _json_number(value), len(rows), template, data_source, split,
                extra={"solution": candidates[value]},
            )
        )
    return rows


def generate_countdown_lite(
    n: int,
    seed: int = 0,
    low: int = 1,
    high: int = 20,
    ops: str = "+-*",
    allow_negative: bool = False,
    template: str = COUNTDOWN_LITE_PROMPT,
    data_source: str = "countdown_lite",
    split: str = "train",
    distinct: bool = False,
) -> list[dict]:
    """``n`` two-number items ``a op b`` for tiny models (scored by reward_fns/countdown.py's lite mode).

    ``distinct=True`` draws every problem (a, b, target) at most once (2 + 2 and 2 * 2 are one prompt), so a split taken from the rows has no repeated
    prompt and two splits share none (an accuracy over n prompts is then over n different problems); it raises
    before drawing when fewer than ``n`` distinct problems exist in the range. The default keeps the draws of
    earlier versions (independent, repeats possible), so existing data sets are unchanged.

    The template is a parameter (fields {a}, {b}, {numbers}, {target}, {ops}) so the demo's wording can be
    tuned without touching this code. With "-" and ``allow_negative=False`` the larger number comes first.
    Ground truth: JSON ``{"target", "numbers": [a, b], "mode": "lite"}``; solution in extra_info.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got {low}, {high}")
    if not ops or set(ops) - set("+-*"):
        raise ValueError(f"ops must be a non-empty subset of '+-*', got {ops!r}")
    rng = random.Random(seed)
    ops_text = " ".join(ops)
    if distinct:
        available = len(_lite_problems(low, high, ops, allow_negative))
        if n > available:
            raise ValueError(f"only {available} distinct countdown-lite problems exist with numbers {low}..{high} "
                             f"and ops {ops!r}; ask for at most that many or widen the range (high)")
    seen: set[tuple[int, int, int]] = set()
    rows = []
    for i in range(n):
        while True:
            a, b = rng.randint(low, high), rng.randint(low, high)
            op = rng.choice(ops)
            if op == "-" and a < b and not allow_negative:
                a, b = b, a
            target = _apply(a, op, b)
            if not distinct or (a, b, target) not in seen:
                break
        seen.add((a, b, target))
        prompt = template.format(a=a, b=b, numbers=f"{a} and {b}", target=target, ops=ops_text)
        gt = {"target": target, "numbers": [a, b], "mode": "lite"}
        rows.append(
            {
                "data_source": data_source,
                "prompt": [{"role": "user", "content": prompt}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": json.dumps(gt)},
                "extra_info": {"split": split, "index": i, "solution": f"{a} {op} {b}"},
            }
        )
    return rows


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _lite_problems(low: int, high: int, ops: str, allow_negative: bool) -> set[tuple[int, int, int]]:
    """Every problem (a, b, target) generate_countdown_lite can draw."""
    out = set()
    for a in range(low, high + 1):
        for b in range(low, high + 1):
            for op in ops:
                x, y = (max(a, b), min(a, b)) if op == "-" and not allow_negative else (a, b)
                out.add((x, y, _apply(x, op, y)))
    return out


# --------------------------------------------------------------------------------------------------
# Reading local files
# --------------------------------------------------------------------------------------------------


def read_records(path: str | os.PathLike) -> list[dict]:
    """Records (dicts) from a .json (a list of objects, a column dict, or JSON lines), .jsonl or .parquet file."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if ext not in (".json", ".jsonl"):
        raise ValueError(f"unsupported file type {ext!r} for {path}: use .json, .jsonl or .parquet")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if ext == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # maybe JSON lines under a .json name
        if data is not None:
            return _records_from_json(data, path)
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return records


def _records_from_json(data: Any, path: str) -> list[dict]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        values = list(data.values())
        if values and all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
            keys = list(data)
            if all(isinstance(x, dict) for x in values[0]) and len(keys) == 1:
                return values[0]  # {"train": [{...}, ...]}
            return [dict(zip(keys, row)) for row in zip(*values)]  # column-oriented
    raise ValueError(f"{path}: expected a JSON list of objects, a dict of equal-length columns, or JSON lines")


def _columns(records: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for rec in records[:100]:
        if isinstance(rec, dict):
            seen.update(dict.fromkeys(rec))
    return list(seen)


def _require(records: list[dict], kind: str, source: str, *names: str | tuple[str, ...]) -> dict[str, str]:
    """Check the columns; return {wanted: actual column name}. Alternatives are given as tuples."""
    if not records:
        raise ValueError(f"{kind} converter: {source} holds no records")
    found = _columns(records)
    chosen = {}
    for name in names:
        options = name if isinstance(name, tuple) else (name,)
        hit = next((o for o in options if o in found), None)
        if hit is None:
            wanted = " or ".join(repr(o) for o in options)
            raise ValueError(f"{kind} converter: missing column {wanted} in {source}; columns found: {found}")
        chosen[options[0]] = hit
    return chosen


def _field(rec: Any, column: str, kind: str, index: int, source: str) -> Any:
    if not isinstance(rec, dict):
        raise ValueError(f"{kind} converter: record {index} of {source} is not an object: {rec!r:.80}")
    value = rec.get(column)
    if value is None:
        raise ValueError(f"{kind} converter: record {index} of {source} has no value for column {column!r}")
    return value


def _as_records(data: str | os.PathLike | Iterable[dict]) -> tuple[list[dict], str]:
    if isinstance(data, (str, os.PathLike)):
        return read_records(data), os.fspath(data)
    return list(data), "the given records"


# --------------------------------------------------------------------------------------------------
# Converters
# --------------------------------------------------------------------------------------------------

_HASH_ANSWER_RE = re.compile(r"####\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")


def convert_gsm8k(
    data: str | os.PathLike | Iterable[dict],
    split: str = "train",
    instruction: str = GSM8K_INSTRUCTION,
    data_source: str = "openai/gsm8k",
) -> list[dict]:
    """GSM8K records with ``question`` and ``answer`` ("... #### 72") -> verl rows.

    ground_truth = the number after "####" without thousands separators (a bare numeric answer is taken
    as is). ``data_source`` defaults to "openai/gsm8k", which stock verl also scores (strictly).
    """
    records, source = _as_records(data)
    _require(records, "GSM8K", source, "question", "answer")
    rows = []
    for i, rec in enumerate(records):
        question = str(_field(rec, "question", "GSM8K", i, source))
        answer = str(_field(rec, "answer", "GSM8K", i, source))
        m = _HASH_ANSWER_RE.findall(answer)
        if m:
            gt = m[-1].replace(",", "")
        elif re.fullmatch(r"\s*-?[0-9][0-9,]*(?:\.[0-9]+)?\s*", answer):
            gt = answer.strip().replace(",", "")
        else:
            raise ValueError(f"GSM8K converter: record {i} of {source}: no '#### <number>' in answer {answer!r:.120}")
        content = f"{question} {instruction}".strip() if instruction else question
        rows.append(
            {
                "data_source": data_source,
                "prompt": [{"role": "user", "content": content}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": gt},
                "extra_info": {"split": split, "index": i, "question": question, "answer": answer},
            }
        )
    return rows


def _last_boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start)
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def convert_math(
    data: str | os.PathLike | Iterable[dict],
    split: str = "train",
    instruction: str = MATH_INSTRUCTION,
    data_source: str = "lighteval/MATH",
) -> list[dict]:
    """MATH records with ``problem`` and either ``answer`` or ``solution`` (with a \\boxed{}) -> verl rows.

    ground_truth = the ``answer`` column when present, else the last \\boxed{} of ``solution``.
    ``data_source`` defaults to "lighteval/MATH", which stock verl also scores (its math_reward).
    """
    records, source = _as_records(data)
    _require(records, "MATH", source, "problem", ("answer", "solution"))
    rows = []
    for i, rec in enumerate(records):
        problem = str(_field(rec, "problem", "MATH", i, source))
        answer = rec.get("answer") if isinstance(rec, dict) else None
        if answer is None or str(answer).strip() == "":
            solution = str(_field(rec, "solution", "MATH", i, source))
            answer = _last_boxed(solution)
            if answer is None:
                raise ValueError(f"MATH converter: record {i} of {source}: no 'answer' and no \\boxed{{}} in 'solution'")
        content = f"{problem} {instruction}".strip() if instruction else problem
        extra = {"split": split, "index": i}
        for key in ("level", "type", "subject", "unique_id"):
            if isinstance(rec.get(key), (str, int)):
                extra[key] = str(rec[key])
        rows.append(
            {
                "data_source": data_source,
                "prompt": [{"role": "user", "content": content}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(answer).strip()},
                "extra_info": extra,
            }
        )
    _same_extra_keys(rows)
    return rows


def _same_extra_keys(rows: list[dict]) -> None:
    """Parquet needs one struct schema: give every row the union of extra_info keys ("" when missing)."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r["extra_info"]))
    for r in rows:
        for k in keys:
            r["extra_info"].setdefault(k, "")


def _plain_number(value: Any, what: str) -> int | float:
    if hasattr(value, "item") and not isinstance(value, (list, tuple)):
        value = value.item()
    if isinstance(value, bool):
        raise ValueError(f"{what} is not a number: {value!r}")
    if isinstance(value, str):
        s = value.strip()
        try:
            value = int(s)
        except ValueError:
            try:
                value = float(s)
            except ValueError:
                raise ValueError(f"{what} is not a number: {value!r}") from None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{what} is not a finite number: {value!r}")
        return int(value) if value.is_integer() else value
    if isinstance(value, int):
        return value
    raise ValueError(f"{what} is not a number: {value!r}")


def convert_countdown(
    data: str | os.PathLike | Iterable[dict],
    split: str = "train",
    template: str = COUNTDOWN_PROMPT,
    data_source: str = "countdown",
) -> list[dict]:
    """Countdown records with ``target`` and ``nums`` (TinyZero's HF dataset) or ``numbers`` -> verl rows.

    Targets may be negative or non-integer and are kept as they are (never dropped). Numbers must be
    integers (the scorer reads integer literals).
    """
    records, source = _as_records(data)
    cols = _require(records, "Countdown", source, "target", ("nums", "numbers"))
    num_col = cols["nums"]
    rows = []
    for i, rec in enumerate(records):
        target = _plain_number(_field(rec, "target", "Countdown", i, source), f"record {i} target")
        raw = _field(rec, num_col, "Countdown", i, source)
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                raise ValueError(f"Countdown converter: record {i} of {source}: {num_col!r} is not a list: {raw!r}") from None
        try:
            numbers = [_plain_number(x, f"record {i} number") for x in list(raw)]
        except TypeError:
            raise ValueError(f"Countdown converter: record {i} of {source}: {num_col!r} is not a list: {raw!r}") from None
        if not numbers or any(not isinstance(x, int) or x < 0 for x in numbers):
            raise ValueError(f"Countdown converter: record {i} of {source}: numbers must be non-negative integers, got {raw!r}")
        rows.append(countdown_row(numbers, target, i, template, data_source, split))
    return rows


CONVERTERS = {"gsm8k": convert_gsm8k, "math": convert_math, "countdown": convert_countdown}


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def write_parquet(rows: list[dict], path: str | os.PathLike) -> str:
    """Write rows to one parquet file (pyarrow; deterministic for the same rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError(f"refusing to write an empty parquet file to {path}")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_splits(rows: list[dict], out_dir: str | os.PathLike, n_train: int, n_val: int | None = None) -> dict:
    """First ``n_train`` rows -> ``out_dir/train.parquet``, the next ``n_val`` (default: all the rest) ->
    ``out_dir/test.parquet``; ``extra_info["split"]`` is set to "train" / "test" (indices are kept).
    Returns ``{"train": path, "test": path, "n_train": .., "n_val": ..}``.
    """
    if n_val is None:
        n_val = len(rows) - n_train
    if n_train < 1 or n_val < 1:
        raise ValueError(f"need n_train >= 1 and n_val >= 1, got n_train={n_train}, n_val={n_val} ({len(rows)} rows)")
    if n_train + n_val > len(rows):
        raise ValueError(f"n_train + n_val = {n_train + n_val} exceeds the {len(rows)} rows available")
    out = {}
    for name, part in (("train", rows[:n_train]), ("test", rows[n_train : n_train + n_val])):
        part = copy.deepcopy(part)
        for r in part:
            r.setdefault("extra_info", {})["split"] = name
        out[name] = write_parquet(part, os.path.join(os.fspath(out_dir), f"{name}.parquet"))
    out["n_train"], out["n_val"] = n_train, n_val
    return out
