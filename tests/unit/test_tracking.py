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


def test_an_unreachable_tracking_server_fails_in_seconds_with_one_line():
    """Nothing listens on port 1: the tracker refuses at once, naming the URI and the fix
    (MLflow's own retries would take minutes)."""
    import time

    import pytest

    from raydefense.errors import ConfigError
    from raydefense.tracking.mlflow_tracker import MlflowTracker

    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        MlflowTracker("http://127.0.0.1:1", "x")
    msg = str(e.value)
    assert time.monotonic() - t0 < 10
    assert "\n" not in msg and "'http://127.0.0.1:1' is unreachable" in msg
    assert "tracking.enabled=false" in msg


def test_a_server_that_never_answers_fails_within_the_probe_budget():
    """A socket that accepts connections but never answers HTTP: the first MLflow call gives
    up after one retry of PROBE_TIMEOUT_S each, with one line."""
    import socket
    import time

    import pytest

    from raydefense.errors import ConfigError
    from raydefense.tracking import mlflow_tracker
    from raydefense.tracking.mlflow_tracker import MlflowTracker

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)  # the kernel completes handshakes; nobody ever reads or writes
        uri = f"http://127.0.0.1:{srv.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(ConfigError) as e:
            MlflowTracker(uri, "x")
        took = time.monotonic() - t0
    assert f"tracking.uri {uri!r} is not usable" in str(e.value) and "\n" not in str(e.value)
    assert took < 4 * mlflow_tracker.PROBE_TIMEOUT_S + 5, took


def test_the_cli_stops_on_an_unreachable_tracking_server_before_any_stage(tmp_path, capsys):
    import time

    from raydefense.cli import main

    t0 = time.monotonic()
    rc = main(
        [
            "run",
            "--preset",
            "smoke",
            "--set",
            f"storage.root={tmp_path / 'runs'}",
            "--set",
            "tracking.uri=http://127.0.0.1:1",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and time.monotonic() - t0 < 20  # mostly imports; the probe is instant
    assert len(err) == 1 and "tracking.uri 'http://127.0.0.1:1' is unreachable" in err[0]
    assert not list((tmp_path / "runs").rglob("*.json"))  # no stage ran
