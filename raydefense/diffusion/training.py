"""The training loop for every model (baseline, teachers, student), plain PyTorch.

Batches are a pure function of (seed, model, rank, step), so a run resumed from a checkpoint at
step s continues exactly as an uninterrupted one would. Distributed wiring (DDP wrapping, reporting,
checkpoint storage) comes from the caller through `Reporter` and `wrap_model`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Optional, Protocol, cast

import numpy as np
import torch

from raydefense.config import ModelConfig, TrainConfig
from raydefense.data.examples import ImageData, LatentData, SoftTargetData, TrainData
from raydefense.diffusion.backbones import backbone_of, load_net
from raydefense.diffusion.checkpoint import load_state, save_checkpoint
from raydefense.diffusion.early_stopping import METRIC, EarlyStopper
from raydefense.diffusion.ema import EMA
from raydefense.diffusion.eps import EpsNet
from raydefense.diffusion.objectives import ddpm_loss, distill_loss
from raydefense.diffusion.private_step import PrivateTraining, PrivateTrainStep
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import NonFiniteLossError
from raydefense.seeding import STREAM_TRAIN, derive_seed


class Reporter(Protocol):
    """How the loop talks to its runtime (Ray Train, or a plain list in tests)."""

    world_rank: int
    world_size: int

    def report(self, metrics: dict, checkpoint_dir: Optional[str]) -> None:
        """Called by every rank at the same steps; checkpoint_dir only from rank 0."""
        ...

    def latest_checkpoint(self) -> Optional[str]:
        """A local directory holding the latest checkpoint, or None for a fresh start."""
        ...


class _Permutations:
    """Epoch-wise seeded permutations of a group's items, cached for the current epoch."""

    def __init__(self, items: np.ndarray, seed: int) -> None:
        self.items, self.seed = items, seed
        self._cache: dict[int, np.ndarray] = {}

    def take(self, start: int, count: int) -> np.ndarray:
        n = len(self.items)
        out = []
        while count > 0:
            epoch, off = divmod(start, n)
            if epoch not in self._cache:
                self._cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(n)}
            chunk = self._cache[epoch][off : off + count]
            out.append(self.items[chunk])
            start += len(chunk)
            count -= len(chunk)
        return np.concatenate(out)


