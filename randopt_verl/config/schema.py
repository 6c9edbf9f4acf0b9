"""Typed config of this package's own nodes: `randopt.*` (with `controls.*` and `param_filter.*`) and `es.*`.

Each key's type, default, meaning (`doc`) and check live here, in one place, as in verl's own config dataclasses
(`verl.base_config.BaseConfig`, named by the node's `_target_` in trainer/randopt.yaml and trainer/es.yaml). The
yaml files carry the same defaults with a comment above every key (tests/test_config_comments.py holds the two to
each other). `typed(config, "randopt")` turns the composed node into its dataclass: an unknown key names the
closest known one, a value of the wrong type or out of range raises `ConfigError` with the fix. Checks that need
other parts of the config (files, the rollout backend, verl's keys) are in randopt_verl/validate.py.

The trainers read these objects, not the raw DictConfig: `SearchTrainer.settings` is `typed(config, "randopt")` (or
"es"), made once when the trainer starts, so each key has one definition, one default and one check, and every use
is a typed attribute (tests/test_config_comments.py holds every key to a read in the code that runs).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError
from verl.base_config import BaseConfig

from randopt_verl.config.errors import ConfigError, closest
from randopt_verl.core import merge
from randopt_verl.core.population import ParamFilter

__all__ = ["ConfigError", "ConsolidateConfig", "ControlsConfig", "ESConfig", "ParamFilterConfig", "RandOptConfig", "SelectionConfig", "plain", "typed"]


def doc(default: Any = None, text: str = "", *, factory=None):
    """A dataclass field with its documentation (shown by `randopt-verl doctor` and the tests)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


# ------------------------------------------------------------------------------------------------ checks


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer")
    return value


def _optional_size(value: Any, key: str) -> None:
    if value is not None:
        _positive_int(value, key)


def _sigma(value: float, key: str) -> None:
    if not value > 0 or value != value:
        raise ConfigError(f"{key}={value!r} must be > 0 (typical values 5e-4 .. 3e-3)")


def _seed(value: int, key: str) -> None:
    if value < 0:
        raise ConfigError(f"{key}={value!r} must be an integer >= 0")


# ------------------------------------------------------------------------------------------------ nodes


@dataclass
class ParamFilterConfig(BaseConfig):
    """Which HF parameter names are perturbed (and, for ES, updated): regexes matched with re.search."""

    include: Optional[list[str]] = doc(None, "perturb only names matching one of these (null: every floating tensor)")
    exclude: Optional[list[str]] = doc(None, "never perturb names matching one of these (null: none excluded)")

    def build(self) -> ParamFilter:
        """The filter object the trainers pass on (core/population.py)."""
        return ParamFilter(self.include, self.exclude)

    def check(self, prefix: str) -> None:
        for key in ("include", "exclude"):
            for pattern in getattr(self, key) or []:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(f"{prefix}.{key}: {pattern!r} is not a valid regex ({exc})") from None


@dataclass
class ControlsConfig(BaseConfig):
    """The honest controls reported next to every selected top-k vote."""

    random_k_draws: int = doc(20, "random-k: votes of k candidates drawn without selection, averaged over this "
                                  "many draws (0 disables)")
    population: Optional[int] = doc(None, "candidates whose test answers feed random-k (null: min(N, 4 * max "
                                          "ensemble k)); costs that many test passes")
    base_self_consistency: bool = doc(True, "base self-consistency maj@k: the base model sampled max(k) times per "
                                            "test prompt (false disables)")
    temperature: float = doc(0.7, "sampling temperature of the base self-consistency samples")

    def __post_init__(self):
        if self.random_k_draws < 0:
            raise ConfigError(f"randopt.controls.random_k_draws={self.random_k_draws!r} must be an integer >= 0")
        _optional_size(self.population, "randopt.controls.population")
        if self.base_self_consistency and not self.temperature > 0:
            raise ConfigError(f"randopt.controls.temperature={self.temperature!r} must be > 0 for base "
                              "self-consistency sampling (or set randopt.controls.base_self_consistency=false)")


