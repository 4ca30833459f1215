"""cluster.yaml and k8s/rayjob.yaml, checked offline: the cluster launcher's own JSON schema (it
ships in the Ray wheel), the KubeRay RayJob CRD's property names (the CRD schema alone lets
unknown keys through), and the project's rules (a head that trains nothing, GPU worker types
that declare their GPUs, worker counts that add up, no credentials, the pinned Ray version)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from raydefense.config import hardware_preset_names, load_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster.yaml"
RAYJOB = ROOT / "k8s" / "rayjob.yaml"
CRD_TREE = Path(__file__).resolve().parents[1] / "data" / "kuberay_rayjob_properties.json"
# RayJobSpec.submissionMode (the CRD leaves it a free string)
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
SECRET_WORDS = ("aws_access_key_id", "aws_secret_access_key", "secret_key", "password")
HEAD_PROFILE, WORKER_PROFILE = "raydefense-head", "raydefense-worker"
DRIVER_AMI = "base-oss-nvidia-driver-gpu-ubuntu-24.04"
IAM = ROOT / "cluster" / "iam"


def ray_schema() -> dict[str, Any]:
    path = os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")
    with open(path) as f:
        return json.load(f)


def cluster_problems(cfg: dict[str, Any]) -> list[str]:
    """The project's rules for cluster.yaml, beyond the launcher's schema."""
    out = []
    types = cfg.get("available_node_types", {})
    head = cfg.get("head_node_type")
    if head not in types:
        out.append(f"head_node_type {head!r} is not one of available_node_types {sorted(types)}")
        return out
    res = types[head]["resources"]
    if res.get("CPU") != 0 or res.get("GPU", 0) != 0:
        out.append(f"head {head!r} must declare CPU: 0 and GPU: 0 (no training on the head)")
    if types[head]["node_config"].get("IamInstanceProfile") != {"Name": HEAD_PROFILE}:
        out.append(f"head {head!r} needs {HEAD_PROFILE} (the default role cannot pass a role)")
    for name, t in types.items():
        if not t["node_config"].get("ImageId"):
            out.append(f"{name}: no ImageId (the launcher's default AMI has CUDA 11.2)")
    total = 0
    for name, t in types.items():
        if name == head:
            continue
        r = t["resources"]
        if "CPU" not in r:
            out.append(f"{name}: declare CPU (not looked up from the instance type)")
        if name.startswith("gpu") and not (isinstance(r.get("GPU"), int) and r["GPU"] >= 1):
            out.append(f"{name}: a GPU node type must declare GPU >= 1")
        lo, hi = t.get("min_workers", 0), t.get("max_workers", cfg["max_workers"])
        if not 0 <= lo <= hi:
            out.append(f"{name}: min_workers {lo} > max_workers {hi}")
        if t["node_config"].get("IamInstanceProfile") != {"Name": WORKER_PROFILE}:
            out.append(f"{name}: workers reach the bucket through {WORKER_PROFILE}")
        if name.startswith("gpu") and DRIVER_AMI not in t["node_config"].get("ImageId", ""):
            out.append(f"{name}: boot the DLAMI with a driver for torch's CUDA ({DRIVER_AMI})")
        total += hi
    if total > cfg["max_workers"]:
        out.append(f"the node types' max_workers add up to {total} > max_workers")
    text = yaml.safe_dump(cfg).lower()
    out += [f"credentials in the file ({w})" for w in SECRET_WORDS if w in text]
    docker = cfg["docker"]
    for key in ("image", "head_image", "worker_image"):
        if ray.__version__ not in docker.get(key, ""):
            out.append(f"docker {key} {docker.get(key)} is not Ray {ray.__version__}")
    if not docker.get("head_image", "").endswith("-cpu"):
        out.append("docker head_image: the head trains nothing, so Ray's CPU image")
    return out


def unknown_keys(doc: Any, tree: dict[str, Any], path: str = "") -> list[str]:
    """Keys of `doc` that the CRD property tree does not have (and enum values it refuses)."""
    if tree.get("$any") or not isinstance(doc, (dict, list)):
        if "$enum" in tree and doc not in tree["$enum"]:
            return [f"{path}: {doc!r} is not one of {tree['$enum']}"]
        return []
    if isinstance(doc, list):
        return [e for i, item in enumerate(doc) for e in unknown_keys(item, tree, f"{path}[{i}]")]
    out = []
    for k, v in doc.items():
        if k not in tree:
            out.append(f"{path}.{k}")
        else:
            out += unknown_keys(v, tree[k], f"{path}.{k}")
    return out


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_the_launcher_schema_and_the_project_rules(cluster: dict) -> None:
    jsonschema.validate(cluster, ray_schema())
    assert cluster_problems(cluster) == []


def test_the_checks_catch_what_they_are_for(cluster: dict) -> None:
    typo = copy.deepcopy(cluster)
    typo["available_node_type"] = typo.pop("available_node_types")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, ray_schema())
    half = copy.deepcopy(cluster)
    half["available_node_types"]["gpu_1x"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(half, ray_schema())  # resources are integers
    bad = copy.deepcopy(cluster)
    bad["available_node_types"]["head"]["resources"]["CPU"] = 8
    bad["available_node_types"]["gpu_8x"]["resources"].pop("GPU")
    bad["available_node_types"]["gpu_1x"]["min_workers"] = 9
    bad["setup_commands"].append("export AWS_SECRET_ACCESS_KEY=x")
    bad["available_node_types"]["head"]["node_config"].pop("IamInstanceProfile")
    bad["available_node_types"]["gpu_8x"]["node_config"].pop("ImageId")
    problems = cluster_problems(bad)
    assert len(problems) == 7, problems  # the missing AMI counts twice: none, and not the DLAMI
    bad["head_node_type"] = "nope"
    assert "is not one of available_node_types" in cluster_problems(bad)[0]


def test_every_gpu_hardware_preset_fits_a_worker_type(cluster: dict) -> None:
    """A fit's workers each need cpus_per_worker CPUs and gpus_per_worker GPUs on one node, and
    the concurrent fits' GPUs must exist in the cluster at full scale."""
    types = [t["resources"] for n, t in cluster["available_node_types"].items() if n != "head"]
    capacity = sum(
        t["resources"].get("GPU", 0) * t["max_workers"]
        for n, t in cluster["available_node_types"].items()
        if n != "head"
    )
    gpu_presets = []
    for name in hardware_preset_names():
        r = load_config([name]).resources
        if not r.gpus_per_worker:
            continue
        gpu_presets.append(name)
        assert any(
            t["CPU"] >= r.cpus_per_worker and t.get("GPU", 0) >= r.gpus_per_worker for t in types
        ), name
        need = r.concurrent_fits * r.workers_per_model * r.gpus_per_worker
        assert need <= capacity, (name, need, capacity)
    assert gpu_presets, "no GPU hardware preset to check"