class BatchSource:
    """Deterministic per-(step, rank) batches.

    Image data: rows drawn with replacement, t ~ U{0..T-1}, noise ~ N(0, I), all from a generator
    seeded by (seed, model, rank, step). Soft targets: items taken without replacement from seeded
    per-epoch permutations; under 'alternate', step i reads only group i mod G (Algorithm 2).
    """

    def __init__(
        self,
        data: TrainData,
        schedule: NoiseSchedule,
        global_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        model_index: int,
        batching: Literal["alternate", "mixed"] = "alternate",
    ) -> None:
        if global_batch % world_size:
            raise ValueError(
                f"train.batch_size={global_batch} is not divisible by "
                f"{world_size} workers; change one of them"
            )
        self.data, self.schedule = data, schedule
        self.global_batch, self.local_batch = global_batch, global_batch // world_size
        self.rank, self.seed, self.model_index = rank, seed, model_index
        self.batching = batching
        if isinstance(data, SoftTargetData):
            groups = data.group.numpy()
            if batching == "alternate":
                ids = sorted(set(groups.tolist()))
                self.groups = [
                    _Permutations(
                        np.flatnonzero(groups == g), derive_seed(seed, STREAM_TRAIN, model_index, g)
                    )
                    for g in ids
                ]
            else:
                self.groups = [
                    _Permutations(
                        np.arange(len(groups)), derive_seed(seed, STREAM_TRAIN, model_index, -1)
                    )
                ]
        # Image rows that live on a GPU are drawn there, from a generator of that device
        # reseeded per step: indices, timesteps, noise and flips never touch the host, and a
        # run is reproducible per device type (CUDA's Philox stream is not the CPU's).
        self.device = data.images.device if isinstance(data, ImageData) else torch.device("cpu")
        self._gen = torch.Generator(device=self.device) if self.device.type != "cpu" else None

    def _generator(self, *key: int) -> torch.Generator:
        seed = derive_seed(self.seed, STREAM_TRAIN, self.model_index, self.rank, *key)
        if self._gen is None:
            return torch.Generator().manual_seed(seed)
        return self._gen.manual_seed(seed)  # sets seed and offset on the device: no sync

    def flips(self, step: int) -> torch.Tensor:
        """[local_batch] bool on the data's device: which images of this step's batch are
        mirrored (train.hflip), from a stream of their own, so the rows, timesteps and noise
        match a run without flips."""
        g = self._generator(step, 0xF11)
        return torch.rand(self.local_batch, generator=g, device=self.device) < 0.5

    def batch(self, step: int) -> tuple[Optional[torch.Tensor], ...]:
        """(x0, t, noise, cond) for images and latents (cond None for images); (x_t, t,
        soft target, cond) for soft targets."""
        if isinstance(self.data, (ImageData, LatentData)):
            g, dev = self._generator(step), self.device
            n = len(self.data.images if isinstance(self.data, ImageData) else self.data.mean)
            idx = torch.randint(n, (self.local_batch,), generator=g, device=dev)
            t = torch.randint(
                self.schedule.num_train_timesteps, (self.local_batch,), generator=g, device=dev
            )
            if isinstance(self.data, ImageData):
                x0 = self.data.images[idx]
                return x0, t, torch.randn(x0.shape, generator=g, device=dev), None
            d = self.data
            mean, std = d.mean[idx], d.std[idx]
            noise = torch.randn(mean.shape, generator=g)
            # The posterior draw and the caption come after (t, noise) in the stream.
            x0 = mean + std * torch.randn(mean.shape, generator=g)
            if d.diversify:
                u = torch.rand(self.local_batch, generator=g)
                k = (u * d.n_captions[idx].to(u.dtype)).long().clamp(max=d.emb.shape[1] - 1)
            else:
                k = torch.zeros(self.local_batch, dtype=torch.long)
            return x0, t, noise, d.emb[idx, k]
        n_groups = len(self.groups)
        group = self.groups[step % n_groups]
        start = (step // n_groups) * self.global_batch + self.rank * self.local_batch
        idx = torch.from_numpy(group.take(start, self.local_batch))
        cond = self.data.conditions(idx)
        # A bfloat16-stored target (distill.target_dtype) enters the loss as float32.
        return self.data.inputs(idx), self.data.t[idx], self.data.target[idx].float(), cond


def _adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, fused where this torch build supports it (5x faster steps on CPU for small nets)."""
    try:
        return torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
        )
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Constant lr after a linear warmup over cfg.warmup_steps (pytorch-ddpm's schedule)."""
    if cfg.warmup_steps <= 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)


@dataclass
class Fit:
    """A fit ready to step: the live network, its EMA, the optimizer, the batch source, and
    the step to resume from (`prepare_fit`). `model` is what the step calls (the network as
    `wrap_model` and `train.compile` left it)."""

    net: EpsNet
    ema: EMA
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    source: BatchSource
    start_step: int
    stopper: Optional[EarlyStopper]
    spent: tuple[float, float] = (0.0, 0.0)  # (wall s, CPU s) of the steps before start_step