@dataclass
class ConsolidateConfig(BaseConfig):
    """One model out of the experts, without gradients (the merge: randopt_verl/core/merge.py)."""

    enabled: bool = doc(False, "run the consolidation when the search ends (false: the search's results only)")
    weighting: str = doc("zscore", "how members are weighted from their selection scores: zscore (unit-length "
                                   "z-scores; the only rule so far)")
    over: str = doc("top_k", "the members: top_k (the selected experts) or population (every scored candidate)")
    scales: list[float] = doc(text="scales tried on the selection set; scale 1 moves the model about as far as one "
                                   "candidate's perturbation", factory=lambda: [0.5, 1.0, 2.0])
    shuffled_control: bool = doc(True, "also build the control with the scores shuffled among the members (a "
                                       "seeded permutation), scored the same way")

    def __post_init__(self):
        if self.weighting not in merge.WEIGHTINGS:
            raise ConfigError(f"randopt.consolidate.weighting={self.weighting!r}: use one of "
                              f"{', '.join(merge.WEIGHTINGS)}")
        if self.over not in merge.OVER:
            raise ConfigError(f"randopt.consolidate.over={self.over!r}: use one of {', '.join(merge.OVER)}")
        if not self.scales or any(not math.isfinite(x) or x <= 0 for x in self.scales):
            raise ConfigError(f"randopt.consolidate.scales={list(self.scales)}: give a non-empty list of positive "
                              "scales, e.g. [0.5,1.0,2.0]")


@dataclass
class SelectionConfig(BaseConfig):
    """How the candidates are scored on the selection set (randopt_verl/core/halving.py for the halving rule)."""

    strategy: str = doc("full", "full (every candidate answers the whole selection set) or halving (a race over "
                                "blocks: candidates clearly behind the current K-th stop early)")
    block_size: int = doc(16, "halving: prompts per block; every racing candidate answers the same next block")
    min_prompts: int = doc(32, "halving: no candidate stops before everyone racing has answered this many prompts")
    z: float = doc(1.645, "halving: stop when (paired mean difference to the current K-th) + z * its standard "
                          "error < -margin (1.645: a one-sided 95% bound)")
    margin: float = doc(0.0, "halving: how far below the K-th (in reward units) the bound must be to stop")

    def __post_init__(self):
        if self.strategy not in ("full", "halving"):
            raise ConfigError(f"randopt.selection.strategy={self.strategy!r}: use full or halving")
        _positive_int(self.block_size, "randopt.selection.block_size")
        if self.min_prompts < 0:
            raise ConfigError(f"randopt.selection.min_prompts={self.min_prompts!r} must be an integer >= 0")
        if not self.z >= 0:
            raise ConfigError(f"randopt.selection.z={self.z!r} must be >= 0 (1.645: a one-sided 95% bound)")
        if not self.margin >= 0:
            raise ConfigError(f"randopt.selection.margin={self.margin!r} must be >= 0")


