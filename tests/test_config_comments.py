"""Our yaml follows verl's rule for its own config files: a comment line directly above every leaf key. The typed
nodes (randopt.*, es.*) keep their defaults in one place: the yaml equals the dataclass its `_target_` names."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[1] / "randopt_verl" / "config"
YAMLS = sorted(CONFIG.rglob("*.yaml"))
KEY = re.compile(r"^(\s*)([A-Za-z_][\w.]*):(.*)$")


def leaf_keys_without_comment(text: str) -> list[str]:
    """Keys whose value is a scalar, a list or an inline mapping (not a nested block) and whose line above is not a
    comment."""
    lines = text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        m = KEY.match(line)
        if not m:
            continue
        indent, key, value = len(m.group(1)), m.group(2), m.group(3).split(" #", 1)[0].strip()
        if not value:  # a block follows: a nested mapping is no leaf, a block list is
            nxt = next((ln for ln in lines[i + 1:] if ln.strip() and not ln.strip().startswith("#")), "")
            if not nxt.strip().startswith("- ") and len(nxt) - len(nxt.lstrip()) > indent:
                continue
        above = lines[i - 1].strip() if i else ""
        if not above.startswith("#"):
            missing.append(f"line {i + 1}: {key}")
    return missing


def test_the_rule_finds_a_leaf_without_comment():
    text = "a:\n  # documented\n  b: 1\n  c: 2\nd:\n  - x\n# documented\ne:\n  f: {x: 1}\n"
    assert leaf_keys_without_comment(text) == ["line 4: c", "line 5: d", "line 9: f"]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.relative_to(CONFIG).as_posix())
def test_every_leaf_key_has_a_comment_above_it(path):
    assert leaf_keys_without_comment(path.read_text()) == []


def _yaml_node(name: str) -> dict:
    return yaml.safe_load((CONFIG / "trainer" / f"{name}.yaml").read_text())[name]


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.name == "_target_":
            continue
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = _defaults(type(value)) if dataclasses.is_dataclass(value) else value
    return out


@pytest.mark.parametrize("name", ["randopt", "es"])
def test_yaml_defaults_are_the_dataclass_defaults(name):
    from hydra.utils import get_class

    node = _yaml_node(name)
    cls = get_class(node.pop("_target_"))
    assert cls.__module__ == "randopt_verl.config.schema"
    assert node == _defaults(cls)


@pytest.mark.parametrize("name", ["randopt", "es"])
def test_every_typed_key_is_documented_in_the_dataclass(name):
    from hydra.utils import get_class

    def walk(cls):
        for f in dataclasses.fields(cls):
            if f.name == "_target_":
                continue
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory()):
                walk(type(f.default_factory()))

    walk(get_class(_yaml_node(name)["_target_"]))


def test_every_randopt_and_es_key_is_read_by_its_trainer():
    """Keys no code reads are removed: each typed key is named by the code that runs the search (the trainers and
    what they call), not only by the config and its checks."""
    from randopt_verl.config.schema import ESConfig, RandOptConfig, known_keys

    package = Path(__file__).resolve().parents[1] / "randopt_verl"
    checks_only = {"config", "validate.py", "preflight"}
    source = "".join(p.read_text() for p in package.rglob("*.py")
                     if not checks_only & set(p.relative_to(package).parts))
    for cls, name in ((RandOptConfig, "randopt"), (ESConfig, "es")):
        for key in known_keys(cls, name):
            leaf = key.split(".")[-1]
            parent = key.split(".")[-2]
            assert re.search(rf"\b{leaf}\b", source) or (parent == "param_filter" and "param_filter" in source), key
