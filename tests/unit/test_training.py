"""The core training loop: both objectives run, batches are deterministic, resume is exact."""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
import torch

from raydefense.config import TrainConfig
from raydefense.data.examples import ImageData, SoftTargetData
from raydefense.diffusion.backbones import load_net
from raydefense.diffusion.backbones.unet2d import load_unet
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.diffusion.training import BatchSource, fit
from raydefense.families import UNet2DConfig

MODEL = UNet2DConfig(block_out_channels=[8, 16], norm_num_groups=4)
SCHED = NoiseSchedule()


class ListReporter:
    """Keeps every report and the last checkpoint (a stand-in for Ray Train's storage)."""

    world_rank, world_size = 0, 1

    def __init__(self, resume_from=None, stop_after=None):
        self.reports, self.ckpt, self.resume_from = [], None, resume_from
        self.stop_after = stop_after

    def report(self, metrics, checkpoint_dir):
        self.reports.append(dict(metrics))
        if checkpoint_dir:
            self.ckpt = tempfile.mkdtemp()
            shutil.copytree(checkpoint_dir, self.ckpt, dirs_exist_ok=True)
        if self.stop_after and metrics["step"] >= self.stop_after:
            raise KeyboardInterrupt  # simulated crash right after a checkpoint

    def latest_checkpoint(self):
        return self.resume_from


def images(n=12):
    g = torch.Generator().manual_seed(0)
    return ImageData(images=torch.rand((n, 1, 8, 8), generator=g) * 2 - 1)


def test_ddpm_fit_reports_and_checkpoints():
    rep = ListReporter()
    cfg = TrainConfig(steps=6, batch_size=4, checkpoint_every=3, log_every=2)
    out = fit(images(), MODEL, cfg, SCHED, (1, 8, 8), seed=0, model_index=0, reporter=rep)
    assert [r["step"] for r in rep.reports] == [2, 3, 4, 6]
    assert out["step"] == 6 and np.isfinite(out["loss"])
    unet = load_unet(rep.ckpt, "ema")
    assert unet.config.sample_size == 8


def test_resume_continues_exactly_like_an_uninterrupted_run():
    cfg = TrainConfig(steps=8, batch_size=4, checkpoint_every=4, log_every=4, ema_decay=0.9)
    full = ListReporter()
    fit(images(), MODEL, cfg, SCHED, (1, 8, 8), seed=1, model_index=2, reporter=full)
    crashed = ListReporter(stop_after=4)
    try:
        fit(images(), MODEL, cfg, SCHED, (1, 8, 8), seed=1, model_index=2, reporter=crashed)
    except KeyboardInterrupt:
        pass
    resumed = ListReporter(resume_from=crashed.ckpt)
    fit(images(), MODEL, cfg, SCHED, (1, 8, 8), seed=1, model_index=2, reporter=resumed)
    assert [r["step"] for r in resumed.reports] == [8]
    for weights in ("ema", "raw"):
        a, b = load_unet(full.ckpt, weights), load_unet(resumed.ckpt, weights)
        for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.allclose(p, q, atol=1e-6), k


def test_distill_batches_alternate_between_shards_without_reuse():
    n_per = 6
    data = SoftTargetData(
        x_t=torch.arange(2 * n_per, dtype=torch.float32).view(-1, 1, 1, 1),
        t=torch.zeros(2 * n_per, dtype=torch.long),
        target=torch.zeros(2 * n_per, 1, 1, 1),
        group=torch.tensor([0] * n_per + [1] * n_per),
    )
    src = BatchSource(data, SCHED, global_batch=3, rank=0, world_size=1, seed=0, model_index=3)
    seen = {0: [], 1: []}
    for step in range(4):  # 2 batches per group = exactly one epoch of each
        x, _, _, _ = src.batch(step)
        ids = x.view(-1).long().tolist()
        group = 0 if ids[0] < n_per else 1
        assert group == step % 2 and all((i < n_per) == (group == 0) for i in ids)
        seen[group] += ids
    assert sorted(seen[0]) == list(range(n_per)) and sorted(seen[1]) == list(range(n_per, 12))
    again = BatchSource(data, SCHED, 3, 0, 1, seed=0, model_index=3)
    assert torch.equal(again.batch(3)[0], src.batch(3)[0])


