"""End to end: `raydefense sweep --preset smoke` as a user runs it, on a copy of the session's
smoke run (its trained models complete, so the sweep's pipeline skips train and distill; the
cached path is what a user gets on a second sweep of a trained experiment): 14 Tune trials, and
a second invocation that neither retrains, rescores nor reruns trials. Minutes on 2 cores, so it
is marked slow (`python -m pytest -m slow`)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from processes import run_cli as cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_sweep_smoke_preset_then_a_cached_rerun(smoke_run, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    shutil.copytree(smoke_run[0] / "runs" / "smoke", tmp_path / "runs" / "smoke")
    t0 = time.perf_counter()
    first = cli(tmp_path, "sweep", "--preset", "smoke")
    assert "train: complete" in first.stderr, first.stderr[-3000:]
    first_s = time.perf_counter() - t0
    assert first.returncode == 0, first.stderr[-3000:]
    assert "sweep 'smoke': 14 trials" in first.stdout
    base = tmp_path / "runs" / "smoke" / "sweeps" / "smoke"
    results = json.loads((base / "results.json").read_text())
    assert results["num_trials"] == 14 and results["rescored"] is True
    assert set(results["worst_case"]) == {"baseline", "teacher_1", "teacher_2", "dualmd", "student"}
    assert (base / "scores.parquet").is_file() and (base / "_COMPLETE.json").is_file()

    t0 = time.perf_counter()
    second = cli(tmp_path, "sweep", "--preset", "smoke")
    second_s = time.perf_counter() - t0
    assert second.returncode == 0, second.stderr[-3000:]
    assert "not rescored" in second.stderr and "resuming Tune run" in second.stderr
    again = json.loads((base / "results.json").read_text())
    assert again["rescored"] is False and again["trials"] == results["trials"]
    assert second_s < first_s / 3

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    parents = client.search_runs([exp.experiment_id], "tags.mlflow.runName = 'sweep/smoke'")
    assert len(parents) == 2
    for p in parents:
        children = client.search_runs(
            [exp.experiment_id], f"tags.mlflow.parentRunId = '{p.info.run_id}'"
        )
        assert len(children) == 14 and p.info.status == "FINISHED"
    print(f"raydefense sweep --preset smoke: {first_s:.0f}s, rerun {second_s:.0f}s")
