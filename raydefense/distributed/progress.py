"""Progress from wherever work runs (a fit's controller, labelling actors, the scoring loop) to
the driver's console, through one named actor, instead of forwarding every worker's stdout
(`log_to_driver`), which would bring Ray's own log lines with it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Optional

import ray

from raydefense.console import Job, poll

BOARD = "raydefense-progress"
_handle: dict[str, Any] = {}


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Latest progress per job name: done of total units, a note."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}

    def set(self, name: str, done: float, total: float, note: str = "", new: bool = False) -> None:
        """`new`, or less done than before (a fit restarted from a checkpoint, or the same job
        in a sweep's next trial): a new run of the job."""
        job = self.jobs.get(name)
        if job is None or new or done < job.done:
            job = self.jobs[name] = Job(done, total, note, run=job.run + 1 if job else 0)
        job.done, job.total, job.note, job.updated = done, total, note, time.time()

    def add(self, name: str, units: float, total: float, note: str = "") -> None:
        """Count `units` more done; after a finished run, they start the next run."""
        job = self.jobs.get(name)
        finished = job is not None and job.done >= job.total
        base = job.done if job is not None and not finished else 0.0
        self.set(name, base + units, total, note, new=finished)

    def snapshot(self) -> dict[str, Job]:
        return dict(self.jobs)


def start_board() -> Callable[[], None]:
    """Create this job's board (the driver, once per Ray session) and show it on the console
    until the returned stop() is called."""
    board = ProgressBoard.options(name=BOARD, get_if_exists=True).remote()  # type: ignore[attr-defined]
    _handle["board"] = board
    return poll(lambda: ray.get(board.snapshot.remote(), timeout=10))


def _board() -> Optional[Any]:
    if "board" not in _handle:
        try:
            _handle["board"] = ray.get_actor(BOARD)
        except ValueError:  # no board: a test, or a Ray session started elsewhere
            _handle["board"] = None
    return _handle["board"]


def report(name: str, done: float, total: float, note: str = "") -> None:
    """Set a job's progress (fire and forget; nothing without a board)."""
    board = _board()
    if board is not None:
        board.set.remote(name, done, total, note)


def advance(name: str, units: float, total: float, note: str = "") -> None:
    """Add `units` of work done to a job (fire and forget)."""
    board = _board()
    if board is not None:
        board.add.remote(name, units, total, note)
