"""Test helper: SIGKILL a CLI run and everything it started (Ray's head and workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

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
    print(f"\nkilled run {proc.pid}: {len(outside)} processes outside its process group: "
          f"{sorted(set(outside))}")
    deadline = time.monotonic() + 60
    while survivors := session_of(proc.pid):
        assert time.monotonic() < deadline, f"processes of the killed run survive: {survivors}"
        for p in survivors:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(survivors, timeout=5)
