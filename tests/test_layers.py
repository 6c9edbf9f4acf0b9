"""docs/ARCHITECTURE.md's layer table holds: every module belongs to one layer, imports only from the layers its row
allows, and no import circle exists between the package's modules.

The table is read from the document itself (its "may import" column), so the rules a reader finds there are the
ones tested. Imports are read from the source (module level and inside functions alike): a lazy import is still an
arrow. tests/core/test_layers.py checks the core's other rule at run time (it imports without verl and Ray).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "randopt_verl"
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def layer_table(text: str) -> dict[str, tuple[list[str], set[str]]]:
    """layer -> (its paths under randopt_verl/, the layers it may import), from the table under "## Layers"."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if set(cells[0]) <= {"-", " "}:
            continue
        layer, paths = cells[0], re.findall(r"`([^`]+)`", cells[1])
        allowed = {layer} | set(re.findall(r"`(\w+)`", cells[2]))
        table[layer] = (paths, allowed)
    return table


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (``from a import b`` names module a.b when it is one, else a)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def layer_of(name: str, table) -> str:
    rel = name.split(".", 1)[1] if "." in name else ""
    rel_path = rel.replace(".", "/")
    matches = []
    for layer, (paths, _) in table.items():
        for p in paths:
            p = p.removeprefix("randopt_verl/")
            if p.endswith("/") and (rel_path + "/").startswith(p):
                matches.append((len(p), layer))
            elif p.endswith(".py") and rel_path == p[:-3]:
                matches.append((len(p), layer))
    assert matches, f"{name} is in no layer of docs/ARCHITECTURE.md's layer table"
    return max(matches)[1]


@pytest.fixture(scope="module")
def graph():
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


@pytest.fixture(scope="module")
def table():
    return layer_table(DOC.read_text())


def test_the_table_is_read(table):
    assert {"core", "config", "cpu", "trainers", "tools"} <= set(table)
    assert table["core"][1] == {"core"}


def test_every_import_follows_the_layer_table(graph, table):
    wrong = []
    for name, targets in graph.items():
        if name == "randopt_verl":
            continue
        mine = layer_of(name, table)
        for t in sorted(targets):
            if t == "randopt_verl":  # the package itself holds only its version
                continue
            theirs = layer_of(t, table)
            if theirs not in table[mine][1]:
                wrong.append(f"{name} ({mine}) imports {t} ({theirs})")
    assert wrong == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle(graph):
    assert cycles(graph) == []


def test_the_checks_can_fail(table):
    # a circle and an upward arrow in a made-up graph are found
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("randopt_verl.trainers.randopt", table) == "trainers"
    assert "tools" not in table["trainers"][1]
