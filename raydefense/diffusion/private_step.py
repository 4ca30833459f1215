"""A DP-SGD step of an image fit (`raydefense.diffusion.dp_sgd`; DPDM's form, Dockhorn et al.).

Each step draws a Poisson batch (every row joins with probability q, from a stream shared by the
ranks, which split the drawn rows), gives each drawn row `multiplicity` (t, noise) draws, takes
each row's gradient of its own mean loss (torch.func), clips it to `max_grad_norm`, sums the
clipped gradients over the ranks, adds one Gaussian noise draw of standard deviation
noise_multiplier * max_grad_norm (the same on every rank: a step-seeded stream) and divides by
the expected global batch q * N. AdamW then steps as in any fit (its moments are functions of
the privatised gradients only). The accountant reads (q, noise multiplier, steps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch

from raydefense.config import TrainConfig
from raydefense.data.examples import ImageData
from raydefense.diffusion.dp_sgd import (
    clipped_sum,
    epsilon_spent,
    noise_multiplier_for,
    per_example_gradients,
)
from raydefense.diffusion.ema import EMA
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.seeding import STREAM_TRAIN, derive_seed

# Sub-streams of a fit's STREAM_TRAIN: which rows a step draws (shared by the ranks), and the
# step's privacy noise (shared by the ranks).
_ROWS, _NOISE = 0xD9, 0xD15E


@dataclass(frozen=True)
class PrivateTraining:
    """DP-SGD's settings for one fit, resolved: the noise multiplier (sigma), the clipping norm
    C, the sampling rate q (expected global batch / training rows), DPDM's noise multiplicity
    (K draws of (t, noise) per row and step) and the delta the accountant reports at."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    multiplicity: int
    delta: float

    def epsilon(self, steps: int) -> float:
        """The epsilon spent after `steps` steps (RDP accountant, at `delta`)."""
        return epsilon_spent(self.sample_rate, self.noise_multiplier, steps, self.delta)[0]


def private_training(
    rows: int,
    expected_batch: int,
    steps: int,
    *,
    epsilon: Optional[float] = None,
    noise_multiplier: Optional[float] = None,
    delta: float = 1e-5,
    max_grad_norm: float = 1.0,
    multiplicity: int = 1,
) -> PrivateTraining:
    """DP-SGD's settings for a fit of `steps` steps on `rows` training rows with an expected
    global batch of `expected_batch`: a target epsilon (the noise multiplier is found) or a
    noise multiplier, not both.

    Raises:
        ValueError: one line naming the bad setting (both or neither of epsilon and the noise
            multiplier, a clipping norm <= 0, a batch larger than the rows, an epsilon out of
            reach with these steps and batch) -- before any training.
    """
    if (epsilon is None) == (noise_multiplier is None):
        raise ValueError("DP-SGD takes a target epsilon or a noise multiplier: give exactly one")
    if max_grad_norm <= 0:
        raise ValueError(f"the clipping norm must be positive (got {max_grad_norm})")
    if multiplicity < 1:
        raise ValueError(f"the noise multiplicity must be at least 1 (got {multiplicity})")
    if not 0 < expected_batch <= rows:
        raise ValueError(
            f"an expected batch of {expected_batch} from {rows} training rows is no sampling "
            "rate in (0, 1]: lower train.batch_size"
        )
    q = expected_batch / rows
    if epsilon is not None:
        noise_multiplier = noise_multiplier_for(epsilon, delta, q, steps)
    assert noise_multiplier is not None
    if noise_multiplier < 0:
        raise ValueError(f"the noise multiplier must be >= 0 (got {noise_multiplier})")
    return PrivateTraining(noise_multiplier, max_grad_norm, q, multiplicity, delta)


def private_training_of(train: TrainConfig, rows: int) -> PrivateTraining:
    """`private_training` for a fit of these resolved settings (`TrainConfig.for_role`, whose
    `dp` is set) on `rows` training rows: the expected batch is train.batch_size, the steps
    train.steps.

    Raises:
        ValueError: as `private_training`, naming the train.dp setting."""
    dp = train.dp
    if dp is None:
        raise ValueError("train.dp is unset: this fit trains without DP-SGD")
    try:
        return private_training(
            rows,
            train.batch_size,
            train.steps,
            epsilon=dp.epsilon,
            noise_multiplier=dp.noise_multiplier,
            delta=dp.delta,
            max_grad_norm=dp.max_grad_norm,
            multiplicity=dp.multiplicity,
        )
    except ValueError as e:
        raise ValueError(f"train.dp: {e}") from None


