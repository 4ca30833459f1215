"""benchmarks/gpu.sh in its CPU `--tiny` mode, so the GPU benchmark cannot rot between the runs
on a GPU: every part runs (training modes, FLOP count, scoring, labelling, sampling) and writes
its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_sh_tiny_measures_every_part(tmp_path: Path) -> None:
    out = tmp_path / "tiny.json"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "tiny" and r["device"] == "cpu" and r["train_flops_per_step"] > 0
    assert set(r["train"]) == {"fp32", "bf16"}
    assert all(m["steps_per_s"] > 0 and m["mfu"] is None for m in r["train"].values())
    assert set(r["scoring_images_per_s"]) == {"secmi_stat", "pia"}
    assert r["soft_target_rows_per_s"] > 0 and r["sampler_images_per_s"]["dualmd_vs_single"] > 0
    sd = r["sd15_unet_finetune"]
    assert sd["steps_per_s"] > 0 and sd["params"] > 0 and sd["batch"] == 4


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="this machine has a GPU: the full run works"
)
def test_gpu_sh_without_a_gpu_says_so_in_one_line() -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )
    assert proc.returncode == 2 and proc.stderr.strip().endswith("CPU smoke mode")
