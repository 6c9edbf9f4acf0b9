"""A time limit on each call of the custom reward function, so that a reward that hangs costs one sample, not the run.

Where verl 0.9.1 calls the reward function: every reward manager (``NaiveRewardManager`` and its siblings in
verl/experimental/reward_loop/reward_manager/) gets it from ``verl.trainer.ppo.reward.load_reward_manager``, which
takes it from ``get_custom_reward_fn(config)`` (a module-level name, looked up at call time). The manager then calls
it from ``RewardLoopWorker`` (a Ray actor) through ``loop.run_in_executor(None, ...)``: a thread of the actor's
default executor. A thread cannot be stopped, and a reward that holds the GIL (sympy on a huge integer) stops every
thread of the actor, so no time limit can be kept from inside that process. All three trainers score through this
path: ``trainer=randopt|es`` via ``trainers/harness.py::score`` → ``RewardLoopWorker.compute_score_batch``,
``trainer=grpo`` via verl's agent loop → ``RewardLoopWorker.compute_score``.

So ``install()`` (called by the plugin in every process verl starts) wraps ``get_custom_reward_fn``: when the config
has ``reward_guard.timeout_s`` set, the function it returns is a ``GuardedReward``, which runs each call in a child
process (a plain Python process that loads the same file by path and calls the function on its main thread; a
small pool, started on first use and kept). A call that runs past ``timeout_s`` kills that child (and its process
group), and raises ``RewardTimeout`` for that sample; the next call gets a fresh child. A raise in the reward is
re-raised in the caller, unchanged when it pickles. So a timeout is recorded exactly as a raise already is: by the
randopt/es harness in the ledger row (sample scored 0, ``error`` set), by verl's agent loop for GRPO (the sample
fails, the step goes on). Inputs that timed out are remembered (a digest of the pickled arguments), so the harness'
one-by-one re-scoring of a chunk that raised does not wait for the same hang twice.

Without the ``reward_guard`` node (stock verl configs) nothing changes: verl's own function is returned.
Async reward functions (``async def``) stay in verl's event loop with ``asyncio.wait_for``: that bounds a reward
that awaits too long, not one that blocks the loop.

The child is started with ``sys.executable`` and this file's path (it imports only the standard library), the
parent's environment and working directory; it dies with its parent (``PR_SET_PDEATHSIG`` on Linux, and EOF on
its socket everywhere). A reward that keeps module state (a cache, a counter) keeps it per child process.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any, Optional

__all__ = ["GuardedReward", "RewardTimeout", "RewardProcessDied", "install", "settings", "check"]

CONFIG_NODE = "reward_guard"


@dataclass(frozen=True)
class GuardSettings:
    """The ``reward_guard`` node's keys and their one default each (config/randopt_ppo.yaml documents them)."""

    # seconds one reward call may take; None runs the reward in verl's own thread, with no limit
    timeout_s: Optional[float] = 30.0
    # child processes per reward loop worker
    processes: int = 4


KEYS = {f.name for f in fields(GuardSettings)}
# loading the reward file in a fresh child (imports: sympy for math-verify takes seconds on a busy machine) has
# its own limit, never shorter than the call limit
LOAD_TIMEOUT_S = 120.0
# how many timed-out inputs are remembered (digests: 16 bytes each)
MAX_REMEMBERED = 4096


class RewardTimeout(TimeoutError):
    """One reward call ran past ``reward_guard.timeout_s``; recorded as that sample's error."""


class RewardProcessDied(RuntimeError):
    """The child process running the reward died during a call (os._exit, a crash, out of memory)."""


# --------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------


def settings(config: Any) -> tuple[float, int] | None:
    """``(timeout_s, processes)`` from the config's ``reward_guard`` node, or None when there is no limit.

    Raises ValueError with the fix for a malformed node; ``check(config)`` is the same, for a validator."""
    node = config.get(CONFIG_NODE) if hasattr(config, "get") else None
    if node is None:
        return None
    if not hasattr(node, "keys"):
        raise ValueError(f"{CONFIG_NODE} must be a mapping such as {{timeout_s: {GuardSettings.timeout_s:g}, "
                         f"processes: {GuardSettings.processes}}}, got {node!r}")
    extra = sorted(set(node.keys()) - KEYS)
    if extra:
        raise ValueError(f"unknown key(s) {[CONFIG_NODE + '.' + k for k in extra]}; known: {sorted(KEYS)}")
    timeout = node.get("timeout_s", GuardSettings.timeout_s)
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(
            f"{CONFIG_NODE}.timeout_s must be a number of seconds > 0 (or null: no limit), got {timeout!r}"
        )
    processes = node.get("processes", GuardSettings.processes)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"{CONFIG_NODE}.processes must be an integer >= 1, got {processes!r}")
    return float(timeout), int(processes)


