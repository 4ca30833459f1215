"""End to end: a training sweep (`raydefense sweep --preset smoke --set sweep.kind=training`) as a
user runs it, killed mid-sweep and resumed.

Two grid points: a sane learning rate and one 200x too small. At most one trial runs at a time
(the smoke preset's four concurrent fits fill the 2-core cluster), so trial 0 finishes first. The
driver is SIGKILLed (with its Ray cluster) once trial 1's pipeline has started; the rerun resumes
the Tune run: trial 0 is not rerun, trial 1 resumes its own pipeline, and ASHA stops it when its
student's val_eps_mse falls behind trial 0's at the same report. A third invocation only reads
the finished Tune run. About 5 minutes on 2 cores: slow suite (`python -m pytest -m slow`).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
pytest.importorskip("psutil")
from processes import finish_cli, kill_run, start_cli  # noqa: E402

TIMEOUT_S = 900


def flags(base: Path) -> list[str]:
    sets = {
        "storage.root": str(base / "runs"),
        "tracking.uri": f"sqlite:///{base / 'mlflow.db'}",
        "sweep.kind": "training",
        "sweep.training": "{train.lr: [0.002, 0.00001]}",
        "sweep.trial_attacks": "[loss, secmi_stat]",
        "train.steps": "60",
        "train.log_every": "15",
        "train.checkpoint_every": "30",
        "quality.num_generated": "32",
        "sampling.num_images": "16",
    }
    return [
        "sweep",
        "--preset",
        "smoke",
        *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
    ]


def start(base: Path, log_name: str) -> tuple[subprocess.Popen, Path]:
    return start_cli(flags(base), base, log_name)


def finish(base: Path, log_name: str) -> str:
    return finish_cli(flags(base), base, log_name, TIMEOUT_S)


def test_training_sweep_is_killed_resumed_and_asha_stops_the_bad_point(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    base = tmp_path / "runs" / "smoke" / "training_sweeps" / "smoke"
    trials = base / "trials"

    def trial_dir(i: int) -> Path | None:
        found = sorted(trials.glob(f"p{i:03d}-*")) if trials.is_dir() else []
        return found[0] if found else None

    def state_saved_after(t: float) -> bool:
        # Tune's experiment state (trial statuses and results) as uploaded to storage
        saved = [p.stat().st_mtime for p in (base / "tune").glob("*/experiment_state-*.json")]
        return bool(saved) and max(saved) > t

    # 1. Start, and kill the whole run once trial 1's pipeline has prepared its data and Tune
    # has stored its state since (trial 0 finished before trial 1 started; the state reaches
    # storage within seconds, raydefense.distributed.tune.STATE_SYNC_PERIOD_S).
    proc, log = start(tmp_path, "first.log")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ((d := trial_dir(1)) and (marker := d / "prepare" / "_COMPLETE.json").is_file()):
            assert proc.poll() is None, f"exited early:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"never got to trial 1:\n{log.read_text()[-4000:]}"
            time.sleep(0.1)
        while not state_saved_after(marker.stat().st_mtime):
            assert proc.poll() is None, f"exited early:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"Tune never saved:\n{log.read_text()[-4000:]}"
            time.sleep(0.1)
    finally:
        kill_run(proc)
    first = log.read_text(errors="replace")
    assert "training sweep: 2 trials, at most 1 at once, ASHA on val_eps_mse" in first
    assert not (base / "results.json").exists()
    t0 = trial_dir(0)
    markers0 = {p: p.read_text() for p in t0.glob("*/_COMPLETE.json")}
    assert {p.parent.name for p in markers0} == {"prepare", "train", "distill", "evaluate"}
    prepared1 = marker.read_text()

    # 2. Rerun: the Tune run resumes; trial 0 is not redone, trial 1 picks up its pipeline.
    second = finish(tmp_path, "second.log")
    assert "training sweep: resuming Tune run" in second
    # trial 1's own pipeline resumed past prepare (its worker's lines are in Ray's logs only)
    assert marker.read_text() == prepared1
    assert {p: p.read_text() for p in t0.glob("*/_COMPLETE.json")} == markers0
    results = json.loads((base / "results.json").read_text())
    by_lr = {t["values"]["train.lr"]: t for t in results["trials"]}
    good, bad = by_lr[0.002], by_lr[0.00001]
    assert good["status"] == "completed" and good["pareto"] is True
    assert 0.0 <= good["privacy_auc"] <= 1.0 and good["utility"] > 0
    assert good["privacy_attack"] in ("loss", "secmi_stat")
    # The student reports at steps 15, 30, 45, 60, then the trial's objectives: 5 results.
    assert [h["iteration"] for h in good["history"]] == [1, 2, 3, 4, 5]
    assert bad["status"] == "stopped" and "privacy_auc" not in bad
    stop_at = len(bad["history"])
    assert 2 <= stop_at < 5
    assert bad["history"][stop_at - 1]["val_eps_mse"] > good["history"][stop_at - 1]["val_eps_mse"]
    assert results["pareto"] == [good["key"]]
    # The trial's own baseline (sweep.reference) is its utility reference; the one completed
    # setting is the front, and the recommendation names it or the closest to the budget.
    assert good["utility_reference"] > 0 and 0.0 <= good["reference_privacy_auc"] <= 1.0
    [setting] = results["settings"]
    assert setting["utility_ratio"] == pytest.approx(good["utility"] / good["utility_reference"])
    rec = results["recommended"]
    assert (rec["key"] or rec["closest"]) == '{"train.lr":0.002}'
    assert good["recommended"] is rec["within_budget"]
    assert ("recommended: " if rec["within_budget"] else "no setting within") in second
    assert re.search(r"\*[R ] p000-", second) and "(stopped)" in second

    # 3. MLflow: the killed invocation's runs are closed; the finished parent holds a child per
    # trial with its val_eps_mse curve.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    parents = client.search_runs(
        [exp.experiment_id],
        "tags.mlflow.runName = 'training-sweep/smoke'",
        order_by=["attributes.start_time ASC"],
    )
    assert [p.info.status for p in parents] == ["KILLED", "FINISHED"]
    done = parents[1]
    assert done.data.params["sweep.kind"] == "training"
    assert done.data.metrics["best.privacy_auc"] == pytest.approx(good["privacy_auc"])
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{done.info.run_id}'"
    )
    status = {c.data.params["train.lr"]: c for c in children}
    assert set(status) == {"0.002", "1e-05"}
    assert status["0.002"].info.status == "FINISHED"
    assert status["1e-05"].info.status == "KILLED"
    assert status["1e-05"].data.tags["raydefense.trial_status"] == "stopped"
    curve = client.get_metric_history(status["0.002"].info.run_id, "val_eps_mse")
    assert [m.step for m in curve] == [1, 2, 3, 4, 5]

    # 4. A third invocation reads the finished Tune run and reruns nothing.
    third = finish(tmp_path, "third.log")
    assert "resuming Tune run" in third and not re.search(r"\] train \w+: step", third)
    again = json.loads((base / "results.json").read_text())
    assert again["trials"] == results["trials"]
