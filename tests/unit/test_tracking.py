"""MLflow tracker behaviour that needs no Ray: orphaned runs of a killed driver."""

from __future__ import annotations


def test_runs_left_running_by_a_killed_driver_are_closed(tmp_path):
    """A SIGKILLed driver cannot end its MLflow runs; the next invocation on the host marks the
    parent and its RUNNING children KILLED, and leaves a live driver's runs alone."""
    from raydefense.tracking.mlflow_tracker import MlflowTracker

    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "orphans")
    dead = tracker.start_run("pipeline/run", tags={"raydefense.host": "h", "raydefense.pid": "11"})
    child = tracker.start_run("train/baseline", dead)
    done = tracker.start_run("train/teacher_1", dead)
    tracker.end_run(done)
    live = tracker.start_run("pipeline/run", tags={"raydefense.host": "h", "raydefense.pid": "22"})
    other_host = tracker.start_run(
        "pipeline/run", tags={"raydefense.host": "elsewhere", "raydefense.pid": "11"}
    )
    closed = tracker.close_orphans("h", alive=lambda pid: pid == 22)
    assert set(closed) == {dead, child}
    status = {
        r: tracker.client.get_run(r).info.status for r in (dead, child, done, live, other_host)
    }
    assert status == {
        dead: "KILLED",
        child: "KILLED",
        done: "FINISHED",
        live: "RUNNING",
        other_host: "RUNNING",
    }
