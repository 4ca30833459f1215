"""Test helpers: run the CLI as a user does; SIGKILL a CLI run and everything it started (Ray's
head and workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import psutil


def run_cli(
    cwd: Path, *args: str, timeout: int = 900, env: Optional[dict] = None
) -> subprocess.CompletedProcess:
    """`python -m raydefense.cli ARGS` in `cwd`, output captured; `env` (default: the caller's
    environment without RAY_ADDRESS, so a fresh local Ray)."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "raydefense.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def session_of(sid: int) -> list:
    """Live (non-zombie) processes of session sid."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (OSError, psutil.Error):
            pass
    return out


def _title(p) -> str:
    try:
        return (p.cmdline() or [p.name()])[0].split()[0]
    except (psutil.Error, IndexError):
        return "?"


def kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL the run: the driver's process group (the driver and Ray's head processes), then
    every process left in its session (Ray workers lead process groups of their own), until none
    is left: a worker still writing a checkpoint would race the rerun."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    outside = [_title(p) for p in session_of(proc.pid)]
    print(
        f"\nkilled run {proc.pid}: {len(outside)} processes outside its process group: "
        f"{sorted(set(outside))}"
    )
    deadline = time.monotonic() + 60
    while survivors := session_of(proc.pid):
        assert time.monotonic() < deadline, f"processes of the killed run survive: {survivors}"
        for p in survivors:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(survivors, timeout=5)


def start_cli(args: list[str], cwd: Path, log_name: str) -> tuple[subprocess.Popen, Path]:
    """`python -m raydefense.cli ARGS` in its own session (its process group holds the driver
    and the local Ray cluster's head processes; no RAY_ADDRESS, so it starts one), output to
    cwd/<log_name>."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = cwd / log_name
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "raydefense.cli", *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, log


def finish_cli(args: list[str], cwd: Path, log_name: str, timeout_s: int) -> str:
    """Run the CLI to completion (killed with its cluster if it takes over timeout_s); fails
    the test on a non-zero exit. Returns the output."""
    import pytest

    proc, log = start_cli(args, cwd, log_name)
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_run(proc)
        pytest.fail(
            f"{log_name}: no result in {timeout_s}s\n{log.read_text(errors='replace')[-4000:]}"
        )
    text = log.read_text(errors="replace")
    assert rc == 0, f"{log_name}: exit {rc}\n{text[-4000:]}"
    return text


class ActorKiller:
    """SIGKILLs a Ray actor mid-task: the first process whose title names `actor` (Ray sets
    `ray::<Actor>.<method>` while a method runs) once it starts its (after + 1)-th task, so
    `after` tasks have finished before the kill. Run as a context manager around the work;
    `killed` then holds the pid (None: the work ended first)."""

    def __init__(self, actor: str, after: int = 1, method: str = "submit") -> None:
        import threading

        self.actor, self.after, self.method = actor, after, method
        self.killed: int | None = None
        self.killed_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        busy: dict[int, bool] = {}  # pid -> running a task at the last look
        starts: dict[int, int] = {}  # pid -> tasks started
        while not self._stop.is_set() and self.killed is None:
            for p in psutil.process_iter(["cmdline"]):
                title = (p.info.get("cmdline") or [""])[0]
                if self.actor not in title:
                    continue
                running = title.endswith(f".{self.method}")
                if running and not busy.get(p.pid, False):
                    starts[p.pid] = starts.get(p.pid, 0) + 1
                    if starts[p.pid] > self.after:
                        try:
                            p.kill()
                        except psutil.Error:
                            continue
                        self.killed, self.killed_at = p.pid, time.monotonic()
                        return
                busy[p.pid] = running
            time.sleep(0.005)

    def __enter__(self) -> ActorKiller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
