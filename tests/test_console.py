"""The quiet console (randopt_verl/console.py): what reaches the terminal and what reaches the log. The driver side
runs in a child process, because it repoints the process's own descriptors 1 and 2."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from randopt_verl.core.rundir import RunDir
from randopt_verl.console import PROGRESS_ENV, ProgressView, error_line, phase_bar


def test_phase_bar_records_its_events_only_when_asked(tmp_path, monkeypatch):
    path = tmp_path / "progress.jsonl"
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    with phase_bar(total=3, desc="quiet off", file=io.StringIO()) as bar:
        bar.update(3)
    assert not path.exists()
    monkeypatch.setenv(PROGRESS_ENV, str(path))
    bar = phase_bar(total=5, initial=2, desc="phase", file=io.StringIO())
    bar.update(2)
    bar.update(1)
    bar.close()
    bar.close()  # a second close records nothing
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["event"], e["n"]) for e in events] == [("start", 2), ("update", 4), ("update", 5), ("close", 5)]
    assert {(e["desc"], e["total"], e["initial"]) for e in events} == {("phase", 5, 2)}


def test_progress_view_one_line_per_phase_off_a_terminal():
    out = io.StringIO()
    view = ProgressView(out, tty=False)
    for phase in ("search", "test answers"):
        view.event({"event": "start", "desc": phase, "n": 1, "total": 4, "initial": 1, "t": 100.0})
        for n in (2, 3, 4):
            view.event({"event": "update", "desc": phase, "n": n, "total": 4, "initial": 1, "t": 100.0 + n})
        view.event({"event": "close", "desc": phase, "n": 4, "total": 4, "initial": 1, "t": 165.0})
    for event in ("start", "close"):  # nothing to do: no line
        view.event({"event": event, "desc": "base samples", "n": 0, "total": 0, "initial": 0, "t": 170.0})
    assert out.getvalue().splitlines() == ["search: 4/4 in 1m05s, 1 from the ledger",
                                           "test answers: 4/4 in 1m05s, 1 from the ledger"]


def test_progress_view_redraws_in_place_on_a_terminal():
    out = io.StringIO()
    view = ProgressView(out, tty=True)
    view.event({"event": "start", "desc": "search", "n": 0, "total": 10, "initial": 0, "t": 0.0})
    view.event({"event": "update", "desc": "search", "n": 5, "total": 10, "initial": 0, "t": 10.0})
    view.event({"event": "close", "desc": "search", "n": 10, "total": 10, "initial": 0, "t": 20.0})
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("search: 10/10 in 20s\n")
    assert "search: 5/10 (10s, about 10s left)" in text


def test_error_line_unwraps_a_ray_task_error():
    from ray.exceptions import RayTaskError

    inner = ValueError("the run directory holds another search; fix: pass a new randopt.run_dir")
    wrapped = RayTaskError("TaskRunner.run", "Traceback (most recent call last):\n  ...", inner)
    assert error_line(wrapped) == f"ValueError: {inner}"
    assert error_line(KeyError("k")) == "KeyError: 'k'"


CHILD = textwrap.dedent("""
    import os, subprocess, sys
    from randopt_verl.console import Quiet, phase_bar
    print("before quiet", flush=True)
    try:
        with Quiet(sys.argv[1], poll_s=0.05):
            for i in range(200):
                print(f"a verl line {i}")
                print(f"a warning {i}", file=sys.stderr)
            subprocess.run(["echo", "a line from a child process like Ray's"], check=True)
            bar = phase_bar(total=3, desc="randopt candidates")
            for _ in range(3):
                bar.update(1)
            bar.close()
            if sys.argv[2] == "fail":
                raise RuntimeError("reward function not found; fix: set reward.custom_reward_function.path")
    except RuntimeError:
        sys.exit(3)
    print("after quiet", flush=True)
""")


def _child(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "run"), mode], capture_output=True,
                          text=True, timeout=60)


def test_quiet_sends_output_to_the_log_and_progress_to_the_terminal(tmp_path):
    proc = _child(tmp_path, "ok")
    assert proc.returncode == 0, proc.stderr
    log = RunDir(tmp_path / "run").console_log_path.read_text()
    terminal = proc.stdout.splitlines()
    assert terminal == ["before quiet",
                        f"randopt_verl: quiet console: starting Ray and verl; their output goes to "
                        f"{tmp_path / 'run' / 'console.log'}",
                        terminal[2], "after quiet"]
    assert terminal[2].startswith("randopt candidates: 3/3 in ")
    assert proc.stderr == ""
    assert "a verl line 199" in log and "a warning 199" in log and "a line from a child process" in log


def test_quiet_error_reaches_the_terminal_with_its_fix_and_the_log(tmp_path):
    proc = _child(tmp_path, "fail")
    assert proc.returncode == 3
    log_path = RunDir(tmp_path / "run").console_log_path
    assert "RuntimeError: reward function not found; fix: set reward.custom_reward_function.path" in proc.stdout
    assert f"full log: {log_path}" in proc.stdout
    assert "Traceback (most recent call last)" in log_path.read_text()
    assert "a verl line" not in proc.stdout + proc.stderr
