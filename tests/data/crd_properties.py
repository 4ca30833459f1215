"""Regenerates kuberay_rayjob_properties.json: the property-name tree of KubeRay's RayJob CRD.

The CRD's OpenAPI schema rejects wrong types but lets unknown keys through, so
tests/unit/test_cluster_config.py compares every key of k8s/rayjob.yaml with this tree. The
tree keeps only names (arrays replaced by their items' properties, enums where the CRD has
them); the source is KubeRay v1.7.0 `ray-operator/config/crd/bases/ray.io_rayjobs.yaml`, storage
version v1:

    cd tests/data && python crd_properties.py ray.io_rayjobs.yaml > kuberay_rayjob_properties.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml


def tree(node: dict[str, Any]) -> dict[str, Any]:
    if node.get("type") == "array" and "items" in node:
        return tree(node["items"])
    props = node.get("properties")
    if props:
        return {k: tree(v) for k, v in sorted(props.items())}
    if node.get("enum"):
        return {"$enum": node["enum"]}
    if node.get("x-kubernetes-preserve-unknown-fields") or node.get("additionalProperties"):
        return {"$any": True}
    return {}


def main(path: str) -> None:
    with open(path) as f:
        crd = yaml.safe_load(f)
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    print(json.dumps(tree(version["schema"]["openAPIV3Schema"]), sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