def prepare_fit(
    data: TrainData,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    schedule: NoiseSchedule,
    image_shape: tuple[int, int, int],
    *,
    seed: int,
    model_index: int,
    rank: int = 0,
    world_size: int = 1,
    checkpoint: Optional[str] = None,
    device: torch.device | str = "cpu",
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    batching: Literal["alternate", "mixed"] = "alternate",
    early_stopping: bool = False,
) -> Fit:
    """Build (or resume from `checkpoint`) everything a fit steps with, on `device`.

    Weights are initialised from a seed of their own (seed, model); on CUDA the TF32 flags of
    cuDNN convolutions and matmuls are both set from `train.tf32` (PyTorch's default leaves
    convolutions in TF32, so an unset flag would make "fp32" TF32), and image rows move to the
    GPU so a step indexes them there.
    """
    torch.manual_seed(derive_seed(seed, STREAM_TRAIN, model_index, 0xC0DE))  # init weights
    net = backbone_of(model_cfg).build(model_cfg, image_shape)
    ema = EMA(net, train_cfg.ema_decay, train_cfg.ema_warmup)
    stopper = EarlyStopper(train_cfg.early_stopping) if early_stopping else None
    start_step, opt_state, spent = 0, None, (0.0, 0.0)
    if checkpoint is not None:
        state = load_state(checkpoint)
        spent = (float(state.get("train_seconds", 0.0)), float(state.get("cpu_seconds", 0.0)))
        net.load_state_dict(load_net(model_cfg, checkpoint, "raw").state_dict())
        ema.shadow.load_state_dict(load_net(model_cfg, checkpoint, "ema").state_dict())
        start_step, opt_state = int(state["step"]), state["optimizer"]
        if stopper is not None and state.get("early_stopping") is not None:
            stopper.load_state_dict(state["early_stopping"])
    for m in (net, ema.shadow):
        m.to(device)
        if train_cfg.channels_last:  # nn.Module.to takes memory_format; the stubs omit it
            m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = train_cfg.tf32
        torch.backends.cudnn.allow_tf32 = train_cfg.tf32
    model = wrap_model(net)
    if train_cfg.compile:
        model = cast(torch.nn.Module, torch.compile(model))
    opt = _adamw(model, train_cfg)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    if isinstance(data, ImageData) and torch.device(device).type == "cuda":
        # The member images live on the GPU: a step indexes them there instead of copying its
        # batch from the host (soft targets, R draws per row, can outgrow GPU memory: they stay).
        data = ImageData(data.images.to(device))
    source = BatchSource(
        data, schedule, train_cfg.batch_size, rank, world_size, seed, model_index, batching
    )
    return Fit(net, ema, model, opt, source, start_step, stopper, spent)


