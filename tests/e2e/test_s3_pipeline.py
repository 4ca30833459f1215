"""End to end on S3 with a CIFAR-format dataset: `raydefense run --preset smoke` with
data.source=cifar10 (a fake `cifar-10-batches-py` at 32x32), a SecMI/PIA-format split file,
storage.root=s3://... on a real local S3 server, and tracking on a real `mlflow server` whose
artifacts go to S3; then a cached rerun, the fail-fast storage checks through the CLI, and a scan
for leaked credentials."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import digits_as_cifar, write_cifar10
from processes import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.s3]

BUCKET = "raydefense-e2e"
PREFIX = "ci/runs"
# The smoke preset at 32x32, trimmed to what this test checks (storage, formats, resume), so it
# stays a few minutes on 2 cores; the digits smoke run covers every attack.
SETS = [
    "train.steps=30",
    "attacks.enabled=[loss, pia, blackbox_nn]",
    "attacks.loss.draws=2",
    "attacks.pia.timesteps=[100, 200]",
    "attacks.bootstrap=50",
    "attacks.blackbox_nn.num_generated=16",
    "quality.num_generated=16",
    "sampling.num_images=4",
    "sampling.num_steps=5",
]


def cli(cwd: Path, env: dict, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return run_cli(cwd, *args, timeout=timeout, env=env)


def s3_args(data: Path, tracking_uri: str, *extra: str) -> list[str]:
    sets = [
        "data.source=cifar10",
        f"data.root={data}",
        f"tracking.uri={tracking_uri}",
        f"data.split_file={data / 'FAKE_train_ratio0.5.npz'}",
        f"storage.root=s3://{BUCKET}/{PREFIX}",
        *SETS,
        *extra,
    ]
    return ["--preset", "smoke", *[a for s in sets for a in ("--set", s)]]


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory, local_s3, mlflow_server):
    from raydefense.data.plan import write_split_file

    data = tmp_path_factory.mktemp("cifar")
    images, labels = digits_as_cifar(400)
    write_cifar10(data / "cifar-10-batches-py", per_batch=80, images=images, labels=labels)
    perm = np.random.default_rng(0).permutation(400)
    write_split_file(str(data / "FAKE_train_ratio0.5.npz"), perm[:200], perm[200:])
    local_s3.create_bucket(BUCKET)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(local_s3.env())
    cwd = tmp_path_factory.mktemp("work")
    started = time.time()
    first = cli(cwd, env, "run", *s3_args(data, mlflow_server["uri"]))
    assert first.returncode == 0, first.stderr[-3000:]
    return {
        "cwd": cwd,
        "data": data,
        "env": env,
        "first": first,
        "started": started,
        "s3": local_s3,
        "perm": perm,
        "mlflow": mlflow_server,
    }


def read_json(s3, key: str) -> dict:
    return json.loads(s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_everything_lands_on_s3_and_nothing_locally(s3_run):
    s3, cwd = s3_run["s3"], s3_run["cwd"]
    base = f"{PREFIX}/smoke"
    keys = s3.list_keys(BUCKET, base + "/")
    tops = {k[len(base) + 1 :].split("/", 1)[0] for k in keys}
    assert {"prepare", "models", "ray_train", "distill", "evaluate", "report"} <= tops
    assert any(k.startswith(f"{base}/ray_train/student-") and "/checkpoint_" in k for k in keys)
    assert any(
        k.startswith(f"{base}/distill/soft_targets/") and k.endswith(".parquet") for k in keys
    )
    assert not [k for k in keys if ".staging-" in k or ".tmp-" in k or "/_probe" in k]
    assert not (cwd / "runs").exists() and not (cwd / "mlruns").exists()
    results = read_json(s3, f"{base}/report/results.json")
    assert {r["target"] for r in results["attacks"]} == {
        "baseline",
        "teacher_1",
        "teacher_2",
        "dualmd",
        "student",
    }
    assert results["dataset"] == "cifar10" and results["data"]["split_file"].endswith(
        "FAKE_train_ratio0.5.npz"
    )
    assert f"{base}/report/report.html" in keys
    plan = read_json(s3, f"{base}/prepare/plan.json")
    assert plan["image_shape"] == [3, 32, 32] and plan["source"] == "cifar10"
    assert plan["num_members"] == 64 and plan["num_nonmembers"] == 64


def test_the_split_file_decides_membership(s3_run):
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    s3, perm = s3_run["s3"], s3_run["perm"]
    fs = pafs.S3FileSystem(
        endpoint_override=s3.endpoint,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        region="us-east-1",
    )
    rows = pq.read_table(
        f"{BUCKET}/{PREFIX}/smoke/prepare/rows.parquet", filesystem=fs, columns=["row_id", "split"]
    ).to_pydict()
    members = {r for r, s in zip(rows["row_id"], rows["split"]) if s == "member"}
    nonmembers = {r for r, s in zip(rows["row_id"], rows["split"]) if s == "nonmember"}
    assert members <= set(perm[:200].tolist()) and nonmembers <= set(perm[200:].tolist())


def test_markers_carry_manifests_of_their_outputs(s3_run):
    s3 = s3_run["s3"]
    base = f"{PREFIX}/smoke"
    soft = read_json(s3, f"{base}/distill/soft_targets/_COMPLETE.json")
    parquet = {p: e for p, e in soft["manifest"].items() if p.endswith(".parquet")}
    assert parquet and sum(e["rows"] for e in parquet.values()) == soft["outputs"]["rows"]
    for p, e in parquet.items():
        head = s3.client().head_object(Bucket=BUCKET, Key=f"{base}/{p}")
        assert head["ContentLength"] == e["bytes"] and len(e["sha256"]) == 64
    train = read_json(s3, f"{base}/train/_COMPLETE.json")
    assert any(p.startswith("models/teacher_2/ema/") for p in train["manifest"])


def test_cached_rerun_on_s3_trains_nothing(s3_run):
    t0 = time.perf_counter()
    second = cli(
        s3_run["cwd"], s3_run["env"], "run", *s3_args(s3_run["data"], s3_run["mlflow"]["uri"])
    )
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in ("prepare", "train", "distill", "evaluate"):
        assert f"{stage}: complete" in second.stderr, second.stderr[-2000:]
    assert time.perf_counter() - t0 < 90


def test_runs_read_back_from_the_mlflow_server(s3_run):
    """The run tree through a real tracking server, its artifacts in the server's S3 store."""
    from mlflow.tracking import MlflowClient

    server = s3_run["mlflow"]
    client = MlflowClient(tracking_uri=server["uri"])
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    # The server is the session's: the cluster tests log "smoke" runs to it too. This module's
    # first invocation is the earliest parent run that started after the fixture did.
    ours = [
        r
        for r in runs
        if r.info.run_name == "pipeline/run" and r.info.start_time >= s3_run["started"] * 1000 - 1
    ]
    parent = min(ours, key=lambda r: r.info.start_time)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["data.source"] == "cifar10"
    assert parent.data.tags.get("version.mlflow") and "teacher_1.loss.auc" in parent.data.metrics
    children = {
        r.info.run_name: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert {
        "train/baseline",
        "train/teacher_1",
        "train/teacher_2",
        "distill/soft_targets",
        "train/student",
        "evaluate/dualmd",
        "evaluate/student",
    } <= set(children)
    history = client.get_metric_history(children["train/student"].info.run_id, "loss")
    assert history and history[-1].step == 30
    assert {"prepare", "report", "evaluate"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    keys = s3_run["s3"].list_keys(server["bucket"], server["prefix"] + "/")
    assert any(k.endswith("/report/report.md") for k in keys), keys[:20]


def test_credentials_never_leak(s3_run):
    """Not in the CLI's output, the MLflow store (params, tags), any object the run wrote to S3,
    any local file, or the logs of the Ray session it started."""
    s3, cwd = s3_run["s3"], s3_run["cwd"]
    secret, key_id = s3.secret_key.encode(), s3.access_key.encode()
    first = s3_run["first"]
    for text in (first.stdout, first.stderr):
        assert s3.secret_key not in text and s3.access_key not in text
    client = s3.client()
    for key in s3.list_keys(BUCKET):
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert secret not in body and key_id not in body, key
    server = s3_run["mlflow"]
    for key in s3.list_keys(server["bucket"]):
        body = client.get_object(Bucket=server["bucket"], Key=key)["Body"].read()
        assert secret not in body and key_id not in body, key
    for path in [*cwd.rglob("*"), server["db"], server["log"]]:
        if path.is_file():
            body = path.read_bytes()
            assert secret not in body and key_id not in body, path
    sessions = [
        p
        for p in Path("/tmp/ray").glob("session_2*")
        if p.is_dir() and p.stat().st_mtime >= s3_run["started"] - 5
    ]
    for session in sessions:
        for path in (session / "logs").rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                assert secret not in path.read_bytes(), path


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing_bucket", "bucket 'not-created' does not exist"),
        ("bad_credentials", "rejected the credentials"),
    ],
)
def test_cli_storage_checks_fail_fast(s3_run, tmp_path, case, needle):
    env = dict(s3_run["env"])
    root = f"s3://{BUCKET}/{PREFIX}-bad"
    if case == "missing_bucket":
        root = "s3://not-created/runs"
    else:
        env["AWS_SECRET_ACCESS_KEY"] = "wrong-secret-for-the-test"
    out = cli(
        tmp_path,
        env,
        "run",
        "--preset",
        "smoke",
        "--set",
        f"storage.root={root}",
        "--set",
        f"tracking.uri={s3_run['mlflow']['uri']}",
        timeout=180,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert "wrong-secret-for-the-test" not in out.stderr
    assert not s3_run["s3"].list_keys(BUCKET, f"{PREFIX}-bad/")