def check(config: Any) -> None:
    """Validate the ``reward_guard`` node (for a config validator); raises ValueError naming the fix."""
    settings(config)


# --------------------------------------------------------------------------------------------------------------
# The child process: run by path, standard library only
# --------------------------------------------------------------------------------------------------------------


def _load(path: str, name: str):
    """The reward function, loaded the way verl 0.9.1's ``load_extern_object`` does: ``pkg://a.b`` imports a
    module, anything else (optionally ``file://``) is executed from its path under a private module name."""
    import importlib
    import importlib.util

    if path.startswith("pkg://"):
        module = importlib.import_module(path[len("pkg://") :].replace("/", "."))
    else:
        if path.startswith("file://"):
            path = path[len("file://") :]
        spec = importlib.util.spec_from_file_location(f"custom_module_{hash(os.path.abspath(path))}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"could not load a module from {path!r}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    if not hasattr(module, name):
        raise AttributeError(f"{name!r} not found in {path!r}")
    return getattr(module, name)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # no libc prctl: the socket's EOF still ends an idle child
            pass


def _child_main(fd: int, parent_pid: int) -> None:
    from multiprocessing.connection import Connection

    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)
    conn = Connection(fd)
    path, name, reward_kwargs = conn.recv()
    try:
        fn = _load(path, name)
    except BaseException as exc:  # reported to the parent, which raises it with the fix
        conn.send(("load_error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            args, kwargs = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            # verl's _call_with_kwargs: reward_kwargs from the config take precedence over call-time keywords
            reply = ("ok", fn(*args, **{**kwargs, **reward_kwargs}))
        except BaseException as exc:
            reply = ("error", exc)
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an unpicklable result or exception: send its text
            kind = "error" if reply[0] == "error" else "bad_result"
            text = f"{type(reply[1]).__name__}: {reply[1]}" if kind == "error" else f"{type(exc).__name__}: {exc}"
            data = pickle.dumps((kind, text))
        conn.send_bytes(data)


# --------------------------------------------------------------------------------------------------------------
# The parent side
# --------------------------------------------------------------------------------------------------------------


class _Child:
    def __init__(self, path: str, name: str, reward_kwargs: dict, load_timeout: float):
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: a kill also ends what the reward started
            )
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send((path, name, reward_kwargs))
        if not self.conn.poll(load_timeout):
            self.kill()
            raise RewardTimeout(f"reward_guard: loading {path!r} in a child process took over {load_timeout:.0f} s")
        try:
            status, payload = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            raise RewardProcessDied(f"reward_guard: the child process loading {path!r} died") from exc
        if status != "ready":
            self.kill()
            raise RuntimeError(f"reward_guard: the child process could not load {name!r} from {path!r}: {payload}")

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.conn.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        # EOF on the socket ends an idle child; one that is still busy is killed
        try:
            self.conn.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()


_SPAWNER = None
_SPAWNER_LOCK = threading.Lock()


def _spawner():
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            from concurrent.futures import ThreadPoolExecutor

            _SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="reward_guard_spawner")
        return _SPAWNER