def test_distill_fit_learns_the_soft_targets():
    n = 16
    x_t = torch.randn(n, 1, 8, 8)
    data = SoftTargetData(
        x_t=x_t,
        t=torch.full((n,), 10),
        target=torch.zeros_like(x_t),
        group=torch.tensor([0, 1] * (n // 2)),
    )
    rep = ListReporter()
    cfg = TrainConfig(steps=30, batch_size=8, lr=1e-2, checkpoint_every=30, log_every=10)
    fit(data, MODEL, cfg, SCHED, (1, 8, 8), seed=0, model_index=3, reporter=rep)
    assert rep.reports[-1]["loss"] < rep.reports[0]["loss"]


def test_a_non_finite_loss_stops_the_fit_at_its_first_step():
    """Losses are checked at each report (no per-step host sync) and the error names the first
    non-finite step of the window, not the report's."""
    import pytest

    from raydefense.diffusion.training import check_finite
    from raydefense.errors import NonFiniteLossError

    data = images()
    data.images[:] = float("inf")  # every batch: inf pixels give a nan loss
    rep = ListReporter()
    cfg = TrainConfig(steps=8, batch_size=4, checkpoint_every=8, log_every=4)
    with pytest.raises(NonFiniteLossError) as e:
        fit(data, MODEL, cfg, SCHED, (1, 8, 8), seed=0, model_index=0, reporter=rep)
    assert e.value.step == 1 and rep.reports == [] and rep.ckpt is None
    check_finite(torch.tensor([0.5, 0.25]), 11)  # finite: nothing happens
    with pytest.raises(NonFiniteLossError) as e:
        check_finite(torch.tensor([0.5, float("inf"), float("nan")]), 11)
    assert (e.value.step, e.value.value) == (12, float("inf"))
    msg = str(NonFiniteLossError(12, float("inf"), "teacher_1"))
    assert msg.startswith("train teacher_1: the loss became inf at step 12;") and "\n" not in msg


def test_fits_failed_names_the_first_failure_in_one_line():
    import pickle

    from raydefense.errors import FitsFailed, NonFiniteLossError

    e = FitsFailed(
        {"baseline": NonFiniteLossError(3, float("nan"), "baseline"), "teacher_1": OSError("x")},
        ["teacher_2"],
    )
    assert str(e).startswith("train baseline: the loss became nan at step 3")
    assert str(e).endswith("(1 more fit(s) failed too)") and e.done == ["teacher_2"]
    back = pickle.loads(pickle.dumps(NonFiniteLossError(3, 1.0, "m")))
    assert (back.step, back.value, back.model) == (3, 1.0, "m")


def test_hflip_mirrors_a_seeded_half_and_keeps_every_other_draw():
    from raydefense.diffusion.training import flip_half

    src = BatchSource(images(), SCHED, 8, 0, 1, seed=3, model_index=1)
    mask = src.flips(5)
    assert mask.dtype == torch.bool and torch.equal(mask, src.flips(5))
    assert not torch.equal(mask, src.flips(6))
    x = torch.arange(2 * 4, dtype=torch.float32).view(2, 1, 1, 4)
    out = flip_half(x, torch.tensor([True, False]))
    assert out[0, 0, 0].tolist() == [3, 2, 1, 0] and torch.equal(out[1], x[1])
    # A flipped run draws the same rows, timesteps and noise as an unflipped one.
    plain = TrainConfig(steps=2, batch_size=4, checkpoint_every=2, log_every=1)
    a, b = ListReporter(), ListReporter()
    fit(images(), MODEL, plain, SCHED, (1, 8, 8), seed=0, model_index=0, reporter=a)
    flipped = plain.model_copy(update={"hflip": True})
    fit(images(), MODEL, flipped, SCHED, (1, 8, 8), seed=0, model_index=0, reporter=b)
    assert a.reports[0]["loss"] != b.reports[0]["loss"]  # the images differ, nothing else


def test_bf16_autocast_and_channels_last_train_on_cpu():
    base = TrainConfig(steps=4, batch_size=4, checkpoint_every=4, log_every=2)
    runs = {}
    for name, upd in {
        "fp32": {},
        "bf16": {"precision": "bf16"},
        "nhwc": {"channels_last": True},
    }.items():
        rep = ListReporter()
        cfg = base.model_copy(update=upd)
        fit(images(), MODEL, cfg, SCHED, (1, 8, 8), seed=0, model_index=0, reporter=rep)
        runs[name] = [r["loss"] for r in rep.reports]
        net = load_unet(rep.ckpt, "raw")
        assert all(p.dtype == torch.float32 for p in net.parameters())  # fp32 master weights
    assert np.allclose(runs["nhwc"], runs["fp32"], rtol=1e-4)  # a layout, not new numbers
    assert np.allclose(runs["bf16"], runs["fp32"], rtol=0.05) and runs["bf16"] != runs["fp32"]


class ScriptedValidation:
    """validate(ema_net) for fit: val_eps_mse from a script, one value per report, and a copy
    of the EMA weights it was given (the weights each value belongs to)."""

    def __init__(self, values):
        self.values, self.seen = list(values), []

    def __call__(self, net):
        self.seen.append({k: v.clone() for k, v in net.state_dict().items()})
        return {"val_eps_mse": self.values[len(self.seen) - 1]}


def early(steps=12, patience=2, **kw):
    return TrainConfig(
        steps=steps,
        batch_size=4,
        log_every=1,
        checkpoint_every=3,
        early_stopping={"enabled": True, "patience": patience, **kw},
    )


def fit_early(reporter, values, cfg=None, seed=0, model_index=0):
    """fit() of the tiny net under early stopping with a scripted val_eps_mse; -> (metrics,
    the ScriptedValidation)."""
    val = ScriptedValidation(values)
    out = fit(
        images(),
        MODEL,
        cfg or early(),
        SCHED,
        (1, 8, 8),
        seed=seed,
        model_index=model_index,
        reporter=reporter,
        validate=val,
    )
    return out, val


def test_early_stopping_ends_the_fit_and_keeps_the_best_reports_weights():
    # best at step 3; steps 4 and 5 do not improve (0.5 is not below 0.5 - 0.0): stop at 5
    rep = ListReporter()
    out, val = fit_early(rep, [0.9, 0.7, 0.5, 0.5, 0.6] + [0.1] * 7)
    assert [r["step"] for r in rep.reports] == [1, 2, 3, 4, 5]
    assert out["stopped_early"] == 1.0 and out["best_step"] == 3
    assert out["best_val_eps_mse"] == 0.5 and out["val_eps_mse"] == 0.6
    saved = load_net(MODEL, rep.ckpt, "ema").state_dict()
    for k, v in val.seen[2].items():  # the EMA weights validated at step 3
        assert torch.equal(saved[k], v), k
    assert not torch.equal(saved[k], val.seen[4][k])


def test_min_delta_and_min_steps_postpone_the_stop():
    vals = [0.9, 0.89, 0.88, 0.87, 0.86, 0.86, 0.86, 0.86]
    rep = ListReporter()
    fit_early(rep, vals, early(steps=8, patience=2, min_delta=0.05))
    assert rep.reports[-1]["step"] == 3 and rep.reports[-1]["best_step"] == 1
    rep = ListReporter()
    fit_early(rep, vals, early(steps=8, patience=2, min_delta=0.05, min_steps=6))
    assert rep.reports[-1]["step"] == 6 and rep.reports[-1]["best_step"] == 1


def test_a_fit_that_never_stalls_ends_with_its_best_weights_too():
    rep = ListReporter()
    out, val = fit_early(rep, [0.9, 0.8, 0.7, 0.6, 0.65, 0.64], early(steps=6, patience=3))
    assert out["step"] == 6 and out["stopped_early"] == 0.0 and out["best_step"] == 4
    saved = load_net(MODEL, rep.ckpt, "ema").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in val.seen[3].items())


def test_early_stopping_resumes_to_the_same_stop_and_weights():
    vals = [0.9, 0.8, 0.7, 0.75, 0.72, 0.71, 0.73, 0.9, 0.9]
    cfg = early(steps=9, patience=3)
    full = ListReporter()
    fit_early(full, vals, cfg, seed=1, model_index=2)
    assert full.reports[-1]["step"] == 6 and full.reports[-1]["best_step"] == 3
    crashed = ListReporter(stop_after=3)  # crash after the step-3 checkpoint (the best so far)
    try:
        fit_early(crashed, vals, cfg, seed=1, model_index=2)
    except KeyboardInterrupt:
        pass
    resumed = ListReporter(resume_from=crashed.ckpt)
    fit_early(resumed, vals[3:], cfg, seed=1, model_index=2)
    assert [r["step"] for r in resumed.reports] == [4, 5, 6]
    for weights in ("ema", "raw"):
        a, b = load_unet(full.ckpt, weights), load_unet(resumed.ckpt, weights)
        for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), k
    # A rerun after the stop trains nothing more: its checkpoint is final.
    again = ListReporter(resume_from=full.ckpt)
    out, _ = fit_early(again, vals, cfg, seed=1, model_index=2)
    assert again.reports == [] and out["best_step"] == 3


