"""Kill the CLI driver mid-train and again mid-distill; rerunning the same command resumes and
ends with the same models and soft targets as an uninterrupted run.

The driver runs in its own session and is killed with SIGKILL to its process group (Ray's head
processes share it) and to the rest of its session (Ray workers lead process groups of their own):
no handler, no cleanup, as when a machine dies. Each rerun starts a fresh local Ray cluster and
resumes from the stage markers and the Ray Train checkpoints under `<root>/<experiment>/ray_train`.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from raydefense.config import load_config
from raydefense.data.tables import read_soft_targets
from raydefense.diffusion.backbones.unet2d import load_unet
from raydefense.diffusion.checkpoint import load_state
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.layout import PLAN_JSON, SOFT_TARGETS
from raydefense.storage import Storage

# Four CLI runs with their own Ray clusters: ~6 min alone on 2 cores, so it runs in the slow
# suite (`python -m pytest -q -m slow`, which .ci/run also runs).
pytestmark = [pytest.mark.ray, pytest.mark.slow]

pytest.importorskip("psutil")
from processes import finish_cli, kill_run, start_cli  # noqa: E402

EXPERIMENT = "tiny"
STEPS = 20
EVERY = 5  # checkpoint and log every 5 steps: 3 mid-way checkpoints per fit to land a kill on
TARGETS = ["baseline", "teacher_1", "teacher_2"]
MODELS = [*TARGETS, "student"]
ATTEMPT_TIMEOUT_S = 600
# The runs' seed and schedule (the smoke preset's), which regenerate the student's x_t.
NOISING = (load_config("smoke").seed, NoiseSchedule.of(load_config("smoke").model), False)


def flags(base: Path) -> list[str]:
    """tests/conftest.py's tiny_config, as CLI flags. Only the loss attack is enabled: it needs
    no shadow model, so `train` fits just the baseline and the two teachers."""
    sets = {
        "experiment": EXPERIMENT,
        "storage.root": str(base / "runs"),
        "tracking.uri": f"sqlite:///{base / 'mlflow.db'}",
        "data.num_members": "16",
        "data.num_nonmembers": "16",
        "train.steps": str(STEPS),
        "train.batch_size": "8",
        "train.checkpoint_every": str(EVERY),
        "train.log_every": str(EVERY),
        "distill.draws_per_row": "2",
        "attacks.enabled": "[loss]",
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def start(base: Path, log_name: str) -> tuple[subprocess.Popen, Path]:
    """`raydefense distill` in its own session, output to base/<log_name>."""
    return start_cli(["distill", "--preset", "smoke", *flags(base)], base, log_name)


def tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:]


def run_to_completion(base: Path, log_name: str) -> str:
    return finish_cli(
        ["distill", "--preset", "smoke", *flags(base)], base, log_name, ATTEMPT_TIMEOUT_S
    )


def kill_when(base: Path, log_name: str, ready: Callable[[], bool]) -> str:
    """Start the command and SIGKILL it (the whole process group) as soon as ready()."""
    proc, log = start(base, log_name)
    deadline = time.monotonic() + ATTEMPT_TIMEOUT_S
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(
                    f"{log_name}: exited ({proc.returncode}) before the moment to kill "
                    f"it came\n{tail(log)}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"{log_name}: the moment to kill it never came\n{tail(log)}")
            time.sleep(0.05)
    finally:
        kill_run(proc)
    return log.read_text(errors="replace")


def checkpoint_steps(storage: Storage) -> dict[str, int]:
    """model -> step of its latest checkpoint that Ray Train registered (what a rerun resumes
    from), read from each run's checkpoint_manager_snapshot.json."""
    steps = {}
    root = Path(storage.path("ray_train"))
    for run in root.glob("*/checkpoint_manager_snapshot.json") if root.is_dir() else []:
        try:
            latest = json.loads(run.read_text()).get("latest_checkpoint_result")
        except (OSError, ValueError):  # being rewritten right now
            continue
        if latest:
            steps[run.parent.name.rsplit("-", 1)[0]] = int(latest["metrics"]["step"])
    return steps


def mid_way(storage: Storage, models: list[str]) -> dict[str, int]:
    return {m: s for m, s in checkpoint_steps(storage).items() if m in models and 0 < s < STEPS}


def check_markers_describe_complete_outputs(storage: Storage) -> None:
    """After a kill: every completion marker that exists stands for complete outputs."""
    for m in MODELS:
        if storage.exists(f"models/{m}/_COMPLETE.json"):
            assert load_state(storage.path(f"models/{m}"))["step"] == STEPS, m
            load_unet(storage.path(f"models/{m}"), "ema")
    if storage.exists(f"{SOFT_TARGETS}/_COMPLETE.json"):
        rows = storage.read_json(f"{SOFT_TARGETS}/_COMPLETE.json")["outputs"]["rows"]
        shape = tuple(storage.read_json(PLAN_JSON)["image_shape"])
        assert len(read_soft_targets(storage, shape, noising=NOISING)) == rows
    if storage.exists("train/_COMPLETE.json"):
        for m in TARGETS:
            assert storage.exists(f"models/{m}/_COMPLETE.json"), m