class GuardedReward:
    """A synchronous reward function, run in child processes with a time limit per call (see module doc).

    Called exactly like the function verl's ``get_custom_reward_fn`` returns; thread-safe (verl calls it from
    many executor threads at once): each concurrent call uses its own child, up to ``processes`` of them; a call
    that finds them all busy waits for one, and that wait does not count against the limit."""

    def __init__(self, path: str, name: str, reward_kwargs: dict | None, timeout_s: float, processes: int = GuardSettings.processes):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.path = path if path.startswith("pkg://") else os.path.abspath(path.removeprefix("file://"))
        self.name = name
        self.reward_kwargs = dict(reward_kwargs or {})
        self.timeout_s = float(timeout_s)
        self.processes = int(processes)
        self._idle: list[_Child] = []
        self._count = 0
        self._cv = threading.Condition()
        self._hung: OrderedDict[bytes, None] = OrderedDict()
        self._closed = False

    # -- pool ------------------------------------------------------------------------------------------------
    def _acquire(self) -> _Child:
        with self._cv:
            while not self._idle and self._count >= self.processes:
                self._cv.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            # started from one long-lived thread: PR_SET_PDEATHSIG fires when the *thread* that started the child
            # ends, and verl's executor threads may come and go
            return _spawner().submit(
                _Child, self.path, self.name, self.reward_kwargs, max(LOAD_TIMEOUT_S, self.timeout_s)
            ).result()
        except BaseException:
            self._discard(None)
            raise

    def _release(self, child: _Child) -> None:
        with self._cv:
            if self._closed:
                child.close()
            else:
                self._idle.append(child)
            self._cv.notify()

    def _discard(self, child: _Child | None) -> None:
        if child is not None:
            child.kill()
        with self._cv:
            self._count -= 1
            self._cv.notify()

    def close(self) -> None:
        """Stop the idle children (busy ones stop when their call returns)."""
        with self._cv:
            self._closed = True
            idle, self._idle = self._idle, []
        for child in idle:
            child.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- calls -----------------------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        payload = pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        digest = hashlib.blake2b(payload, digest_size=16).digest()
        with self._cv:
            hung_before = digest in self._hung
        if hung_before:
            raise RewardTimeout(
                f"reward call exceeded reward_guard.timeout_s={self.timeout_s:g} s (this same input timed out "
                "before in this worker; not run again)"
            )
        child = self._acquire()
        t0 = time.monotonic()
        try:
            child.conn.send_bytes(payload)
            ready = child.conn.poll(self.timeout_s)
            if ready:
                reply = pickle.loads(child.conn.recv_bytes())
        except (EOFError, OSError) as exc:
            try:  # EOF can arrive a moment before the exit status
                code = child.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                code = None
            self._discard(child)
            raise RewardProcessDied(f"the reward's child process died during the call (exit code {code})") from exc
        except BaseException:
            self._discard(child)
            raise
        if not ready:
            self._discard(child)
            with self._cv:
                self._hung[digest] = None
                while len(self._hung) > MAX_REMEMBERED:
                    self._hung.popitem(last=False)
            raise RewardTimeout(
                f"reward call exceeded reward_guard.timeout_s={self.timeout_s:g} s "
                f"(stopped after {time.monotonic() - t0:.1f} s; its process was killed and is replaced)"
            )
        self._release(child)
        status, value = reply
        if status == "ok":
            return value
        if status == "error" and isinstance(value, BaseException):
            raise value
        if status == "error":
            raise RuntimeError(f"reward raised {value}")
        raise TypeError(f"reward returned a value that cannot be sent between processes ({value})")


def _async_guard(fn, timeout_s: float):
    import asyncio

    async def guarded(*args, **kwargs):
        try:
            return await asyncio.wait_for(fn(*args, **kwargs), timeout_s)
        except asyncio.TimeoutError:
            raise RewardTimeout(f"reward call exceeded reward_guard.timeout_s={timeout_s:g} s") from None

    return guarded


# --------------------------------------------------------------------------------------------------------------
# The hook
# --------------------------------------------------------------------------------------------------------------


def guard(config: Any, fn):
    """What ``get_custom_reward_fn(config)`` returns once guarded: ``fn`` itself when the config sets no limit."""
    limit = settings(config)
    if fn is None or limit is None:
        return fn
    timeout_s, processes = limit
    if inspect.iscoroutinefunction(fn):
        return _async_guard(fn, timeout_s)
    from omegaconf import OmegaConf

    node = config.reward.get("custom_reward_function") or {}
    kwargs = node.get("reward_kwargs") or {}
    if not isinstance(kwargs, dict):
        kwargs = OmegaConf.to_container(kwargs, resolve=True)
    return GuardedReward(str(node.get("path")), str(node.get("name")), kwargs, timeout_s, processes)


def _guard_hook() -> None:
    """What install() relies on in verl 0.9.1 (tests/test_reward_guard.py runs it): load_reward_manager takes the
    function from the module-level ``get_custom_reward_fn(config)``, and verl calls it with keywords only."""
    from verl.trainer.ppo import reward as vr

    assert list(inspect.signature(vr.get_custom_reward_fn).parameters) == ["config"], "signature changed"
    assert "compute_score = get_custom_reward_fn(config)" in inspect.getsource(vr.load_reward_manager), (
        "load_reward_manager no longer calls get_custom_reward_fn(config)"
    )


def install() -> None:
    """Wrap verl's ``get_custom_reward_fn`` (idempotent). verl itself loads the file first, so a wrong path or
    name fails with verl's own error before any child process starts."""
    from verl.trainer.ppo import reward as vr

    if getattr(vr.get_custom_reward_fn, "_randopt_guarded", False):
        return
    original = vr.get_custom_reward_fn

    def get_custom_reward_fn(config):
        return guard(config, original(config))

    get_custom_reward_fn._randopt_guarded = True
    get_custom_reward_fn.__wrapped__ = original
    get_custom_reward_fn.__doc__ = original.__doc__
    vr.get_custom_reward_fn = get_custom_reward_fn


if __name__ == "__main__":  # the child process: python reward_guard.py FD PARENT_PID
    sys.path.pop(0)  # this file's folder must not shadow top-level modules the reward imports
    _child_main(int(sys.argv[1]), int(sys.argv[2]))
