"""Storage and MLflow artifacts against a real S3 server (SeaweedFS on loopback), and the
fail-fast checks for a missing bucket, rejected credentials and an unreachable endpoint."""

from __future__ import annotations

import socket
import uuid

import pyarrow as pa
import pytest

from raydefense.errors import StorageError
from raydefense.run.markers import is_complete, mark_complete
from raydefense.storage import Storage

pytestmark = pytest.mark.s3


@pytest.fixture
def bucket(s3_env):
    name = f"rd-{uuid.uuid4().hex[:10]}"
    s3_env.create_bucket(name)
    return name


def test_tables_json_and_staged_dirs_round_trip_on_s3(s3_env, bucket, tmp_path):
    storage = Storage(f"s3://{bucket}/runs", "exp")
    storage.check_writable()
    assert storage.uri("prepare") == f"s3://{bucket}/runs/exp/prepare"
    storage.write_table("prepare/rows.parquet", pa.table({"x": [1, 2, 3]}))
    assert storage.read_table("prepare/rows.parquet").column("x").to_pylist() == [1, 2, 3]
    storage.write_json("prepare/plan.json", {"k": [1]})
    assert storage.read_json("prepare/plan.json") == {"k": [1]}
    local = tmp_path / "ckpt"
    (local / "ema").mkdir(parents=True)
    (local / "ema" / "w.bin").write_bytes(b"w" * 1000)
    (local / "state.pt").write_bytes(b"s")
    storage.upload_dir(str(local), "models/m")
    assert storage.files("models/m") == ["ema/w.bin", "state.pt"]
    mark_complete(storage, "models/m/_COMPLETE.json", "fp", {}, prefixes=("models/m",))
    assert is_complete(storage, "models/m/_COMPLETE.json", "fp")
    keys = s3_env.list_keys(bucket, "runs/exp/")
    assert "runs/exp/models/m/ema/w.bin" in keys
    assert not [k for k in keys if ".staging-" in k or ".tmp-" in k or "_probe" in k]
    storage.delete("models/m/state.pt")
    assert not is_complete(storage, "models/m/_COMPLETE.json", "fp")
    # a downloaded copy for code that needs a local directory (diffusers from_pretrained)
    copy = storage.local_dir("models/m", str(tmp_path / "cache"))
    assert (tmp_path / "cache").exists() and (copy and open(f"{copy}/ema/w.bin", "rb").read())


def test_missing_bucket_fails_fast(s3_env):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist") as e:
        Storage("s3://no-such-bucket/runs", "exp").check_writable()
    assert "aws s3 mb s3://no-such-bucket" in str(e.value) and "\n" not in str(e.value)


def test_bad_credentials_fail_fast(s3_env, bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
    with pytest.raises(StorageError, match="rejected the credentials") as e:
        Storage(f"s3://{bucket}/runs", "exp").check_writable()
    assert "definitely-wrong-secret" not in str(e.value)
    assert s3_env.list_keys(bucket) == []  # nothing written


def test_unreachable_endpoint_fails_fast(s3_env, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint http://127.0.0.1"):
        Storage("s3://anything/runs", "exp").check_writable()


def test_mlflow_artifacts_land_next_to_the_run_on_s3(s3_env, bucket, tmp_path):
    from raydefense.tracking.mlflow_tracker import make_tracker

    storage = Storage(f"s3://{bucket}/runs", "exp")
    tracker = make_tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "s3-exp", True, storage.uri())
    run = tracker.start_run("pipeline/run", params={"storage.root": storage.root_uri})
    art = tmp_path / "report.md"
    art.write_text("# report")
    tracker.log_artifact(run, str(art), "report")
    tracker.end_run(run)
    keys = s3_env.list_keys(bucket, "runs/exp/mlflow/")
    assert any(k.endswith("/artifacts/report/report.md") for k in keys), keys
    # an MLflow server decides its own artifact store
    assert (
        tracker.client.get_experiment(tracker.experiment_id).artifact_location
        == f"s3://{bucket}/runs/exp/mlflow"
    )
