"""The in-process executor (raydefense.run.local): the train stage through it trains real
models, resumes a killed fit from its last whole checkpoint, and keeps the finished fits' models
when one fails, like the Ray Train fitter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raydefense import layout
from raydefense.diffusion.backbones.unet2d import load_unet
from raydefense.diffusion.checkpoint import load_state
from raydefense.errors import FitsFailed
from raydefense.pipeline import stage_prepare, stage_train
from raydefense.run.context import Backend, FitSpec, RunContext
from raydefense.run.fingerprints import stage_fingerprints
from raydefense.run.fitting import load_fit, run_fit
from raydefense.run.local import LocalFitter, LocalReporter
from raydefense.storage import Storage

from conftest import tiny_config

MODELS = ("baseline", "teacher_1", "teacher_2")


def context(tmp_path: Path, **overrides: str) -> RunContext:
    cfg = tiny_config(tmp_path, **{"tracking.register_models": "false", **overrides})
    storage = Storage(cfg.storage.root, cfg.experiment)
    ctx = RunContext(
        cfg=cfg,
        storage=storage,
        backend=Backend(fitter=LocalFitter()),
        fingerprints=stage_fingerprints(cfg),
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
