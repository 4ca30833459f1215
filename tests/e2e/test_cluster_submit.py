"""A real multi-node Ray cluster on one machine (a head that trains nothing and two 1-CPU worker
nodes, each its own raylet, token auth on), SeaweedFS as the shared storage and an `mlflow
server` whose artifacts go to S3. The smoke pipeline is submitted with `raydefense submit
--follow` from a client that holds no S3 credentials (the nodes have their own, as an instance
profile gives them); every fit runs 2 DDP workers (gloo), which only fit one per worker node.
Then a plain `ray job submit` of the report stage, and the refusal of a local storage root on the
multi-node cluster. About 5 minutes on 2 cores: slow suite (`python -m pytest -m slow`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raydefense.distributed.submit import snapshot
from raydefense.testing.local_cluster import LocalRayCluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.s3]

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "raydefense-cluster"
PREFIX = "runs"
SETS = [
    "resources.workers_per_model=2",
    "resources.cpus_per_worker=1",
    "resources.concurrent_fits=1",
    "resources.label_actors=1",
    "train.steps=20",
    "train.log_every=10",
    "train.checkpoint_every=10",
    "attacks.enabled=[loss, pia, blackbox_nn]",
    "attacks.loss.draws=2",
    "attacks.pia.timesteps=[100, 200]",
    "attacks.bootstrap=50",
    "attacks.blackbox_nn.num_generated=16",
    "quality.num_generated=16",
    "sampling.num_images=4",
    "sampling.num_steps=5",
]


def client_env(cluster: LocalRayCluster) -> dict[str, str]:
    """A laptop's shell: the cluster token, no cloud credentials, no endpoint."""
    env = cluster.client_env()
    return {k: v for k, v in env.items() if not k.startswith(("AWS_", "MLFLOW_"))}


def config_args(tracking_uri: str, root: str) -> list[str]:
    sets = [f"storage.root={root}", f"tracking.uri={tracking_uri}", *SETS]
    return ["--preset", "smoke", *[a for s in sets for a in ("--set", s)]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, local_s3, mlflow_server):
    local_s3.create_bucket(BUCKET)
    with LocalRayCluster(tmp_path_factory.mktemp("cluster"), node_env=local_s3.env()) as c:
        c.add_worker(num_cpus=1)
        c.add_worker(num_cpus=1)
        c.wait_for_nodes(3)
        yield c


