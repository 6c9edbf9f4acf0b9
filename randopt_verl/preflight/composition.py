"""Composing the config a command line runs: hydra's compose API over randopt_verl/config, the `hardware=cpu`
default on a machine without CUDA, and a composition error turned into one line that names the closest key."""

from __future__ import annotations

import re
import sys
from typing import Sequence

from randopt_verl.config.errors import ConfigError, closest

# hydra's own command-line flags that make randopt_verl.main print or sweep instead of running one job
_NO_RUN_FLAGS = ("--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--resolve", "--shell-completion",
                 "-sc", "--multirun", "-m")


def with_hardware_default(overrides: Sequence[str]) -> list[str]:
    """`hardware=cpu` first in the overrides when none is named and there is no CUDA (first: hydra's own flags may
    follow the overrides, and a trailing positional after them is refused)."""
    overrides = list(overrides)
    if any(o.split("=", 1)[0].lstrip("+~") == "hardware" for o in overrides):
        return overrides
    import torch

    if torch.cuda.is_available():
        return overrides
    print("randopt_verl: no GPU found, using hardware=cpu (pass hardware=gpu to override)", file=sys.stderr)
    return ["hardware=cpu"] + overrides


def hydra_overrides(argv: Sequence[str]) -> tuple[list[str], bool]:
    """(the overrides, whether hydra will run one job) of a `randopt_verl.main` command line (argv[1:])."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(list(argv))
    runs = not any(a.split("=", 1)[0] in _NO_RUN_FLAGS for a in argv)
    return list(args.overrides or []), runs


def compose(overrides: Sequence[str]):
    """The config `python -m randopt_verl.main OVERRIDES` would run (no hardware default added here)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module("randopt_verl.config", version_base=None):
            return hydra_compose("randopt_ppo", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_composition_message(exc, list(overrides))) from None


def _composition_message(exc: Exception, overrides: list[str]) -> str:
    text = str(exc)
    cause = str(exc.__cause__ or "")
    m = re.search(r"Could not (?:override|append to|delete from) '([^']+)'", text)
    if m and ("not in struct" in cause or "not in struct" in text or "Could not delete" in text):
        key = m.group(1)
        rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
        node = key.split(".", 1)[0]
        if node in ("randopt", "es") and f"trainer={node}" not in rest:
            return f"{key}: the {node}.* keys exist only under trainer={node}; drop it for this trainer"
        hint = closest(key, _all_keys(rest, key))
        return (f"unknown key {key}{hint}. To add a new key on purpose, write +{key}=... (only where the code "
                "reads it)")
    m = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if m:
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        return f"{m.group(1)}={m.group(2)} is not a preset; choose one of {', '.join(options)}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"{first}{': ' + cause.splitlines()[0] if cause else ''}"


def _all_keys(overrides: list[str], near: str) -> list[str]:
    """Dotted keys of the config composed without the bad override, under the deepest existing parent of `near`."""
    from omegaconf import DictConfig, OmegaConf

    try:
        config = compose(overrides)
    except ConfigError:
        return []
    parts = near.split(".")
    prefix, node = "", config
    for part in parts[:-1]:
        child = node.get(part) if isinstance(node, DictConfig) else None
        if not isinstance(child, DictConfig):
            break
        prefix, node = f"{prefix}{part}.", child

    def walk(n, p):
        for k in n.keys():
            v = n._get_node(k)
            full = f"{p}{k}"
            yield full
            if isinstance(v, DictConfig) and not OmegaConf.is_missing(n, k):
                yield from walk(v, full + ".")

    return list(walk(node, prefix))