class TrainStep:
    """One optimizer step of a fit: batch, loss (DDPM or DistillMD), backward, grad clip,
    AdamW at the warmup schedule's lr, EMA update.

    Nothing in it reads a tensor's value on the host: on CUDA the batch is drawn on the device
    (`BatchSource`), the schedule table is cached there, the lr is a Python float from the step
    number, and the returned loss and grad norm stay device tensors until a report reads them
    (tests/unit/test_training_sync.py holds this).
    """

    def __init__(
        self,
        fit: Fit,
        train_cfg: TrainConfig,
        schedule: NoiseSchedule,
        device: torch.device | str,
    ) -> None:
        self.fit, self.cfg, self.schedule = fit, train_cfg, schedule
        self.device = torch.device(device)
        self.is_distill = isinstance(fit.source.data, SoftTargetData)
        self.bf16 = train_cfg.precision == "bf16"

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run step `step` (0-based); returns (loss, grad norm), detached 0-d device tensors."""
        f, cfg = self.fit, self.cfg
        lr = lr_at(step, cfg)
        for group in f.opt.param_groups:
            group["lr"] = lr
        a, b, c_, cond = (
            None if x is None else x.to(self.device, non_blocking=True)
            for x in f.source.batch(step)
        )
        assert a is not None and b is not None and c_ is not None
        if cfg.hflip and not self.is_distill:
            a = flip_half(a, f.source.flips(step))
        if cfg.channels_last:
            a, c_ = (x.contiguous(memory_format=torch.channels_last) for x in (a, c_))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.is_distill:
                loss = distill_loss(f.model, a, b, c_, cond)
            else:
                loss = ddpm_loss(f.model, self.schedule, a, b, c_, cond)
        f.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(f.model.parameters(), cfg.grad_clip)
        f.opt.step()
        f.ema.update(f.net, step)
        return loss.detach(), grad_norm.detach()


def fit(
    data: TrainData,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    schedule: NoiseSchedule,
    image_shape: tuple[int, int, int],
    *,
    seed: int,
    model_index: int,
    reporter: Reporter,
    device: torch.device | str = "cpu",
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    batching: Literal["alternate", "mixed"] = "alternate",
    validate: Optional[Callable[[EpsNet], dict]] = None,
    private: Optional[PrivateTraining] = None,
) -> dict:
    """Train one network of model_cfg's backbone (`model.kind`) to train_cfg.steps, resuming
    from reporter.latest_checkpoint().

    `private`: train with DP-SGD (`raydefense.diffusion.private_step`; image data only): every
    report carries the epsilon spent so far (`dp_epsilon`, at its delta).

    Every checkpoint holds the fit's training record (`training.json`, `training_record`): the
    steps run, the wall and CPU seconds they took (summed over resumes) and DP-SGD's accounting.

    The DDPM loss for ImageData, the DistillMD loss for SoftTargetData. `validate(ema_net)`,
    when given, adds its metrics (say held-out eps-MSE) to every report. With
    `train_cfg.early_stopping.enabled` (needs `validate`) the fit ends once `val_eps_mse` stops
    improving, and its last checkpoint holds the weights of its best report (`EarlyStopper`).
    Returns the last metrics.
    """
    if train_cfg.early_stopping.enabled and validate is None:
        raise ValueError("early stopping watches val_eps_mse: set train.val_rows > 0")
    f = prepare_fit(
        data,
        model_cfg,
        train_cfg,
        schedule,
        image_shape,
        seed=seed,
        model_index=model_index,
        rank=reporter.world_rank,
        world_size=reporter.world_size,
        checkpoint=reporter.latest_checkpoint(),
        device=device,
        wrap_model=wrap_model,
        batching=batching,
        early_stopping=train_cfg.early_stopping.enabled,
    )
    stopper, start_step = f.stopper, f.start_step
    if stopper is not None and stopper.stopped:  # finished (early or at its budget); best saved
        return {"step": start_step, **stopper.metrics()}
    train_step: Callable[[int], tuple[torch.Tensor, torch.Tensor]] = TrainStep(
        f, train_cfg, schedule, device
    )
    if private is not None:
        if not isinstance(f.source.data, ImageData):
            raise ValueError("DP-SGD trains on image rows: latent and soft-target fits take none")
        train_step = PrivateTrainStep(
            f.net,
            f.opt,
            f.ema,
            f.source.data,
            schedule,
            private,
            seed=seed,
            model_index=model_index,
            rank=reporter.world_rank,
            world_size=reporter.world_size,
            device=device,
            lr_at=partial(lr_at, cfg=train_cfg),
        )
    # Losses stay on the device until a report (no host sync per step); a report checks the
    # window for a non-finite loss and stops the fit at the first such step.
    losses: list[torch.Tensor] = []
    window_start, t0, c0 = time.perf_counter(), time.perf_counter(), time.process_time()
    metrics: dict = {"step": start_step}
    f.model.train()
    for step in range(start_step, train_cfg.steps):
        loss, grad_norm = train_step(step)
        losses.append(loss)
        done = step + 1
        is_ckpt = done % train_cfg.checkpoint_every == 0 or done == train_cfg.steps
        if done % train_cfg.log_every == 0 or is_ckpt:
            window = torch.stack(losses).double().cpu()
            check_finite(window, done - len(losses) + 1, losses[0].device)
            now = time.perf_counter()
            metrics = {
                "step": done,
                "loss": float(window.mean()),
                "lr": lr_at(step, train_cfg),
                "grad_norm": float(grad_norm),
                "samples_per_s": len(losses) * train_cfg.batch_size / max(now - window_start, 1e-9),
                "elapsed_s": now - t0,
            }
            if validate is not None:
                metrics.update(validate(f.ema.shadow))
            if private is not None:
                metrics["dp_epsilon"] = private.epsilon(done)
                metrics["dp_noise_multiplier"] = private.noise_multiplier
            losses, window_start = [], now
            cost = Cost(
                f.spent[0] + now - t0,
                f.spent[1] + time.process_time() - c0,
                reporter.world_size,
                torch.device(device).type,
            )
            stop = False
            if stopper is not None:
                stop = _agreed(stopper.observe(done, metrics[METRIC], f.net, f.ema.shadow), device)
                metrics.update(stopper.metrics())
                if stop or done == train_cfg.steps:
                    # The fit's last checkpoint: the best report's weights, marked final.
                    stopper.stopped = True
                    stopper.restore(f.net, f.ema.shadow)
                    metrics["stopped_early"] = float(stop)
            record = training_record(done, cost, private, metrics)
            _report(reporter, metrics, f.net, f.ema, f.opt, done, is_ckpt or stop, stopper, record)
            if stop:
                break
    return metrics


@dataclass(frozen=True)
class Cost:
    """What a fit has cost so far: wall seconds of its steps (reports, validation and
    checkpoints included), this rank's process CPU seconds, its workers and device type."""

    train_seconds: float
    cpu_seconds: float
    workers: int
    device: str


