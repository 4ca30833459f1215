"""The in-process executor (raydefense.run.local, raydefense.placement.InProcessPool): the train
stage through it trains real models, resumes a killed fit from its last whole checkpoint, and
keeps the finished fits' models when one fails, like the Ray Train fitter; the labeller on its
pool writes soft targets that do not depend on the batching; the whole pipeline runs on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raydefense import layout
from raydefense.diffusion.backbones.unet2d import load_unet
from raydefense.diffusion.checkpoint import load_state
from raydefense.errors import FitsFailed
from raydefense.layout import SOFT_TARGETS
from raydefense.pipeline import stage_prepare, stage_train
from raydefense.placement import InProcessPool
from raydefense.run.context import Backend, FitSpec, RunContext, TrainingTrial
from raydefense.run.fitting import load_fit, run_fit
from raydefense.run.labelling import PoolLabeller
from raydefense.run.local import LocalFitter, LocalReporter, LocalTrialRunner
from raydefense.storage import Storage

from conftest import in_process_context, tiny_config, tiny_sets

MODELS = ("baseline", "teacher_1", "teacher_2")


def context(tmp_path: Path, **overrides: str) -> RunContext:
    ctx = in_process_context(
        tiny_config(tmp_path, **{"tracking.register_models": "false", **overrides})
    )
    stage_prepare(ctx)
    return ctx


def test_the_train_stage_trains_every_target_in_process(tmp_path: Path) -> None:
    ctx = context(tmp_path, **{"train.steps": "6", "train.checkpoint_every": "3"})
    stage_train(ctx)
    for m in MODELS:
        assert ctx.storage.exists(layout.marker(layout.model_dir(m)))
        assert load_state(ctx.storage.path(layout.model_dir(m)))["step"] == 6
        load_unet(ctx.storage.path(layout.model_dir(m)), "ema")


class CrashAfter(LocalReporter):
    """Dies (like a killed process) right after its checkpoint at `step` is stored."""

    def __init__(self, *args: object, step: int) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.crash_at = step

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        super().report(metrics, checkpoint_dir)
        if metrics["step"] == self.crash_at and checkpoint_dir is not None:
            raise KeyboardInterrupt


def test_a_killed_fit_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    """Six steps straight equal three steps, a kill, and the fitter's rerun to six (the same
    batches, the optimizer state restored), weight for weight."""
    ctx = context(tmp_path, **{"train.steps": "6", "train.checkpoint_every": "3"})
    spec = FitSpec("baseline", "ddpm", 0, "straight")
    run_fit(load_fit(ctx.cfg, ctx.storage, spec), LocalReporter(ctx.storage, "straight"))
    straight = LocalReporter(ctx.storage, "straight").latest_checkpoint()
    killed = FitSpec("baseline", "ddpm", 0, "killed")
    with pytest.raises(KeyboardInterrupt):
        run_fit(load_fit(ctx.cfg, ctx.storage, killed), CrashAfter(ctx.storage, "killed", step=3))
    assert load_state(LocalReporter(ctx.storage, "killed").latest_checkpoint())["step"] == 3
    LocalFitter().fit(ctx.cfg, ctx.storage, [killed])
    resumed = ctx.storage.path(layout.model_dir("baseline"))
    assert load_state(resumed)["step"] == 6
    for weights in ("raw", "ema"):
        a, b = load_unet(straight, weights).state_dict(), load_unet(resumed, weights).state_dict()
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), (weights, k)


def test_a_failed_fit_keeps_the_others(tmp_path: Path) -> None:
    """A loss that turns to nan fails that fit alone; the finished fits keep their models."""
    ctx = context(tmp_path, **{"train.steps": "4", "train.teacher.lr": "1e30"})
    with pytest.raises(FitsFailed) as e:
        stage_train(ctx)
    assert {"teacher_1", "teacher_2"} <= set(e.value.failed) and "baseline" in e.value.done
    assert ctx.storage.exists(layout.marker(layout.model_dir("baseline")))
    assert not ctx.storage.exists(layout.marker(layout.model_dir("teacher_1")))


def test_the_reporter_points_at_whole_checkpoints_only(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path), "exp")
    reporter = LocalReporter(storage, "fit-x")
    assert reporter.latest_checkpoint() is None
    for step in (3, 6):
        ckpt = tmp_path / f"ckpt{step}"
        ckpt.mkdir()
        (ckpt / "state.txt").write_text(str(step))
        reporter.report({"step": step, "loss": 1.0}, str(ckpt))
    latest = reporter.latest_checkpoint()
    assert latest is not None and (Path(latest) / "state.txt").read_text() == "6"
    reporter.close()
    assert not Path(reporter._cache).exists()
    assert storage.listdir(f"{layout.ray_train_run('fit-x')}/local") == ["latest.json", "step-6"]


def test_the_in_process_labeller_labels_with_the_other_teacher_whatever_the_batches(
    tmp_path: Path,
) -> None:
    ctx = context(tmp_path, **{"train.steps": "2", "train.checkpoint_every": "2"})
    stage_train(ctx)
    plan = ctx.storage.read_json(layout.PLAN_JSON)
    member_ids = ctx.storage.read_table(layout.ROWS, ["row_id"])["row_id"].to_pylist()[:10]
    owners = {r: [("teacher_1", "teacher_2")[i % 2]] for i, r in enumerate(member_ids)}
    teachers = ["teacher_1", "teacher_2"]
    labeller = PoolLabeller(InProcessPool())
    n = labeller.label_soft_targets(ctx.cfg, ctx.storage, teachers, owners, 3)
    assert n == 30 and plan["image_shape"] == [1, 8, 8]
    table = ctx.storage.read_table(SOFT_TARGETS).sort_by(
        [("row_id", "ascending"), ("draw", "ascending")]
    )
    for r, who in zip(table["row_id"].to_pylist(), table["teachers"].to_pylist()):
        assert who == ("teacher_2" if owners[r] == ["teacher_1"] else "teacher_1")
    # Other batches (two rows each), the same soft targets value for value.
    small = ctx.cfg.model_copy(deep=True)
    small.distill.label_batch_size = 6
    labeller.label_soft_targets(small, ctx.storage, teachers, owners, 3, "distill/small")
    other = ctx.storage.read_table("distill/small").sort_by(
        [("row_id", "ascending"), ("draw", "ascending")]
    )
    assert len(ctx.storage.listdir("distill/small")) > len(ctx.storage.listdir(SOFT_TARGETS))
    for c in ("row_id", "draw", "shard", "t", "teachers"):
        assert other[c].equals(table[c]), c
    a, b = (np.stack([np.frombuffer(x, np.float32) for x in tb["target"].to_pylist()])
            for tb in (table, other))  # fmt: skip
    # The same draws; the network's sums over another batch differ in the last bits only.
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_the_cli_runs_the_pipeline_and_a_sweep_in_process(tmp_path: Path) -> None:
    """`--executor local`: prepare, train, distill (the labeller on the in-process pool),
    evaluate and report with no Ray, the MLflow run tree as usual; then an attack sweep over
    the stored scores, its trials one after another (resumable: a rerun reuses them)."""
    import mlflow

    from raydefense.cli import main

    sets = {
        **tiny_sets(tmp_path),
        "train.steps": "4",
        "train.checkpoint_every": "2",
        "sweep.attacks": "{secmi_stat: {t_sec: [20, 40], k: [10]}}",
    }
    argv = ["--preset", "smoke", "--executor", "local"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    assert main(["run", *argv]) == 0
    storage = Storage(str(tmp_path / "runs"), "tiny")
    results = storage.read_json(layout.RESULTS)
    assert {"baseline", "dualmd", "student"} <= {r["target"] for r in results["attacks"]}
    client = mlflow.MlflowClient(sets["tracking.uri"])
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`raydefense.command` = 'run'")
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert main(["sweep", *argv]) == 0
    (run,) = storage.listdir("sweeps/smoke/tune")  # the preset's sweep.name
    assert storage.listdir(f"sweeps/smoke/tune/{run}") == ["trial_00000.json", "trial_00001.json"]
    assert storage.read_json("sweeps/smoke/results.json")["num_trials"] == 2


def test_the_in_process_trial_runner_runs_each_trial_once_and_resumes(tmp_path: Path) -> None:
    """Training trials run one after another to their end on the in-process backend; a rerun
    of the same sweep reuses every finished trial's stored result."""
    cfg = tiny_config(tmp_path)
    storage = Storage(cfg.storage.root, cfg.experiment)
    calls: list[tuple[int, str]] = []

    def run(i: int, backend: Backend) -> dict[str, object]:
        calls.append((i, type(backend.fitter).__name__))
        return {"privacy_auc": 0.5 + i / 10, "setting": f"p{i}", "skipped": None}

    trial = TrainingTrial(
        points=3,
        watched="baseline",
        metric="val_eps_mse",
        max_t=4,
        run=run,
        final_value=lambda i: 1.0 - i / 10,
        label=lambda i: f"p{i}",
    )
    runner = LocalTrialRunner()
    out = runner.training_trials(cfg, storage, "sweeps/t/tune", "run-1", trial)
    assert calls == [(0, "LocalFitter"), (1, "LocalFitter"), (2, "LocalFitter")]
    assert [o["status"] for o in out] == ["completed"] * 3
    assert out[2]["metrics"] == {
        "privacy_auc": 0.7,
        "setting": "p2",
        "val_eps_mse": 0.8,
        "completed": 1,
    }
    assert out[1]["history"] == [{"iteration": 4, "val_eps_mse": 0.9}]
    assert runner.training_trials(cfg, storage, "sweeps/t/tune", "run-1", trial) == out
    assert len(calls) == 3  # resumed: nothing ran again
    settings = ["a", "b"]
    ran = runner.attack_trials(cfg, storage, "sweeps/a/tune", "run-2", settings, lambda s: {"m": 1})
    assert [r["metrics"] for r in ran] == [{"m": 1}, {"m": 1}]
