"""Docs that stay true: every repository path and `randopt_verl.*` module named in code, docs, configs and
recipes exists. A rename that leaves a stale name anywhere fails here instead of misleading a reader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("randopt_verl", "recipes", "reward_fns", "tests", "scripts", "docs", "hydra_plugins", ".ci")
# files whose text is scanned: everything a reader or a user's shell sees
SCANNED = ["README.md", "pyproject.toml", ".ci/run", *[str(p.relative_to(ROOT)) for d in TOP if (ROOT / d).is_dir()
           for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix in {".py", ".sh", ".md", ".yaml", ".toml", ""}
           and "__pycache__" not in p.parts and p.name != "test_repo_paths.py"]]
PATH_RE = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*)" % "|".join(re.escape(t) for t in TOP))
MODULE_RE = re.compile(r"(?<![\w./-])(randopt_verl(?:\.\w+)+)(?![\w/])")
# a path whose last part has one of these endings, or that ends in "/", names a file or folder that must exist;
# anything else (run outputs such as recipes/x/runs/..., data/...) is produced at run time
CHECKED_SUFFIXES = {".py", ".sh", ".md", ".yaml", ".png", ".toml", ".txt"}


def _named_paths(text: str):
    for m in PATH_RE.finditer(text):
        p = m.group(1).rstrip(".,:;")
        if any(c in p for c in "{}*<>$") or "/runs" in p or "/outputs" in p:
            continue
        if p.endswith("/") or Path(p).suffix in CHECKED_SUFFIXES:
            yield p


def _module_exists(dotted: str) -> bool:
    parts = dotted.split(".")
    here = ROOT / parts[0]
    for i, part in enumerate(parts[1:], start=1):
        if (here / part).is_dir():
            here = here / part
            continue
        if (here / f"{part}.py").is_file():
            return True  # what follows names something inside the module (a class, a function)
        init = here / "__init__.py"
        # a name the package itself defines or re-exports
        return init.is_file() and re.search(rf"\b{re.escape(part)}\b", init.read_text()) is not None
    return True


def test_the_scan_sees_the_repository():
    # guards the test itself: an empty scan would pass whatever the docs say
    assert "README.md" in SCANNED and "docs/ARCHITECTURE.md" in SCANNED
    assert any(s.startswith("randopt_verl/core/") for s in SCANNED)
    assert list(_named_paths("see randopt_verl/core/noise.py and scripts/x.py.")) == [
        "randopt_verl/core/noise.py", "scripts/x.py"]
    assert not _module_exists("randopt_verl.no_such_module")


@pytest.mark.parametrize("rel", SCANNED)
def test_every_named_path_exists(rel):
    text = (ROOT / rel).read_text(errors="replace")
    missing = sorted({p for p in _named_paths(text) if not (ROOT / p).exists()})
    assert not missing, f"{rel} names paths that do not exist: {missing}"


@pytest.mark.parametrize("rel", SCANNED)
def test_every_named_module_exists(rel):
    text = (ROOT / rel).read_text(errors="replace")
    # private and dunder names (`randopt_verl.core.__file__`, a module name made up for a test) are code, not
    # references a reader follows
    named = {m for m in MODULE_RE.findall(text) if not any(p.startswith("_") for p in m.split("."))}
    missing = sorted(m for m in named if not _module_exists(m))
    assert not missing, f"{rel} names modules that do not exist: {missing}"


# tests may name them to check for them (tests/test_preflight.py does)
@pytest.mark.parametrize("rel", [s for s in SCANNED if not s.startswith("tests/")])
def test_nothing_cites_files_outside_the_repository(rel):
    # the design notes the project started from are not shipped: what the code relies on is in ARCHITECTURE.md
    text = (ROOT / rel).read_text(errors="replace")
    assert not re.search(r"ANCHORS\.md|DESIGN decision|DESIGN\.md|VERL_ON_CPU\.md|VERL_0\.9\.1\.md", text), rel
