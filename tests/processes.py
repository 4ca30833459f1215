"""Test helper: SIGKILL a CLI run and everything it started (Ray's head and workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil


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
