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
        if "IamInstanceProfile" not in t["node_config"]:
            out.append(f"{name}: workers reach S3 through an IamInstanceProfile")
        total += hi
    if total > cfg["max_workers"]:
        out.append(f"the node types' max_workers add up to {total} > max_workers")
    text = yaml.safe_dump(cfg).lower()
    out += [f"credentials in the file ({w})" for w in SECRET_WORDS if w in text]
    if ray.__version__ not in cfg["docker"]["image"]:
        out.append(f"docker image {cfg['docker']['image']} is not Ray {ray.__version__}")
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
    problems = cluster_problems(bad)
    assert len(problems) == 4, problems
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
