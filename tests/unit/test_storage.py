"""Storage on a local root: staged publishing, manifests, completion markers, refused roots."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from raydefense.errors import StorageError
from raydefense.run.markers import is_complete, mark_complete, unpublish
from raydefense.storage import Storage, explain_storage_error


@pytest.fixture
def storage(tmp_path):
    return Storage(str(tmp_path / "root"), "exp")


def test_publish_dir_replaces_the_target_with_the_staged_files(storage, tmp_path):
    storage.write_bytes("out/old.bin", b"stale")
    with storage.staging("out") as staging:
        storage.write_bytes(f"{staging}/a.bin", b"A")
        storage.write_bytes(f"{staging}/sub/b.bin", b"BB")
        assert storage.read_bytes("out/old.bin") == b"stale"  # readers still see the old files
        storage.publish_dir(staging, "out")
    assert storage.files("out") == ["a.bin", "sub/b.bin"]
    assert storage.listdir("") == ["out"]  # the staging prefix is gone


def test_a_failed_staged_write_leaves_nothing_behind(storage):
    with pytest.raises(RuntimeError):
        with storage.staging("out") as staging:
            storage.write_bytes(f"{staging}/a.bin", b"half")
            raise RuntimeError("worker died")
    assert storage.listdir("") == []


def test_upload_dir_is_staged(storage, tmp_path):
    local = tmp_path / "ckpt"
    (local / "ema").mkdir(parents=True)
    (local / "ema" / "w.bin").write_bytes(b"w" * 10)
    storage.upload_dir(str(local), "models/m")
    assert storage.files("models/m") == ["ema/w.bin"]
    assert storage.listdir("models") == ["m"]


def test_manifest_lists_sizes_hashes_and_parquet_rows(storage):
    storage.write_table("stage/t.parquet", pa.table({"x": list(range(7))}))
    storage.write_bytes("stage/blob.bin", b"hello")
    storage.write_json("stage/_COMPLETE.json", {})
    m = storage.manifest("stage")
    assert set(m) == {"stage/t.parquet", "stage/blob.bin"}  # the marker is not its own output
    assert m["stage/t.parquet"]["rows"] == 7
    assert m["stage/blob.bin"] == {"bytes": 5, "sha256": hashlib.sha256(b"hello").hexdigest()}
    assert storage.verify_manifest(m) == []


def test_a_marker_whose_files_changed_is_not_complete(storage):
    storage.write_bytes("stage/a.bin", b"12345")
    storage.write_bytes("stage/b.bin", b"xyz")
    mark_complete(storage, "stage/_COMPLETE.json", "fp", {}, prefixes=("stage",))
    marker = storage.read_json("stage/_COMPLETE.json")
    assert set(marker["manifest"]) == {"stage/a.bin", "stage/b.bin"}
    assert is_complete(storage, "stage/_COMPLETE.json", "fp")
    assert not is_complete(storage, "stage/_COMPLETE.json", "other-fp")
    storage.write_bytes("stage/a.bin", b"123")  # truncated by a crashed rewrite
    assert not is_complete(storage, "stage/_COMPLETE.json", "fp")
    storage.write_bytes("stage/a.bin", b"12345")
    storage.delete("stage/b.bin")
    assert not is_complete(storage, "stage/_COMPLETE.json", "fp")
    storage.write_bytes("stage/b.bin", b"xyz")
    assert is_complete(storage, "stage/_COMPLETE.json", "fp")
    unpublish(storage, "stage/_COMPLETE.json")
    assert not is_complete(storage, "stage/_COMPLETE.json", "fp")


@pytest.mark.parametrize(
    "root",
    [
        "s3://AKIAXXXX:topsecret@bucket/prefix",
        "s3://bucket/prefix?access_key=AKIA&secret_key=topsecret",
    ],
)
def test_roots_with_credentials_are_refused(root):
    with pytest.raises(StorageError, match="must not contain credentials") as e:
        Storage(root, "exp")
    assert "topsecret" not in str(e.value)


def test_local_unwritable_root_fails_fast(tmp_path):
    (tmp_path / "a_file").write_text("not a directory")  # (chmod does not stop root)
    with pytest.raises(StorageError, match="not usable: cannot write a test file there"):
        Storage(str(tmp_path / "a_file" / "runs"), "exp").check_writable()


def test_storage_errors_never_echo_the_secret(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    msg = explain_storage_error("s3://b/p", OSError("signature mismatch for s3cr3t-value"))
    assert "s3cr3t-value" not in msg and "rejected the credentials" in msg


def test_force_train_starts_over_instead_of_resuming_the_finished_run(tmp_path):
    from raydefense.pipeline import stage_prepare, stage_train
    from raydefense.run.context import Backend, RunContext
    from raydefense.run.fingerprints import stage_fingerprints
    from raydefense.run.local import LocalFitter

    from conftest import tiny_config

    cfg = tiny_config(
        tmp_path,
        **{"attacks.enabled": "[loss]", "train.steps": "2", "train.checkpoint_every": "2"},
    )
    storage = Storage(cfg.storage.root, cfg.experiment)
    ctx = RunContext(cfg=cfg, storage=storage, backend=Backend(fitter=LocalFitter()))
    ctx.fingerprints = stage_fingerprints(cfg)
    stage_prepare(ctx)
    stage_train(ctx)
    # each fit's checkpoints under its deterministic run name
    runs = {m: f"ray_train/{m}-{ctx.fingerprints['targets'][:12]}" for m in ("baseline",
            "teacher_1", "teacher_2")}  # fmt: skip
    assert sorted(storage.listdir("ray_train")) == sorted(r.split("/")[1] for r in runs.values())
    # A resume from these runs would now fail: their newest checkpoint points nowhere.
    for rel in runs.values():
        storage.write_json(f"{rel}/local/latest.json", {"dir": f"{rel}/local/step-999"})
    stage_train(ctx)  # complete: nothing to fit, nothing resumed
    ctx.force = {"train"}
    stage_train(ctx)  # the runs are deleted first: each fit starts over
    for rel in runs.values():
        assert storage.read_json(f"{rel}/local/latest.json") == {"dir": f"{rel}/local/step-2"}
    assert all(
        is_complete(storage, f"models/{m}/_COMPLETE.json", ctx.fingerprints["targets"])
        for m in runs
    )