@pytest.fixture(scope="module")
def submitted(cluster, mlflow_server):
    args = [
        sys.executable,
        "-m",
        "raydefense.cli",
        "submit",
        "--address",
        cluster.dashboard,
        "--follow",
        "--submission-id",
        "e2e-smoke",
        "--",
        "run",
        *config_args(mlflow_server["uri"], f"s3://{BUCKET}/{PREFIX}"),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(
        args, cwd=ROOT, env=client_env(cluster), capture_output=True, text=True, timeout=1500
    )
    took = time.monotonic() - t0
    print(f"\nsubmitted smoke run: {took:.0f} s, exit {proc.returncode}")
    assert proc.returncode == 0, (proc.stdout[-6000:], proc.stderr[-3000:])
    return {"out": proc.stdout, "seconds": took}


def test_submit_runs_the_pipeline_on_the_cluster(cluster, local_s3, submitted) -> None:
    out = submitted["out"]
    assert "raydefense: submitted job e2e-smoke" in out
    assert f"dashboard: {cluster.dashboard}/#/jobs/e2e-smoke" in out
    assert "MLflow UI: http://127.0.0.1:" in out
    assert "raydefense: results in s3://" in out and "job e2e-smoke SUCCEEDED" in out
    base = f"{PREFIX}/smoke"
    keys = local_s3.list_keys(BUCKET, base + "/")
    for stage in ("prepare", "distill", "evaluate"):
        assert f"{base}/{stage}/_COMPLETE.json" in keys, stage
    assert f"{base}/report/report.html" in keys
    for model in ("baseline", "teacher_1", "teacher_2", "student"):
        assert f"{base}/models/{model}/_COMPLETE.json" in keys, model
    body = local_s3.client().get_object(Bucket=BUCKET, Key=f"{base}/report/results.json")["Body"]
    results = json.loads(body.read())
    assert {r["target"] for r in results["attacks"]} >= {"baseline", "dualmd", "student"}


def test_each_fit_spans_both_worker_nodes_and_mlflow_has_the_tree(
    cluster, mlflow_server, submitted
) -> None:
    from mlflow.tracking import MlflowClient

    workers = {n["node_id"] for n in cluster.alive_nodes() if not n.get("is_head_node")}
    assert len(workers) == 2
    client = MlflowClient(tracking_uri=mlflow_server["uri"])
    exp = client.get_experiment_by_name("smoke")
    (parent,) = client.search_runs([exp.experiment_id], "tags.mlflow.runName = 'pipeline/run'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    fits = {
        c.data.tags["raydefense.model"]: c for c in children if "raydefense.model" in c.data.tags
    }
    assert set(fits) == {"baseline", "teacher_1", "teacher_2", "student"}
    placement = {}
    for model, run in fits.items():
        assert run.info.status == "FINISHED", model
        nodes = run.data.tags["raydefense.worker_nodes"].split(",")
        assert len(nodes) == 2 and set(nodes) == workers, (model, nodes)
        placement[model] = [n[:8] for n in nodes]
    print(f"\nfit placement (rank 0, rank 1): {placement}")
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied to S3


def test_the_job_got_no_secrets(cluster, submitted) -> None:
    # A fresh process: Ray reads RAY_AUTH_MODE once per process.
    code = (
        "import json, sys; from ray.job_submission import JobSubmissionClient; "
        "i = JobSubmissionClient(sys.argv[1]).get_job_info('e2e-smoke'); "
        "print(json.dumps({'env': (i.runtime_env or {}).get('env_vars', {}), "
        "'entrypoint': i.entrypoint}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, cluster.dashboard],
        env=client_env(cluster),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    env = info["env"]
    assert not [k for k in env if "SECRET" in k or "KEY" in k or k == "MLFLOW_RUN_ID"], env
    assert info["entrypoint"].startswith("python -m raydefense.cli run --preset smoke")


def test_plain_ray_job_submit_with_the_token(cluster, mlflow_server, submitted, tmp_path) -> None:
    """`ray job submit` as docs/cluster.md shows it: RAY_AUTH_MODE=token, a frozen working dir."""
    work = tmp_path / "job"
    snapshot(ROOT, work)
    ray_cli = str(Path(sys.executable).parent / "ray")
    job = [
        "python",
        "jobs/pipeline.py",
        "--stage",
        "report",
        *config_args(mlflow_server["uri"], f"s3://{BUCKET}/{PREFIX}"),
    ]
    proc = subprocess.run(
        [ray_cli, "job", "submit", "--address", cluster.dashboard, "--working-dir", str(work)]
        + ["--", *job],
        cwd=tmp_path,
        env=client_env(cluster),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-2000:])
    assert "raydefense: results in s3://" in proc.stdout


def test_a_local_storage_root_is_refused_on_a_multi_node_cluster(
    cluster, mlflow_server, submitted, tmp_path
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "raydefense.cli", "submit", "--address", cluster.dashboard]
        + ["--follow", "--", "train", *config_args(mlflow_server["uri"], str(tmp_path / "runs"))],
        cwd=ROOT,
        env=client_env(cluster),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    assert "is a local path on a 3-node cluster" in proc.stdout, proc.stdout[-3000:]


def test_a_worker_node_lost_mid_fit_costs_minutes_not_the_run(
    cluster, local_s3, mlflow_server, submitted, tmp_path
) -> None:
    """Kill worker node 2 (its raylet and every process on it) once the first fit has
    checkpointed; the fit cannot place its 2 workers on the node that is left, and resumes from
    its last checkpoint when a replacement node joins; it ends at the configured step, with one
    MLflow run per model. Runs last: it changes the module's cluster."""
    from mlflow.tracking import MlflowClient

    ray_cli = str(Path(sys.executable).parent / "ray")
    env = client_env(cluster)
    sets = ["experiment=nodekill", "train.steps=60", "train.checkpoint_every=10"]
    args = config_args(mlflow_server["uri"], f"s3://{BUCKET}/{PREFIX}")
    args += [a for s in sets for a in ("--set", s)]
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "raydefense.cli", "submit", "--address", cluster.dashboard]
        + ["--submission-id", "e2e-nodekill", "--", "train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    prefix = f"{PREFIX}/nodekill/ray_train/baseline-"
    while not any("/checkpoint_" in k for k in local_s3.list_keys(BUCKET, prefix)):
        assert time.monotonic() - t0 < 600, "the first fit never checkpointed"
        time.sleep(0.5)
    victim = cluster.nodes[2]
    t_kill = time.monotonic()
    victim.kill()
    time.sleep(5)  # the fit's worker group cannot restart on one 1-CPU node
    cluster.add_worker(num_cpus=1)
    cluster.wait_for_nodes(3)
    t_join = time.monotonic()
    logs = subprocess.run(
        [ray_cli, "job", "logs", "--address", cluster.dashboard, "--follow", "e2e-nodekill"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    ).stdout
    status = subprocess.run(
        [ray_cli, "job", "status", "--address", cluster.dashboard, "e2e-nodekill"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    t_end = time.monotonic()
    assert "succeeded" in status.lower(), (status, logs[-4000:])
    keys = local_s3.list_keys(BUCKET, f"{PREFIX}/nodekill/models/")
    for model in ("baseline", "teacher_1", "teacher_2"):
        assert f"{PREFIX}/nodekill/models/{model}/_COMPLETE.json" in keys, model
    client = MlflowClient(tracking_uri=mlflow_server["uri"])
    exp = client.get_experiment_by_name("nodekill")
    runs = client.search_runs([exp.experiment_id], "tags.mlflow.runName LIKE 'train/%'")
    names = sorted(r.info.run_name for r in runs)
    assert names == ["train/baseline", "train/teacher_1", "train/teacher_2"], names  # no dupes
    fits = {r.info.run_name.split("/")[1]: r for r in runs}
    assert all(r.info.status == "FINISHED" for r in runs)
    steps = [m.step for m in client.get_metric_history(fits["baseline"].info.run_id, "loss")]
    assert max(steps) == 60
    final_nodes = fits["baseline"].data.tags["raydefense.worker_nodes"].split(",")
    new = {n["node_id"] for n in cluster.alive_nodes() if not n.get("is_head_node")}
    assert set(final_nodes) == new  # the resumed fit ran on the survivor and the replacement

    def span(model: str) -> float:
        """From the fit's first report to its last (MLflow metric timestamps)."""
        h = client.get_metric_history(fits[model].info.run_id, "loss")
        return (max(m.timestamp for m in h) - min(m.timestamp for m in h)) / 1000

    lost = span("baseline") - span("teacher_1")
    print(
        f"\nnode kill: killed {t_kill - t0:.0f}s after submit, replacement joined "
        f"{t_join - t_kill:.0f}s later, job done {t_end - t_kill:.0f}s after the kill; "
        f"baseline step 10..60 in {span('baseline'):.0f}s vs an undisturbed teacher_1 "
        f"{span('teacher_1'):.0f}s: {lost:.0f}s lost; MLflow runs {names}; baseline ended on "
        f"{[n[:8] for n in final_nodes]}"
    )


def test_a_local_data_path_is_refused_on_the_multi_node_cluster(cluster) -> None:
    """The node count comes from the cluster's state API (with its token); a dataset path that
    only this machine has is refused before anything is uploaded."""
    proc = subprocess.run(
        [sys.executable, "-m", "raydefense.cli", "submit", "--address", cluster.dashboard]
        + ["--", "prepare", "--preset", "smoke", "--set", "data.source=cifar10"]
        + ["--set", "data.root=/srv/datasets/cifar-10-batches-py"],
        cwd=ROOT,
        env=client_env(cluster),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "data.root=/srv/datasets/cifar-10-batches-py" in line and "of 3 nodes" in line
    assert "--shared-path" in line