def training_record(
    steps: int, cost: Cost, private: Optional[PrivateTraining], metrics: dict
) -> dict[str, Any]:
    """A fit's training record (a checkpoint's `training.json`): steps run, wall seconds,
    CPU seconds (rank 0's process CPU time x workers: the ranks do the same work), GPU seconds
    (wall x workers on CUDA, else 0), and for DP-SGD the accountant's epsilon at delta after
    the steps run with its settings (None without)."""
    dp = None
    if private is not None:
        dp = {
            "epsilon": private.epsilon(steps),
            "delta": private.delta,
            "noise_multiplier": private.noise_multiplier,
            "max_grad_norm": private.max_grad_norm,
            "sample_rate": private.sample_rate,
            "multiplicity": private.multiplicity,
            "steps": steps,
        }
    return {
        "steps": steps,
        "best_step": metrics.get("best_step"),
        "train_seconds": cost.train_seconds,
        "cpu_seconds": cost.cpu_seconds * cost.workers,
        "gpu_seconds": cost.train_seconds * cost.workers if cost.device == "cuda" else 0.0,
        "workers": cost.workers,
        "device": cost.device,
        "dp": dp,
    }


def _agreed(flag: bool, device: torch.device | str) -> bool:
    """flag, or-ed over every rank (they validate the same EMA weights; this keeps a float
    difference between devices from stopping one rank alone)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def flip_half(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] with the rows where mask [B] bool mirrored left-right."""
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(-1), x)


def check_finite(window: torch.Tensor, first_step: int, device: torch.device | str = "cpu") -> None:
    """Raise NonFiniteLossError at the first step of a report window whose loss is nan or inf,
    agreed by every rank (a rank that stopped alone would leave the others waiting in DDP).

    Args: window [N] float64, this rank's losses of steps first_step .. first_step + N - 1
        (1-based, as reports count steps). device: where the process group's collectives run
        (NCCL needs CUDA tensors).
    """
    bad = torch.nonzero(~torch.isfinite(window)).flatten()
    first = first_step + int(bad[0]) if len(bad) else 2**62
    value = float(window[int(bad[0])]) if len(bad) else 0.0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        agreed = torch.tensor([first], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
        if int(agreed) != first:
            first, value = int(agreed), float("nan")  # another rank's loss went first
    if first < 2**62:
        raise NonFiniteLossError(first, value)


def _report(
    reporter: Reporter,
    metrics: dict,
    net: EpsNet,
    ema: EMA,
    opt: torch.optim.Optimizer,
    step: int,
    with_checkpoint: bool,
    stopper: Optional[EarlyStopper] = None,
    record: Optional[dict[str, Any]] = None,
) -> None:
    if not (with_checkpoint and reporter.world_rank == 0):
        reporter.report(metrics, None)
        return
    tmp = tempfile.mkdtemp(prefix="raydefense-ckpt-")
    state: dict[str, Any] = {"step": step, "optimizer": opt.state_dict()}
    if stopper is not None:
        state["early_stopping"] = stopper.state_dict()
    if record is not None:  # resumes add to what the steps so far cost
        state["train_seconds"] = record["train_seconds"]
        state["cpu_seconds"] = record["cpu_seconds"] / max(record["workers"], 1)
    try:
        save_checkpoint(tmp, net, ema.shadow, state, record)
        reporter.report(metrics, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
