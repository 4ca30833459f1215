"""Every script in benchmarks/ in its `--tiny` mode, so none can rot between the runs that
measure: each runs its real code path on the smallest inputs and must print finite ratios.
(gpu.sh and gpu_bench.py: tests/unit/test_gpu_bench.py.) The scripts that start Ray Train fits or
run the whole pipeline twice take minutes on 2 cores: those are in the slow suite."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from raydefense.attacks.base import ATTACKS
from raydefense.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def run_tiny(script: str, timeout: int, **env: str) -> str:
    """`python benchmarks/<script> --tiny`: its stdout, after asserting it exited 0."""
    # No cluster from the environment: the Ray benchmarks start their own local one.
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | env
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--tiny"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def finite(text: str, positive: bool = True) -> float:
    """A printed number ("1,234.5", "0.87"); nan, inf and (if `positive`) 0 or less fail."""
    x = float(text.replace(",", ""))
    assert math.isfinite(x) and (x > 0 if positive else x >= 0), text
    return x


def only_match(pattern: str, out: str) -> re.Match:
    found = list(re.finditer(pattern, out, re.M))
    assert len(found) == 1, f"{pattern!r} printed {len(found)} times in:\n{out}"
    return found[0]


def test_attack_throughput_rates_every_querying_attack_and_names_the_rest() -> None:
    out = run_tiny("attack_throughput.py", timeout=300)
    m = only_match(r"^UNet forward: (\S+) images/s; forward\+backward: (\S+) images/s$", out)
    assert finite(m[1]) and finite(m[2])
    rows = {r[1]: r for r in re.finditer(r"^(\w+) +(\S+) +(\S+) +(\S+) +(\S+)$", out, re.M)}
    skipped = only_match(r"^skipped, no eps queries of their own: (.+)$", out)[1]
    kinds = {n: ATTACKS.get(n).kind for n in load_config("smoke").attacks.enabled}
    timed = [n for n, k in kinds.items() if k in ("query", "learned")]
    # The regression: these kinds recombine other attacks' columns; the script crashed on them.
    recombining = [n for n, k in kinds.items() if k in ("adaptive", "reference", "combined")]
    assert timed and recombining
    for name in timed:
        assert name in rows, f"no row for {name}:\n{out}"
        assert finite(rows[name][3]) and finite(rows[name][5])  # images/s, measured / ideal
    for name in kinds.keys() - set(timed):
        assert name not in rows and re.search(rf"\b{name}\b", skipped), skipped
    assert "recombine other attacks' score columns" in skipped


def test_t2i_encoding_prints_both_speedups(tiny_cache: Path) -> None:
    # The tiny SD pipeline is built once per test session (conftest's tiny_cache).
    out = run_tiny("t2i_encoding.py", timeout=600, RAYDEFENSE_CACHE=str(tiny_cache))
    for mode in ("encode_latents", "encode_both"):
        finite(only_match(rf'^  "speedup_cached_vs_{mode}": (\S+?),?$', out)[1])


@pytest.mark.ray
@pytest.mark.s3
def test_parquet_ingestion_prints_every_mode_against_memory() -> None:
    out = run_tiny("parquet_ingestion.py", timeout=600)
    for mode in ("memory", "parquet/local", "parquet/s3", "raydata/local", "raydata/s3"):
        row = only_match(rf"^{re.escape(mode)} +(\S+) +\S+ +(\S+) .* (\S+) +(\S+)$", out)
        assert finite(row[1]) and finite(row[2])  # median seconds, rows/s
        # vs memory: Ray Data's start-up against 256 rows in memory can print 0.000
        finite(row[3], positive=False)
    for name in ("parquet", "raydata"):
        finite(only_match(rf"^{name}: S3 / local throughput = (\S+) ", out)[1])


# Four Ray Train runs (six fits) behind one local cluster: minutes on 2 cores, all start-up.
@pytest.mark.slow
@pytest.mark.ray
def test_cpu_scaling_prints_both_speedups() -> None:
    out = run_tiny("cpu_scaling.py", timeout=1200)
    finite(only_match(r"^one fit: .* -> x(\S+)$", out)[1])
    finite(only_match(r"^two fits: .* -> x(\S+)$", out)[1])


# The whole pipeline twice (cold, then cached), on the in-process executor at tiny sizes.
def test_pipeline_stages_prints_shares_and_the_cached_rerun() -> None:
    out = run_tiny("pipeline_stages.py", timeout=600)
    assert "executor local" in out
    shares = re.findall(r"^\w+ +\S+ +(\S+)%$", out, re.M)
    assert shares and abs(sum(float(s) for s in shares) - 100) < 1, out
    finite(only_match(r"^cached rerun: (\S+) s += (\S+) x the cold run$", out)[2])


def test_soft_target_inputs_prints_every_holding_against_stored() -> None:
    out = run_tiny("soft_target_inputs.py", timeout=300)
    for shape in ("pixel", "latent"):
        assert re.search(rf"^{shape} \[", out, re.M)
    rows = re.findall(r"^(stored|regenerated|disk) +(\S+) +(\S+) +(\S+) +(\S+)x$", out, re.M)
    assert [r[0] for r in rows] == ["stored", "regenerated", "disk"] * 2
    for _, ms, rate, held, ratio in rows:
        finite(ms), finite(rate), finite(held), finite(ratio)


def test_defense_costs_prints_every_mode_against_plain() -> None:
    out = run_tiny("defense_costs.py", timeout=600)
    rows = re.findall(r"^(plain|hflip|dp k=1|dp k=4|distill) +(\S+) +(\S+) +(\S+)$", out, re.M)
    assert [r[0] for r in rows] == ["plain", "hflip", "dp k=1", "dp k=4", "distill"], out
    for _, wall, cpu, ratio in rows:
        finite(wall), finite(cpu), finite(ratio)
    label = only_match(r"^label +(\S+) +(\S+) +/example$", out)
    finite(label[1]), finite(label[2])
