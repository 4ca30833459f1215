"""The console: progress lines (plain text, ETA), one plain line per job per tenth of its work,
and the quiet mode that moves everything written to fd 2 into a log file."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

from raydefense.console import Job, PlainProgress, progress_line
from raydefense.distributed.progress import ProgressBoard


def test_progress_line_has_bar_count_eta_and_note() -> None:
    job = Job(done=200, total=600, note="loss 0.1234", started=0.0, updated=60.0, first_done=0)
    line = progress_line("train baseline", job)
    assert line.startswith("train baseline") and "[#######-------------]" in line
    assert " 33%" in line and "200/600" in line and "ETA 2.0 min" in line
    assert line.endswith("loss 0.1234") and "\x1b" not in line
    assert "done" in progress_line("x", Job(5, 5)) and "ETA ?" in progress_line("x", Job(0, 5))
    # a fit first reports at step 100: the rate counts from there
    late = Job(done=100, total=600, started=0.0, updated=0.0)
    assert late.eta_s() is None
    late.done, late.updated = 200, 30.0
    assert late.eta_s() == 120.0


def test_plain_progress_prints_each_tenth_once() -> None:
    out = io.StringIO()
    view = PlainProgress(out)
    for done in (0, 5, 12, 13, 55, 100, 100):
        view.update({"label student": Job(done, 100)})
    lines = out.getvalue().splitlines()
    assert [ln.split("%")[0].split()[-1] for ln in lines] == ["0", "12", "55", "100"]
    assert all(ln.startswith("[raydefense ") for ln in lines)


def test_a_jobs_next_run_is_shown_from_its_start() -> None:
    """A sweep's next trial runs jobs of the same names: the board starts a new run of each
    (fewer units done than before, or units added after a finished run), and the console
    shows it from its first tenth again."""
    board = ProgressBoard.__ray_actor_class__()  # the actor's class, called in-process
    out = io.StringIO()
    view = PlainProgress(out)
    for _ in range(2):
        board.add("label student", 50, 100)
        view.update(board.snapshot())
    for step in (1000, 4000):
        board.set("train student", step, 4000)
        view.update(board.snapshot())
    board.add("label student", 30, 100)  # the next trial
    board.set("train student", 100, 4000)
    view.update(board.snapshot())
    assert board.snapshot()["label student"].run == 1
    assert board.snapshot()["label student"].done == 30
    lines = [ln.split("] ", 1)[1] for ln in out.getvalue().splitlines()]
    assert [ln.split("[")[0].strip() for ln in lines] == ["label student"] * 2 + [
        "train student"
    ] * 2 + ["label student", "train student"]
    assert " 30%" in lines[4] and "  2%" in lines[5]


def test_quiet_console_moves_fd2_to_a_log_and_keeps_raydefense_lines() -> None:
    code = textwrap.dedent(
        """
        import logging, os, sys
        from raydefense.console import open_console
        c = open_console(True, "run")
        os.write(2, b"[2026 E 1 1] core_worker.cc:1: noise from C++\\n")
        print("python warning noise", file=sys.stderr)
        print("stdout noise from Ray")
        logging.getLogger("raydefense.stage").info("prepare: done")
        c.print("raydefense: error: shown")
        sys.stderr.flush()
        c.result(c.log_path)
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    log_path = res.stdout.strip().splitlines()[-1]
    assert res.stderr.splitlines()[0].endswith("] prepare: done")
    assert res.stderr.splitlines()[1] == "raydefense: error: shown"
    assert "noise" not in res.stderr and "noise" not in res.stdout
    logged = open(log_path).read()
    assert "core_worker.cc:1: noise from C++" in logged and "python warning noise" in logged
    assert "stdout noise from Ray" in logged
    os.remove(log_path)
