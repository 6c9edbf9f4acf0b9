"""Every key of the typed config (randopt.*, es.*) is read by the code that runs, as a typed attribute.

The trainers read their node as its dataclass (`SearchTrainer.settings`, config/schema.py), so a key's reads are
attribute accesses on an expression whose config class is known. `reads()` finds them statically: it follows
`self.settings` (typed by the class annotation), names assigned from typed expressions (`ro = self.settings`,
`c = ro.controls`) and parameters annotated with a config class, and records each `<typed>.<field>` it sees. The
checks in `__post_init__` / `check` are not uses and do not count; neither does a key's name anywhere else (a
comment, a string, a DictConfig read in a validator).

`test_removing_a_keys_reads_is_caught` is the proof that the check can fail: for every key it blanks that key's
reads in the source and asserts the checker then reports the key unread.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
from pathlib import Path
from typing import Optional

import pytest

from randopt_verl.config import schema

PACKAGE = Path(schema.__file__).resolve().parents[1]
CONFIG_CLASSES = {c.__name__: c for c in (schema.RandOptConfig, schema.ESConfig, schema.ControlsConfig,
                                          schema.SelectionConfig, schema.ConsolidateConfig,
                                          schema.ParamFilterConfig)}
CHECKS = {"__post_init__", "check"}  # a config class's own checks: not uses


def _fields(cls_name: str) -> dict[str, Optional[str]]:
    """field -> the config class of a nested node (None for a leaf)."""
    out = {}
    for f in dataclasses.fields(CONFIG_CLASSES[cls_name]):
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        out[f.name] = type(sub).__name__ if dataclasses.is_dataclass(sub) else None
    return out


FIELDS = {name: _fields(name) for name in CONFIG_CLASSES}


def keys() -> list[tuple[str, str, str]]:
    """(dotted key, config class, field) for every leaf key of randopt.* and es.*."""
    out = []

    def walk(cls_name: str, prefix: str) -> None:
        for field, sub in FIELDS[cls_name].items():
            if field == "_target_":
                continue
            if sub:
                walk(sub, f"{prefix}.{field}")
            else:
                out.append((f"{prefix}.{field}", cls_name, field))

    walk("RandOptConfig", "randopt")
    walk("ESConfig", "es")
    return out


def _classes_named(annotation: Optional[ast.AST]) -> set[str]:
    """Config classes an annotation names (``schema.RandOptConfig``, ``Union[...]``, a string annotation)."""
    if annotation is None:
        return set()
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return set()
    names = set()
    for node in ast.walk(annotation):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
    return names & set(CONFIG_CLASSES)


Read = tuple[str, int, int, int, int]  # file, line, column, end line, end column of `<typed>.<field>`


def reads(sources: dict[str, str]) -> dict[tuple[str, str], list[Read]]:
    """(config class, field) -> where the code reads it, over ``{path: source}``."""
    # class attribute annotations (``settings: schema.RandOptConfig``), by class and, as a fallback, by attribute name
    by_class: dict[str, dict[str, frozenset[str]]] = {}
    by_attr: dict[str, set[str]] = {}
    for text in sources.values():
        for node in ast.walk(_parse(text)):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                        named = _classes_named(stmt.annotation)
                        if named:
                            by_class.setdefault(node.name, {})[stmt.target.id] = frozenset(named)
                            by_attr.setdefault(stmt.target.id, set()).update(named)
    annotations = (tuple(sorted((c, tuple(sorted((a, tuple(sorted(v))) for a, v in attrs.items())))
                                for c, attrs in by_class.items())),
                   tuple(sorted((a, tuple(sorted(v))) for a, v in by_attr.items())))
    found: dict[tuple[str, str], list[Read]] = {}
    for path, text in sources.items():
        for key, spans in _file_reads(path, text, annotations):
            found.setdefault(key, []).extend(spans)
    return found


@functools.lru_cache(maxsize=None)
def _file_reads(path: str, text: str, annotations) -> tuple:
    by_class = {c: {a: set(v) for a, v in attrs} for c, attrs in annotations[0]}
    by_attr = {a: set(v) for a, v in annotations[1]}
    found: dict[tuple[str, str], list[Read]] = {}

    def scan(func: ast.AST, owner: Optional[str]) -> None:
        env: dict[str, set[str]] = {}
        if owner in CONFIG_CLASSES:
            env["self"] = {owner}
        for node in ast.walk(func):
            if isinstance(node, ast.arg):
                named = _classes_named(node.annotation)
                if named:
                    env[node.arg] = named

        def typeof(expr: ast.AST) -> set[str]:
            if isinstance(expr, ast.Name):
                return env.get(expr.id, set())
            if isinstance(expr, ast.Attribute):
                if isinstance(expr.value, ast.Name) and expr.value.id == "self" and "self" not in env:
                    return by_class.get(owner or "", {}).get(expr.attr) or by_attr.get(expr.attr, set())
                return {FIELDS[c][expr.attr] for c in typeof(expr.value) if FIELDS[c].get(expr.attr)}
            return set()

        # names bound to typed expressions, in source order (twice: a later alias of an alias)
        assigns = [n for n in ast.walk(func) if isinstance(n, ast.Assign) and len(n.targets) == 1
                   and isinstance(n.targets[0], ast.Name)]
        for _ in range(2):
            for a in sorted(assigns, key=lambda n: (n.lineno, n.col_offset)):
                t = typeof(a.value)
                if t:
                    env[a.targets[0].id] = t
        for node in ast.walk(func):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                for c in typeof(node.value):
                    if node.attr in FIELDS[c]:
                        found.setdefault((c, node.attr), []).append(
                            (path, node.lineno, node.col_offset, node.end_lineno, node.end_col_offset))

    def visit(node: ast.AST, owner: Optional[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, child.name)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not (owner in CONFIG_CLASSES and child.name in CHECKS):
                    scan(child, owner)
            else:
                visit(child, owner)

    visit(_parse(text), None)
    return tuple(found.items())


@functools.lru_cache(maxsize=None)
def _parse(text: str) -> ast.Module:
    return ast.parse(text)


@functools.lru_cache(maxsize=1)
def _package_sources() -> tuple[tuple[str, str], ...]:
    return tuple((str(p.relative_to(PACKAGE.parent)), p.read_text()) for p in sorted(PACKAGE.rglob("*.py")))


def package_sources() -> dict[str, str]:
    return dict(_package_sources())


def unread(sources: dict[str, str]) -> list[str]:
    found = reads(sources)
    return [key for key, cls, field in keys() if not found.get((cls, field))]


def test_every_typed_key_is_read_by_the_code_that_runs():
    assert unread(package_sources()) == []


def _blank(source: str, spans: list[Read]) -> str:
    """``source`` with each span (one line each) replaced by ``None``."""
    lines = source.splitlines(keepends=True)
    for _, line, col, end_line, end_col in sorted(spans, key=lambda s: (s[1], s[2]), reverse=True):
        assert line == end_line
        text = lines[line - 1]
        lines[line - 1] = text[:col] + "None" + text[end_col:]
    return "".join(lines)


@pytest.mark.parametrize("key, cls, field", keys(), ids=[k for k, _, _ in keys()])
def test_removing_a_keys_reads_is_caught(key, cls, field):
    sources = package_sources()
    spans = reads(sources)[(cls, field)]
    for path in {s[0] for s in spans}:
        sources[path] = _blank(sources[path], [s for s in spans if s[0] == path])
    assert key in unread(sources)


def test_the_checker_ignores_words_and_checks():
    src = {"m.py": (
        "class RandOptConfig:\n"
        "    def __post_init__(self):\n"
        "        self.plots  # a check, not a use\n"
        "def f(config, ro: 'RandOptConfig'):\n"
        "    config.randopt.plots  # a DictConfig read: untyped\n"
        "    x = 'plots'\n"
        "    c = ro.controls\n"
        "    return c.temperature\n")}
    found = reads(src)
    assert ("RandOptConfig", "plots") not in found
    assert [s[1] for s in found[("ControlsConfig", "temperature")]] == [8]