def loss_history(base: Path) -> list[dict[str, dict[int, float]]]:
    """Per invocation of the CLI (oldest first): model -> {step: loss} its fits logged."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{base / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = sorted(
        (r for r in runs if r.info.run_name.startswith("pipeline/")),
        key=lambda r: r.info.start_time,
    )
    out = []
    for parent in parents:
        fits = {}
        for r in runs:
            if r.data.tags.get(
                "mlflow.parentRunId"
            ) == parent.info.run_id and r.info.run_name.startswith("train/"):
                fits[r.info.run_name.split("/", 1)[1]] = {
                    h.step: h.value for h in client.get_metric_history(r.info.run_id, "loss")
                }
        out.append(fits)
    return out


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path):
    t0 = time.perf_counter()
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "interrupted"
    ref_dir.mkdir()
    run_dir.mkdir()
    ref = Storage(str(ref_dir / "runs"), EXPERIMENT)
    run = Storage(str(run_dir / "runs"), EXPERIMENT)

    run_to_completion(ref_dir, "reference.log")
    t_ref = time.perf_counter()

    # 1. Killed while the targets train: once one of them has a checkpoint short of the end.
    kill_when(
        run_dir,
        "attempt1.log",
        lambda: bool(mid_way(run, TARGETS)) and not run.exists("train/_COMPLETE.json"),
    )
    killed_train = checkpoint_steps(run)
    assert not run.exists("train/_COMPLETE.json")
    assert not run.exists(SOFT_TARGETS) and "student" not in killed_train
    assert any(0 < killed_train.get(m, 0) < STEPS for m in TARGETS), killed_train
    check_markers_describe_complete_outputs(run)

    # 2. Rerun; killed again while the student trains, after a mid-way checkpoint.
    second = kill_when(
        run_dir,
        "attempt2.log",
        lambda: bool(mid_way(run, ["student"])) and not run.exists("models/student/_COMPLETE.json"),
    )
    killed_student = checkpoint_steps(run)["student"]
    assert 0 < killed_student < STEPS
    assert run.exists("train/_COMPLETE.json") and run.exists(f"{SOFT_TARGETS}/_COMPLETE.json")
    assert not run.exists("distill/_COMPLETE.json")
    assert "prepare: complete" in second and "train: complete" not in second
    check_markers_describe_complete_outputs(run)

    # 3. Rerun to the end: it skips what is complete and finishes the student.
    third = run_to_completion(run_dir, "attempt3.log")
    assert "prepare: complete" in third and "train: complete" in third
    assert "soft targets (" not in third  # labelled once, in attempt 2, and reused
    assert run.exists("distill/_COMPLETE.json")
    t_run = time.perf_counter()

    # Each rerun resumed from the last checkpoint Ray Train registered before the kill, not from
    # step 0 (which would reach the same weights, the batches being a function of the step),
    # and from the same state: its losses match the reference run step for step.
    reference = loss_history(ref_dir)[0]
    attempts = loss_history(run_dir)
    assert len(attempts) == 3
    resumed = {m: (attempts[1][m], killed_train.get(m, 0)) for m in TARGETS}
    resumed["student"] = (attempts[2]["student"], killed_student)
    for m, (losses, killed_at) in resumed.items():
        assert sorted(losses) == list(range(killed_at + EVERY, STEPS + 1, EVERY)), (m, killed_at)
        for step, loss in losses.items():
            assert loss == pytest.approx(reference[m][step], rel=1e-5, abs=1e-7), (m, step)
    assert "student" not in attempts[0] and set(attempts[2]) == {"student"}

    # The outcome: the same models, raw and EMA weights, and the same soft targets.
    for m in MODELS:
        for weights in ("ema", "raw"):
            want = load_unet(ref.path(f"models/{m}"), weights).state_dict()
            got = load_unet(run.path(f"models/{m}"), weights).state_dict()
            assert want.keys() == got.keys()
            for k in want:
                assert torch.allclose(got[k], want[k], rtol=0, atol=1e-6), (m, weights, k)
        assert load_state(run.path(f"models/{m}"))["step"] == STEPS
    shape = tuple(ref.read_json(PLAN_JSON)["image_shape"])
    a = read_soft_targets(ref, shape, noising=NOISING)
    b = read_soft_targets(run, shape, noising=NOISING)
    for field in ("t", "target", "group"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    every = torch.arange(len(a))
    assert torch.equal(a.inputs(every), b.inputs(every))
    print(
        f"\nkill/resume: reference {t_ref - t0:.0f}s, interrupted + resumed {t_run - t_ref:.0f}s;"
        f" killed at {killed_train} (train) and student step {killed_student} (distill)"
    )