@dataclass
class RandOptConfig(BaseConfig):
    """`trainer=randopt`: N seeded perturbations scored on the selection set, the top K voted on the test set."""

    population_size: int = doc(500, "N: candidates in the population; growing N on resume keeps the first ones")
    sigmas: list[float] = doc(text="sigma values; each candidate draws one uniformly",
                              factory=lambda: [0.0005, 0.001, 0.002])
    seed: int = doc(0, "global seed: fixes every candidate's (seed, sigma)")
    top_k: int = doc(50, "K: experts kept in topk.json and voted at test time (K <= N)")
    ensemble_ks: list[int] = doc(text="ks reported as maj@k (selected top-k vote), random-k and base maj@k; "
                                      "each <= top_k", factory=lambda: [1, 10, 50])
    selection_size: Optional[int] = doc(200, "selection set: the first this-many rows of data.train_files "
                                             "(null: all rows)")
    test_size: Optional[int] = doc(None, "test set cap: the first this-many rows of data.val_files (null: all)")
    run_dir: str = doc("${trainer.default_local_dir}", "manifest, ledger, topk.json and results.json (resume reads "
                                                      "it back)")
    perturb_at: str = doc("auto", "weights into replicas: server (hf backend, in place), sync (perturb the FSDP "
                                  "weight stream: the vLLM path), auto (server for hf, sync otherwise)")
    param_filter: ParamFilterConfig = doc(text="which parameters are perturbed", factory=ParamFilterConfig)
    selection: SelectionConfig = doc(text="how candidates are scored on the selection set (full or halving)",
                                     factory=SelectionConfig)
    controls: ControlsConfig = doc(text="controls reported next to every selected top-k vote",
                                   factory=ControlsConfig)
    consolidate: ConsolidateConfig = doc(text="one model out of the experts (randopt-verl consolidate)",
                                         factory=ConsolidateConfig)
    plots: bool = doc(True, "draw the density and maj@k plots into the run directory when the search ends")
    sigma_choice: str = doc("mixed", "mixed: the top-K over every sigma (the paper's); dev: also choose one sigma "
                                     "on a dev split held out of the selection data (the last dev_size rows; the "
                                     "search uses the rows before it) and report its top-K beside the mixed one")
    dev_size: int = doc(32, "sigma_choice=dev: selection rows held out as the dev split (never the test set)")
    accuracy_vs_n: bool = doc(False, "also report the top-k votes at N/8, N/4, N/2 and N read from prefixes of "
                                     "this run's ledger (full selection only); the extra experts' test answers "
                                     "count in test_cost")

    def __post_init__(self):
        n = _positive_int(self.population_size, "randopt.population_size")
        if not self.sigmas:
            raise ConfigError("randopt.sigmas must be a non-empty list, e.g. randopt.sigmas=[0.001]")
        for s in self.sigmas:
            _sigma(s, "randopt.sigmas[]")
        _seed(self.seed, "randopt.seed")
        k = _positive_int(self.top_k, "randopt.top_k")
        if k > n:
            raise ConfigError(f"randopt.top_k={k} exceeds randopt.population_size={n}: keep K <= N "
                              f"(e.g. randopt.top_k={max(1, n // 10)})")
        if not self.ensemble_ks:
            raise ConfigError("randopt.ensemble_ks must list at least one k, e.g. randopt.ensemble_ks=[1,4]")
        for kk in self.ensemble_ks:
            _positive_int(kk, "randopt.ensemble_ks[]")
            if kk > k:
                raise ConfigError(f"randopt.ensemble_ks has {kk} > randopt.top_k={k}: every maj@k needs k <= K")
        _optional_size(self.selection_size, "randopt.selection_size")
        _optional_size(self.test_size, "randopt.test_size")
        sel = self.selection
        if sel.strategy == "halving" and self.selection_size is not None and sel.block_size >= self.selection_size:
            raise ConfigError(f"randopt.selection.block_size={sel.block_size} must be below "
                              f"randopt.selection_size={self.selection_size} for halving to stop anyone early "
                              f"(e.g. randopt.selection.block_size={max(1, self.selection_size // 8)})")
        if self.sigma_choice not in ("mixed", "dev"):
            raise ConfigError(f"randopt.sigma_choice={self.sigma_choice!r}: use mixed or dev")
        _positive_int(self.dev_size, "randopt.dev_size")
        if self.sigma_choice == "dev":
            if len(set(self.sigmas)) < 2:
                raise ConfigError("randopt.sigma_choice=dev chooses among randopt.sigmas, which has one value: list "
                                  "several (e.g. randopt.sigmas=[0.001,0.002]) or set randopt.sigma_choice=mixed")
            if self.selection_size is not None and self.dev_size >= self.selection_size:
                raise ConfigError(f"randopt.dev_size={self.dev_size} leaves no selection rows of "
                                  f"randopt.selection_size={self.selection_size} for the search: keep dev_size below "
                                  f"it (e.g. randopt.dev_size={max(1, self.selection_size // 4)})")
        if self.accuracy_vs_n and sel.strategy != "full":
            raise ConfigError("randopt.accuracy_vs_n=true needs randopt.selection.strategy=full: a race's stops depend "
                              "on the whole population, so its ledger's prefixes are not smaller searches")
        if self.perturb_at not in ("auto", "server", "sync"):
            raise ConfigError(f"randopt.perturb_at={self.perturb_at!r}: use auto, server or sync")
        self.param_filter.check("randopt.param_filter")
        if self.consolidate.enabled and self.consolidate.over == "top_k" and k < 2:
            raise ConfigError("randopt.consolidate needs at least 2 members: raise randopt.top_k or set "
                              "randopt.consolidate.over=population")
        c = self.controls
        if c.population is not None:
            if c.population > n:
                raise ConfigError(f"randopt.controls.population={c.population} exceeds randopt.population_size={n}")
            if c.population < max(self.ensemble_ks) and c.random_k_draws > 0:
                raise ConfigError(f"randopt.controls.population={c.population} is smaller than "
                                  f"max(randopt.ensemble_ks)={max(self.ensemble_ks)}: random-k needs at least k "
                                  "candidates")


