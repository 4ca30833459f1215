"""The device run as the GPU machine would make it, on CPU: a fresh copy of the tracked tree, a
fresh virtualenv holding what that machine has (torch, numpy, safetensors, transformers, ...) and
not what it lacks (diffusers, pydantic, ray, mlflow, boto3), the wheels fetched by
`benchmarks/device_wheels.py` (for this interpreter, since the device's are cp312), then
`bash benchmarks/gpu.sh --tiny`: the offline install, the import preflight and every section.
A missing wheel is one line and exit 4."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# What the GPU machine's Python has that the device path imports (KINDS.md's package list).
DEVICE_HAS = [
    "torch",
    "numpy",
    "safetensors",
    "pyyaml",
    "transformers",
    "huggingface-hub",
    "regex",
    "requests",
    "filelock",
    "pillow",
    "zipp",
    "typing-extensions",
    "pyarrow",
    "pandas",
    "scikit-learn",
    "matplotlib",
]
DEVICE_LACKS = {
    "diffusers",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "importlib-metadata",
    "ray",
    "mlflow",
    "boto3",
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_site(dest: Path) -> Path:
    """A folder of links to the installed distributions the device has (and their own
    requirements, extras left out), none of those it lacks."""
    dest.mkdir()
    todo, seen = [norm(n) for n in DEVICE_HAS], set()
    while todo:
        name = todo.pop()
        if name in seen or name in DEVICE_LACKS:
            continue
        seen.add(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional requirement this environment does not have
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(norm(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0]))
        tops = {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}
        for top in tops:
            src = Path(str(dist.locate_file(top)))
            if src.exists() and not (dest / top).exists():
                (dest / top).symlink_to(src)
    return dest


@pytest.fixture(scope="module")
def device(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("device")
    tree = base / "tree"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, files.split("\0")):
        if (ROOT / rel).is_file():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, tree / rel)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    fetch = subprocess.run(
        [
            sys.executable,
            str(tree / "benchmarks" / "device_wheels.py"),
            "--python-version",
            version,
            "--dest",
            str(tree / ".whl"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fetch.returncode == 0, fetch.stderr
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True, timeout=300)
    python = base / "venv" / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "device.pth").write_text(str(device_site(base / "has")) + "\n")
    return {"tree": tree, "python": python, "base": base, "fetch": fetch.stdout}


def gpu_sh(device: dict, site: str, *args: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHON": str(device["python"]),
        "RAYDEFENSE_SITE": str(device["base"] / site),
    }
    return subprocess.run(
        ["bash", str(device["tree"] / "benchmarks" / "gpu.sh"), "--tiny", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=device["base"],
    )


def test_the_fresh_venv_is_the_device_s(device) -> None:
    """torch imports; diffusers and pydantic do not (so the offline install is what adds them)."""
    code = (
        "import importlib.util as u, torch\n"
        "print([m for m in ('diffusers', 'pydantic', 'ray', 'mlflow') if u.find_spec(m)])"
    )
    out = subprocess.run([str(device["python"]), "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    total = re.search(r"(\S+) MiB  in all, of the 64 MiB carry limit", device["fetch"])
    assert total and float(total[1]) < 64, device["fetch"]


def test_gpu_sh_installs_the_wheels_offline_and_measures_every_section(device) -> None:
    out = device["base"] / "tiny.json"
    proc = gpu_sh(device, "site", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "tiny" and r["incomplete"] is None
    env = r["sections"]["env"]
    site = str(device["base"] / "site")
    for pkg in ("diffusers", "pydantic", "pydantic_core"):
        assert env["packages"][pkg]["path"].startswith(site), env["packages"][pkg]
    assert env["packages"]["raydefense"]["path"].startswith(str(device["tree"]))
    assert list(r["sections"]) == [
        "env",
        "train_fp32",
        "train_bf16",
        "train_tf32",
        "scoring",
        "soft_targets",
        "sampling",
        "sd15_step",
    ]
    for name, sec in r["sections"].items():
        if name.startswith("train_"):
            assert sec["steps_per_s"] > 0 and sec["mfu"] is None  # CPU: no peak, no MFU


def test_a_missing_wheel_is_one_line(device) -> None:
    wheels = device["tree"] / ".whl"
    core = next(wheels.glob("pydantic_core-*.whl"))
    hidden = device["base"] / core.name
    core.rename(hidden)
    try:
        proc = gpu_sh(device, "site-missing", "--out", str(device["base"] / "missing.json"))
    finally:
        hidden.rename(core)
    assert proc.returncode == 4
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pydantic_core" in lines[0] and "device_wheels.py" in lines[0]
    assert not (device["base"] / "missing.json").exists()
