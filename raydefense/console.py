"""What a person reads while a command runs: raydefense's own lines and one progress line per
job (fit, labelling, scoring), nothing of Ray's internals unless asked (`--verbose`).

Quiet mode (the default) moves everything the process writes to file descriptors 1 and 2 (Ray's
C++ core worker, its Python loggers and raylet warnings, Ray Data, MLflow, transformers) into a
log file, and prints raydefense's lines and progress on a duplicate of the original stderr (its
results on one of the original stdout): a live multi-line table
when that is a terminal (rich), otherwise plain timestamped lines without ANSI codes, one per
job each time it passes another tenth of its work. Ray's worker logs stay in its session log
(`/tmp/ray/session_latest/logs`): the Ray backend starts Ray without `log_to_driver`.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO

VERBOSE_ENV = "RAYDEFENSE_VERBOSE"  # "1": Ray's logs on the console (inherited by workers)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


@dataclass
class Job:
    """One job's progress as reported: done of total units, a short note (loss, rate)."""

    done: float
    total: float
    note: str = ""
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    first_done: Optional[float] = None  # `done` when first seen (a fit reports from step 100)
    run: int = 0  # how many times a job of this name started before (a sweep's next trial)

    def __post_init__(self) -> None:
        if self.first_done is None:
            self.first_done = self.done

    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0

    def eta_s(self) -> Optional[float]:
        """Seconds left at the rate seen so far; None until two reports, or once done."""
        progressed = self.done - (self.first_done or 0.0)
        elapsed = self.updated - self.started
        if self.fraction() >= 1 or progressed <= 0 or elapsed <= 0:
            return None
        return (self.total - self.done) * elapsed / progressed


def progress_line(name: str, job: Job, width: int = 20) -> str:
    """'train baseline  [######--------------]  33%  200/600  ETA 2.3 min  loss 0.1234' (plain
    text; no ANSI codes)."""
    f = job.fraction()
    bar = "#" * round(f * width) + "-" * (width - round(f * width))
    eta = job.eta_s()
    when = "done" if f >= 1 else (f"ETA {_duration(eta)}" if eta is not None else "ETA ?")
    count = f"{job.done:.0f}/{job.total:.0f}"
    note = f"  {job.note}" if job.note else ""
    return f"{name:<22} [{bar}] {100 * f:3.0f}%  {count:>11}  {when}{note}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class PlainProgress:
    """Non-terminal output: a timestamped line per job at every tenth of its work (and at 100%).
    stream None: whatever sys.stderr is when a line is written."""

    def __init__(self, stream: Optional[TextIO]) -> None:
        self.stream = stream
        self.shown: dict[str, tuple[int, int]] = {}  # name -> (run, last tenth shown)

    def update(self, jobs: Mapping[str, Job]) -> None:
        for name, job in jobs.items():
            tenth = int(job.fraction() * 10)
            run, shown = self.shown.get(name, (job.run, -1))
            if run != job.run or shown < tenth:  # a new run of the job starts over
                self.shown[name] = (job.run, tenth)
                stamp = time.strftime("%H:%M:%S")
                out = self.stream or sys.stderr
                out.write(f"[raydefense {stamp}] {progress_line(name, job)}\n")
                out.flush()

    def stop(self) -> None:
        pass


class LiveProgress:
    """Terminal output: one live line per running job under the log lines (rich)."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream)
        self.live = Live(console=self.console, refresh_per_second=2, transient=True)
        self.live.start()

    def update(self, jobs: Mapping[str, Job]) -> None:
        from rich.text import Text

        running = [progress_line(n, j) for n, j in jobs.items() if j.fraction() < 1]
        self.live.update(Text("\n".join(running)))

    def stop(self) -> None:
        self.live.stop()


@dataclass
class ConsoleSession:
    """The console of one command: where raydefense prints its lines and progress (`stream`;
    None: the current sys.stderr) and its results (`out`; None: the current sys.stdout), and
    the log file that took the rest (quiet mode)."""

    stream: Optional[TextIO]
    log_path: Optional[str]
    progress: Any  # PlainProgress | LiveProgress
    out: Optional[TextIO] = None

    def result(self, text: str) -> None:
        """A command's result (summary, table) on its standard output."""
        target = self.out or sys.stdout
        target.write(text + "\n")
        target.flush()

    def print(self, text: str) -> None:
        if isinstance(self.progress, LiveProgress):
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            out = self.stream or sys.stderr
            out.write(text + "\n")
            out.flush()


_session: Optional[ConsoleSession] = None
_lock = threading.Lock()


def session() -> Optional[ConsoleSession]:
    return _session


class _ConsoleHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        s = _session
        if s is None:
            return
        try:
            s.print(self.format(record))
        except Exception:  # a broken console never stops the run
            self.handleError(record)


def open_console(quiet: bool, command: str) -> ConsoleSession:
    """Set up this process's console. quiet (once per process; the real CLI): fd 2 goes to a
    log file under $TMPDIR/raydefense-logs/ and raydefense prints on a duplicate of the
    original stderr. Otherwise (--verbose, or main() called in-process) raydefense prints on
    the current sys.stderr and nothing is redirected."""
    global _session
    with _lock:
        if _session is not None and _session.log_path is not None:
            return _session  # stderr is already redirected: keep that console
        log_path, stream, out = None, None, None
        if quiet:
            sys.stdout.flush()
            sys.stderr.flush()
            console_fd, out_fd = os.dup(2), os.dup(1)
            folder = os.path.join(tempfile.gettempdir(), "raydefense-logs")
            os.makedirs(folder, exist_ok=True)
            log_path = os.path.join(
                folder, f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            )
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log_fd, 2)  # Ray (C++ and Python), Ray Data, MLflow, library warnings
            os.dup2(log_fd, 1)  # Ray prints the raylet's warnings on stdout
            os.close(log_fd)
            stream = os.fdopen(console_fd, "w", buffering=1)
            out = os.fdopen(out_fd, "w", buffering=1)
        tty = (stream or sys.stderr).isatty()
        progress: Any = LiveProgress(stream) if tty and stream else PlainProgress(stream)
        _session = ConsoleSession(stream, log_path, progress, out)
        handler = _ConsoleHandler()
        fmt = "[raydefense] %(message)s" if tty else "[raydefense %(asctime)s] %(message)s"
        handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
        logger = logging.getLogger("raydefense")
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
        return _session


def result(text: str) -> None:
    """Print a command's result on its standard output (the real one in quiet mode)."""
    if _session is not None:
        _session.result(text)
    else:
        print(text)


def close_console() -> None:
    if _session is not None:
        _session.progress.stop()


def show_progress(jobs: Mapping[str, Job]) -> None:
    """Draw the latest progress of every job (no-op without a console)."""
    if _session is not None:
        _session.progress.update(jobs)


def poll(fetch: Callable[[], Mapping[str, Job]], every_s: float = 2.0) -> Callable[[], None]:
    """Show `fetch()`'s jobs every `every_s` seconds on a daemon thread; returns stop(), which
    shows the last state once more."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                show_progress(fetch())
            except Exception:  # the cluster went away: the command reports that itself
                return

    thread = threading.Thread(target=loop, name="raydefense-progress", daemon=True)
    thread.start()

    def finish() -> None:
        stop.set()
        thread.join(timeout=every_s + 1)
        try:
            show_progress(fetch())
        except Exception:
            pass

    return finish