@dataclass
class ESConfig(BaseConfig):
    """`trainer=es`: the ES-at-scale baseline (iterations = trainer.total_training_steps)."""

    population_size: int = doc(30, "N: population per iteration (the ES paper: 30)")
    sigma: float = doc(0.001, "noise scale (the ES paper: 1e-3)")
    alpha: float = doc(0.0005, "step size; 1/sigma is folded into it (the ES paper: 5e-4)")
    seed: int = doc(0, "global seed; iteration t's candidate seeds are drawn from (seed, t)")
    selection_size: Optional[int] = doc(200, "selection batch: the first this-many rows of data.train_files, the "
                                             "same for every member and iteration")
    test_size: Optional[int] = doc(None, "test set cap for validation: the first this-many rows of data.val_files "
                                         "(null: all)")
    run_dir: str = doc("${trainer.default_local_dir}", "metrics.jsonl (one row per iteration, with cost)")
    param_filter: ParamFilterConfig = doc(text="which parameters ES perturbs and updates",
                                          factory=ParamFilterConfig)

    def __post_init__(self):
        n = _positive_int(self.population_size, "es.population_size")
        if n < 2:
            raise ConfigError("es.population_size must be >= 2: z-scores need at least two members")
        _sigma(self.sigma, "es.sigma")
        _sigma(self.alpha, "es.alpha")
        _seed(self.seed, "es.seed")
        _optional_size(self.selection_size, "es.selection_size")
        _optional_size(self.test_size, "es.test_size")
        self.param_filter.check("es.param_filter")


# ------------------------------------------------------------------------------------------------ loading


def plain(node: BaseConfig) -> dict[str, Any]:
    """A typed node's keys and values as plain data (nested nodes too; verl's ``_target_`` left out): what a run's
    identity records."""
    return {f.name: plain(v) if is_dataclass(v := getattr(node, f.name)) else v
            for f in fields(node) if f.name != "_target_"}


def known_keys(cls, prefix: str) -> list[str]:
    """Every dotted key of a config dataclass (nested ones included), e.g. randopt.controls.temperature."""
    out = []
    for f in fields(cls):
        if f.name == "_target_":
            continue
        sub = f.default_factory() if callable(f.default_factory) else None  # type: ignore[misc]
        if is_dataclass(sub):
            out += known_keys(type(sub), f"{prefix}.{f.name}")
        else:
            out.append(f"{prefix}.{f.name}")
    return out


def typed(config: DictConfig, name: str):
    """The `name` node of the composed config as its dataclass (the one its `_target_` names), checked.

    The node is resolved first (run_dir interpolates trainer.default_local_dir)."""
    from hydra.utils import get_class

    node = config.get(name)
    if not isinstance(node, DictConfig):
        raise ConfigError(f"trainer.v1.trainer_mode={name} needs the {name} node: use trainer={name}")
    target = node.get("_target_")
    cls = get_class(target) if target else {"randopt": RandOptConfig, "es": ESConfig}[name]
    plain = OmegaConf.to_container(node, resolve=True)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), plain)
        return OmegaConf.to_object(merged)
    except ConfigKeyError as exc:
        key = f"{name}.{exc.full_key}"
        raise ConfigError(f"unknown key {key}{closest(key, known_keys(cls, name))}") from None
    except ValidationError as exc:
        key = f"{name}.{exc.full_key}"
        wanted = _type_name(cls, str(exc.full_key))
        raise ConfigError(f"{key}={exc.value!r} must be {wanted}") from None
    except OmegaConfBaseException as exc:  # anything else OmegaConf refuses: its first line names the problem
        raise ConfigError(f"{name}: {str(exc).splitlines()[0]}") from None


def _type_name(cls, dotted: str) -> str:
    parts = dotted.split(".")
    for part in parts[:-1]:
        f = next((f for f in fields(cls) if f.name == part), None)
        if f is None or not callable(f.default_factory):
            return "of the documented type"
        cls = type(f.default_factory())
    f = next((f for f in fields(cls) if f.name == parts[-1]), None)
    if f is None:
        return "of the documented type"
    optional = str(f.type).startswith("Optional[")
    text = str(f.type)[len("Optional["):-1] if optional else str(f.type)
    words = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
             "list[float]": "a list of numbers, e.g. [0.001]", "list[int]": "a list of integers, e.g. [1,4]",
             "list[str]": "a list of regexes, e.g. ['mlp']"}
    return words.get(text, text) + (" or null" if optional else "")