def test_early_stopping_needs_validation():
    import pytest

    with pytest.raises(ValueError, match="val_rows"):
        fit(
            images(),
            MODEL,
            early(),
            SCHED,
            (1, 8, 8),
            seed=0,
            model_index=0,
            reporter=ListReporter(),
        )


def test_the_diffusers_ema_warmup_is_emamodel_s_schedule() -> None:
    """train.ema_warmup=diffusers tracks diffusers' own EMAModel (train_text_to_image's
    defaults) update for update; "none" is the constant decay."""
    from diffusers.training_utils import EMAModel

    from raydefense.diffusion.ema import EMA

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    ours, theirs = EMA(net, 0.9999, "diffusers"), EMAModel(net.parameters(), decay=0.9999)
    for step in range(30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ours.update(net, step)
        theirs.step(net.parameters())
        for a, b in zip(ours.shadow.parameters(), theirs.shadow_params):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ours.decay_at(0) == 0.0 and ours.decay_at(1) == 2 / 11
    assert ours.decay_at(10**6) == 0.9999 and EMA(net, 0.9999).decay_at(0) == 0.9999


def test_a_student_on_regenerated_inputs_is_the_student_on_stored_ones():
    """distill.store_x_t=false changes no byte the student sees: x_t regenerated per batch from
    the (row, draw) seeds give the same weights as the labeller's stored x_t."""
    from raydefense.defense.distillmd import SoftTargetLabeller
    from raydefense.diffusion.noising import RegeneratedInputs

    ids = np.arange(6) * 7
    x0 = torch.rand((6, 1, 8, 8), generator=torch.Generator().manual_seed(1)) * 2 - 1
    owners = {int(r): frozenset({f"teacher_{1 + i % 2}"}) for i, r in enumerate(ids)}
    teachers = {"teacher_1": lambda x, t: 0.3 * x, "teacher_2": lambda x, t: -0.2 * x}
    out = SoftTargetLabeller(teachers, owners, SCHED, draws=4, seed=3)(
        {"row_id": ids, "shard": np.arange(6) % 2, "image": x0.numpy()}
    )
    common = dict(
        t=torch.from_numpy(out["t"]),
        target=torch.from_numpy(out["target"]),
        group=torch.from_numpy(out["shard"]),
    )
    stored = SoftTargetData(x_t=torch.from_numpy(out["x_t"]), **common)
    regen = RegeneratedInputs(
        3, SCHED, x0, np.repeat(np.arange(6), 4), out["row_id"], out["draw"], out["t"]
    )
    keys_only = SoftTargetData(x_t=None, regenerate=regen, **common)
    cfg = TrainConfig(steps=6, batch_size=4, lr=1e-3, checkpoint_every=6, log_every=3)
    a, b = ListReporter(), ListReporter()
    fit(stored, MODEL, cfg, SCHED, (1, 8, 8), seed=0, model_index=3, reporter=a)
    fit(keys_only, MODEL, cfg, SCHED, (1, 8, 8), seed=0, model_index=3, reporter=b)
    assert [r["loss"] for r in a.reports] == [r["loss"] for r in b.reports]
    for p, q in zip(load_unet(a.ckpt, "raw").parameters(), load_unet(b.ckpt, "raw").parameters()):
        assert torch.equal(p, q)
