"""The layers hold: every module under randopt_verl/core/ imports in a fresh interpreter where verl and Ray cannot be
imported (a meta-path finder refuses them), so the core stays usable and testable without either."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import randopt_verl.core

CORE = Path(randopt_verl.core.__file__).parent

_CHILD = """
import importlib, sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("verl", "ray", "transfer_queue"):
            raise ImportError(f"{name} is blocked: randopt_verl.core must not need it")
        return None

sys.meta_path.insert(0, Blocked())
for module in sys.argv[1:]:
    importlib.import_module(module)
    print("imported", module)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("verl", "ray", "transfer_queue"))
assert not leaked, leaked
"""


def core_modules() -> list[str]:
    return [f"randopt_verl.core.{m.name}" for m in pkgutil.iter_modules([str(CORE)])]


def test_every_core_module_imports_without_verl_and_ray():
    modules = core_modules()
    # the package's own list: a new core module is covered without editing this test
    assert {"noise", "population", "es_update", "vote", "rundir", "ledger", "manifest", "jsonio", "fingerprint",
            "report"} <= {m.rsplit(".", 1)[1] for m in modules}
    out = subprocess.run([sys.executable, "-c", _CHILD, *modules], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[:-1] == [f"imported {m}" for m in modules]


def test_the_blocker_blocks():
    # the check above would be empty if the blocker let verl through
    out = subprocess.run([sys.executable, "-c", _CHILD, "randopt_verl.trainers.harness"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0 and "is blocked" in out.stderr