class PrivateTrainStep:
    """One DP-SGD step of an image fit (pixel families): what `TrainStep` is for a plain fit.
    `net` is the unwrapped network (no DDP: the clipped sums are all-reduced here)."""

    def __init__(
        self,
        net: torch.nn.Module,
        opt: torch.optim.Optimizer,
        ema: EMA,
        data: ImageData,
        schedule: NoiseSchedule,
        dp: PrivateTraining,
        *,
        seed: int,
        model_index: int,
        rank: int,
        world_size: int,
        device: torch.device | str,
        lr_at: Callable[[int], float],
    ) -> None:
        self.net, self.opt, self.ema, self.data = net, opt, ema, data
        self.schedule, self.dp = schedule, dp
        self.seed, self.model_index = seed, model_index
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.lr_at = lr_at

    def _poisson(self, step: int) -> torch.Tensor:
        """Step `step`'s Poisson batch, the same on every rank (its stream has no rank): each
        row joins with probability q. -> [B] int64 row indices."""
        g = torch.Generator().manual_seed(
            derive_seed(self.seed, STREAM_TRAIN, self.model_index, _ROWS, step)
        )
        n = len(self.data.images)
        return torch.nonzero(torch.rand(n, generator=g) < self.dp.sample_rate).flatten()

    def rows(self, step: int) -> torch.Tensor:
        """This rank's rows of step `step`'s Poisson batch: every world_size-th drawn row.
        -> [b] int64."""
        return self._poisson(step)[self.rank :: self.world_size]

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run step `step`; returns (mean loss of this rank's rows, mean per-row gradient norm
        before clipping), detached 0-d tensors (0 for a rank that drew no row)."""
        from torch.func import functional_call

        dp, k = self.dp, self.dp.multiplicity
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
        poisson = self._poisson(step)  # drawn once: the rows and the (t, noise) count read it
        idx = poisson[self.rank :: self.world_size]
        b = len(idx)
        # Every drawn row's (t, noise) draws come from one stream that all ranks share (the
        # stream of rank 0 of a plain fit), each rank keeping its rows' share: a fit takes the
        # same steps on any number of ranks, up to the order of the all-reduced sum.
        drawn = len(poisson)
        g = torch.Generator().manual_seed(
            derive_seed(self.seed, STREAM_TRAIN, self.model_index, 0, step)
        )
        shape = self.data.images.shape[1:]
        t = torch.randint(self.schedule.num_train_timesteps, (drawn, k), generator=g)
        noise = torch.randn((drawn, k, *shape), generator=g)
        mine = slice(self.rank, None, self.world_size)
        x0 = self.data.images[idx].to(self.device)
        t, noise = t[mine].to(self.device), noise[mine].to(self.device)
        params = [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]
        schedule = self.schedule

        def loss_of(
            net: torch.nn.Module, p: dict[str, torch.Tensor], example: tuple[torch.Tensor, ...]
        ) -> torch.Tensor:
            x, tt, nz = example  # [1, C, H, W], [1, K], [1, K, C, H, W]
            x_t = schedule.q_sample(x.expand(k, *x.shape[1:]), tt[0], nz[0])
            pred = functional_call(net, p, (x_t, tt[0]))
            return ((pred - nz[0]) ** 2).mean()

        if b:
            grads, losses = per_example_gradients(
                self.net, loss_of, (x0, t, noise), randomness="different"
            )
            summed, norms = clipped_sum(grads, dp.max_grad_norm)
        else:
            summed = {n: torch.zeros_like(p) for n, p in params}
            losses = norms = torch.zeros(0, device=self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for v in summed.values():
                torch.distributed.all_reduce(v)
        # One noise draw per step, the same on every rank, so the replicas stay equal.
        ng = torch.Generator().manual_seed(
            derive_seed(self.seed, STREAM_TRAIN, self.model_index, _NOISE, step)
        )
        expected = dp.sample_rate * len(self.data.images)
        std = dp.noise_multiplier * dp.max_grad_norm
        for name, p in params:
            z = torch.randn(p.shape, generator=ng).to(self.device)
            p.grad = ((summed[name] + std * z) / expected).to(p.dtype)
        self.opt.step()
        self.ema.update(self.net, step)
        zero = torch.zeros((), device=self.device)
        loss = losses.mean().detach() if b else zero
        norm = norms.mean().detach() if b else zero
        return loss, norm