def test_rayjob_manifest_uses_only_crd_fields() -> None:
    tree = json.loads(CRD_TREE.read_text())
    tree["metadata"] = {"$any": True}  # ObjectMeta: the API server validates it, not the CRD
    job = yaml.safe_load(RAYJOB.read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert unknown_keys(job, tree) == []
    spec = job["spec"]
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no training on the head
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        (c,) = group["template"]["spec"]["containers"]
        gpus = c["resources"]["limits"]["nvidia.com/gpu"]
        assert group["rayStartParams"]["num-gpus"] == gpus, group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert not any(w in RAYJOB.read_text().lower() for w in SECRET_WORDS)
    # A typo and a bad enum value are caught.
    typo = copy.deepcopy(job)
    typo["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {}
    typo["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "tokens"
    assert unknown_keys(typo, tree) == [
        ".spec.rayClusterSpec.authOptions.mode: 'tokens' is not one of ['disabled', 'token']",
        ".spec.rayClusterSpec.headGroupSpec.rayStartParam",
    ]


def statements(policy: str) -> list[dict[str, Any]]:
    return json.loads((IAM / policy).read_text())["Statement"]


def test_the_head_passes_only_the_worker_role_and_both_reach_one_bucket() -> None:
    """The launcher's default head role has EC2 and S3 but no iam:PassRole, so the head could
    not start a worker with its instance profile: the first scale-up would fail."""
    head, worker = statements("head-policy.json"), statements("worker-policy.json")
    passes = [s for s in head if "iam:PassRole" in s["Action"]]
    assert [s["Resource"] for s in passes] == [f"arn:aws:iam::ACCOUNT_ID:role/{WORKER_PROFILE}"]
    for policy in (head, worker):
        s3 = [s for s in policy if any(a.startswith("s3:") for a in s["Action"])]
        assert {s["Resource"] for s in s3} == {"arn:aws:s3:::BUCKET", "arn:aws:s3:::BUCKET/*"}
    assert not any(a.startswith(("ec2:", "iam:")) for s in worker for a in s["Action"])
    script = (ROOT / "cluster" / "iam.sh").read_text()
    assert HEAD_PROFILE in script and WORKER_PROFILE in script


# What EKS leaves allocatable per instance type (capacity less kube-reserved, system-reserved
# and the eviction threshold; rounded down): requests above it leave a pod Pending forever.
ALLOCATABLE = {
    "m6i.2xlarge": (7.9, 30),  # (vCPU, GiB)
    "g6e.4xlarge": (15.8, 120),
    "p5.48xlarge": (191, 1900),
}


def gib(q: str) -> float:
    return float(q[:-2]) * (1 if q.endswith("Gi") else 1 / 1024 if q.endswith("Mi") else 1024)


def test_rayjob_pods_fit_their_nodes_and_the_object_store_has_shm() -> None:
    job = yaml.safe_load(RAYJOB.read_text())
    assert job["spec"]["entrypoint"].split()[1].startswith("/"), "an absolute entrypoint"
    cluster = job["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        spec = group["template"]["spec"]
        node = spec["nodeSelector"]["node.kubernetes.io/instance-type"]
        cpu, mem = ALLOCATABLE[node]
        (c,) = spec["containers"]
        req = c["resources"]["requests"]
        assert float(req["cpu"]) <= cpu and gib(req["memory"]) <= mem, (node, req)
        shm = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        assert shm and vols[shm[0]["name"]]["emptyDir"]["medium"] == "Memory", node
