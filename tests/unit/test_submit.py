"""`raydefense submit` without a cluster: the frozen working dir, the job's environment (no
secrets, no MLFLOW_RUN_ID), token detection, the entrypoint, and one-line refusals before any
upload. The submission itself runs against a real multi-node cluster in
tests/e2e/test_cluster_submit.py."""

from __future__ import annotations

import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest

from raydefense.cli import main
from raydefense.distributed import submit as sub
from raydefense.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_the_snapshot_leaves_out_outputs_logs_envs_and_caches(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    (proj / "raydefense").mkdir(parents=True)
    (proj / "raydefense" / "__init__.py").write_text("")
    (proj / "raydefense" / "__pycache__").mkdir()
    (proj / "raydefense" / "__pycache__" / "x.pyc").write_bytes(b"0")
    for name in ("runs/exp/x.json", ".venv/bin/python", ".git/HEAD", "job.log", "mlflow.db"):
        (proj / name).parent.mkdir(parents=True, exist_ok=True)
        (proj / name).write_text("x")
    (proj / "configs").mkdir()
    (proj / "configs" / "mine.yaml").write_text("base: smoke\n")
    size = sub.snapshot(proj, tmp_path / "snap")
    kept = sorted(str(p.relative_to(tmp_path / "snap")) for p in (tmp_path / "snap").rglob("*"))
    assert kept == ["configs", "configs/mine.yaml", "raydefense", "raydefense/__init__.py"]
    assert size == len("base: smoke\n")
    with pytest.raises(ConfigError, match="not a raydefense project"):
        sub.snapshot(tmp_path / "snap" / "configs", tmp_path / "snap2")


def test_the_project_itself_snapshots_small(tmp_path: Path) -> None:
    size = sub.snapshot(ROOT, tmp_path / "snap")
    assert (tmp_path / "snap" / "raydefense" / "cli.py").is_file()
    assert not (tmp_path / "snap" / ".git").exists() and size < sub.MAX_SNAPSHOT_BYTES


def test_the_job_environment_carries_endpoints_never_secrets() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:8333",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_RUN_ID": "abc",
        "MLFLOW_TRACKING_PASSWORD": "pw",
    }
    assert sub.job_env(env) == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:8333",
        "AWS_REGION": "us-east-1",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    }


def test_token_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sub.token_available({"RAY_AUTH_TOKEN": "t"})
    assert not sub.token_available({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")})
    (tmp_path / "tok").write_text("t")
    assert sub.token_available({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")})
    monkeypatch.setenv("RAY_AUTH_MODE", "unset-by-the-test")  # records the original, then
    monkeypatch.delenv("RAY_AUTH_MODE")  # starts without a mode, as a user's shell would
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert sub.enable_token_auth()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # an explicit choice is kept
    assert not sub.enable_token_auth()


def test_the_entrypoint_runs_the_submitted_code() -> None:
    cmd = sub.entrypoint(["run", "--preset", "smoke", "--set", "sweep.training={a: [1, 2]}"])
    assert shlex.split(cmd) == [
        "python",
        "-m",
        "raydefense.cli",
        "run",
        "--preset",
        "smoke",
        "--set",
        "sweep.training={a: [1, 2]}",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit"], "submit needs a command"),
        (["submit", "--", "explode"], "submit needs a command"),
        (["submit", "run", "--preset", "nope"], "unknown preset 'nope'"),
        (["submit", "run", "--set", "train.steps=-1"], "train.steps"),
        (["submit", "run", "--config", "/etc/x.yaml"], "must be a relative path inside"),
        (["submit", "--address", "127.0.0.1:8265", "run"], "is not a dashboard URL"),
    ],
)
def test_bad_submissions_fail_in_one_line_before_any_upload(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # submit switches this process to token auth; undo it after the test (a later ray.init in
    # the same pytest process must see the environment it started with)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_an_unreachable_dashboard_is_one_line() -> None:
    """In a subprocess: the job client loads Ray's auth state once per process, and a later
    local Ray in this pytest process must not inherit it."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "raydefense.cli", "submit", "--address", "http://127.0.0.1:1"]
        + ["run", "--preset", "smoke"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "cannot use the Ray dashboard" in err[0]


def test_a_dataset_inside_the_project_is_refused_before_anything_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proj = tmp_path / "proj"
    (proj / "raydefense").mkdir(parents=True)
    (proj / "raydefense" / "__init__.py").write_text("")
    (proj / "data").mkdir()
    (proj / "data" / "big.bin").write_bytes(b"0" * 2048)
    (proj / "runs").mkdir()
    (proj / "runs" / "huge.bin").write_bytes(b"0" * 4096)  # excluded: never counted
    assert sorted(sub.snapshot_files(proj)) == [
        proj / "data" / "big.bin",
        proj / "raydefense" / "__init__.py",
    ]
    monkeypatch.setattr(sub, "MAX_SNAPSHOT_BYTES", 1024)
    with pytest.raises(ConfigError, match=r"would be .*largest file data/big\.bin"):
        sub.snapshot(proj, tmp_path / "snap")
    assert not (tmp_path / "snap").exists()


def test_local_inputs_on_a_multi_node_cluster_are_refused_in_one_line(tmp_path: Path) -> None:
    from raydefense.config import load_config

    cfg = load_config(
        "smoke",
        overrides=[
            "data.source=cifar10",
            "data.root=/data/cifar-10-batches-py",
            "data.split_file=splits/x.npz",
        ],
    )
    inputs = sub.local_inputs(cfg)
    assert inputs == [
        ("data.root", "/data/cifar-10-batches-py"),
        ("data.split_file", "splits/x.npz"),
    ]
    # Inside the working dir (its snapshot travels) or under a shared mount: allowed.
    assert sub.unstaged_inputs(inputs, tmp_path, ["/data"]) == []
    assert sub.unstaged_inputs(inputs, tmp_path, []) == [inputs[0]]
    asked: list[str] = []

    def nodes(n: int):
        def count(address: str) -> int:
            asked.append(address)
            return n

        return count

    sub.check_inputs_staged(inputs, tmp_path, [], "http://head:8265", nodes(1))  # one node: ok
    sub.check_inputs_staged(inputs, tmp_path, ["/data"], "http://head:8265", nodes(3))
    with pytest.raises(ConfigError) as e:
        sub.check_inputs_staged(inputs, tmp_path, [], "http://head:8265", nodes(3))
    msg = str(e.value)
    assert "\n" not in msg and "data.root=/data/cifar-10-batches-py" in msg
    assert "cluster of 3 nodes" in msg and "--shared-path" in msg
    assert asked == ["http://head:8265", "http://head:8265"]  # not asked when all are staged


def test_alive_nodes_are_counted_client_side_so_a_dead_worker_is_not_truncation() -> None:
    """Ray 2.60's server-side node filter reports filtered-out dead nodes as truncated output
    (and `list_nodes` then raises); the count filters the unfiltered records itself."""
    records = [
        {"node_id": "a", "state": "ALIVE"},
        {"node_id": "b", "state": "DEAD"},
        SimpleNamespace(node_id="c", state="ALIVE"),
    ]
    assert sub.count_alive(records) == 2
    assert sub.count_alive([]) == 0
