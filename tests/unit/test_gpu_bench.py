"""benchmarks/gpu_bench.py's contract short of a GPU: the GPU table tells the H100/H200 variants
apart, the JSON keeps what was measured when a section cannot run (a GPU the table lacks, a budget
too small), the wheel pins are the versions the project tests with, and gpu.sh without a GPU says
so. (The whole device path, offline install included, runs in tests/e2e/test_device_path.py.)"""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import device_wheels  # noqa: E402
import gpu_bench  # noqa: E402


@pytest.mark.parametrize(
    "name, sms, model",
    [
        ("NVIDIA H100 80GB HBM3", 132, "H100 SXM"),
        ("NVIDIA H100 PCIe", 114, "H100 PCIe"),
        ("NVIDIA H100", 114, "H100 PCIe"),  # a bare name: the SM count decides
        ("NVIDIA H100 NVL", 132, "H100 NVL"),
        ("NVIDIA H200", 132, "H200 SXM"),
        ("NVIDIA H200 NVL", 132, "H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", 108, "A100"),
    ],
)
def test_the_gpu_table_tells_the_variants_apart(name: str, sms: int, model: str) -> None:
    assert gpu_bench.identify_gpu(name, sms) == model
    peaks = gpu_bench.PEAKS[model]
    assert peaks["bf16"] == pytest.approx(2 * peaks["tf32"], rel=0.01)  # dense tensor cores
    assert peaks["fp32"] < peaks["tf32"]


def test_pcie_and_sxm_peaks_differ_by_what_mfu_would_misread() -> None:
    sxm, pcie = gpu_bench.PEAKS["H100 SXM"]["bf16"], gpu_bench.PEAKS["H100 PCIe"]["bf16"]
    assert 1.25 < sxm / pcie < 1.35


def run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_bench.py"),
            "--tiny",
            "--out",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, (json.loads(out.read_text()) if out.exists() else {})


def test_an_unknown_gpu_is_one_line_and_the_environment_stays(tmp_path: Path) -> None:
    proc, r = run_bench(tmp_path, "--device-name", "NVIDIA B300 SXM6")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "'NVIDIA B300 SXM6'" in line and "--peak fp32=" in line
    env = r["sections"]["env"]
    assert env["gpu_model"] is None and env["train_flops_per_step"] > 0


def test_given_peaks_give_mfu_per_precision(tmp_path: Path) -> None:
    proc, r = run_bench(
        tmp_path, "--peak", "fp32=1,tf32=2,bf16=4", "--sections", "train_fp32,train_bf16"
    )
    assert proc.returncode == 0, proc.stderr
    env, secs = r["sections"]["env"], r["sections"]
    for mode, peak in (("train_fp32", 1e12), ("train_bf16", 4e12)):
        expected = env["train_flops_per_step"] * secs[mode]["steps_per_s"] / peak
        assert secs[mode]["mfu"] == pytest.approx(expected)
    assert set(secs) == {"env", "train_fp32", "train_bf16"}


def test_a_budget_too_small_is_one_line_and_keeps_the_sections_done(tmp_path: Path) -> None:
    proc, r = run_bench(tmp_path, "--budget", "1")
    assert proc.returncode == 3
    (line,) = proc.stderr.strip().splitlines()
    assert "--budget" in line and "train_fp32" in line
    assert list(r["sections"]) == ["env"] and r["incomplete"]["section"] == "train_fp32"


def test_bad_peaks_and_sections_are_one_line(tmp_path: Path) -> None:
    for args, needle in ((["--peak", "bf16=989"], "--peak"), (["--sections", "nope"], "nope")):
        proc, _ = run_bench(tmp_path, *args)
        assert proc.returncode == 2 and needle in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_the_wheel_pins_are_the_versions_tested_here() -> None:
    pins = device_wheels.read_pins()
    assert {"diffusers", "pydantic", "pydantic_core"} <= set(pins)
    for name, version in pins.items():
        assert md.version(name) == version, name


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="this machine has a GPU: the full run works"
)
def test_gpu_sh_without_a_gpu_says_so_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--out", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "PYTHON": sys.executable,
            "RAYDEFENSE_WHEELS": str(tmp_path / "none"),
        },
    )
    assert proc.returncode == 2 and proc.stderr.strip().endswith("CPU smoke mode")
