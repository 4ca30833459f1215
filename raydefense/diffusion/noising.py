"""The seeded noising of DistillMD's soft-target examples: every example is keyed by (row, draw),
and its timestep, noise and (latent families) posterior draw and caption come from generators
seeded by that key alone. The labeller noises its inputs with `noised_inputs`; the student
regenerates the same x_t per batch with `RegeneratedInputs` instead of storing them
(distill.store_x_t=false), bit for bit, since the arithmetic is elementwise on the same values.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import DataError
from raydefense.seeding import STREAM_SOFT_TARGET


def draw_latent_caption(
    seed: int, row_id: int, draw: int, shape: tuple[int, ...], n_captions: int, diversify: bool
) -> tuple[np.ndarray, int]:
    """Latent families, per (row, draw): the VAE posterior's standard-normal draw [C, h, w] and
    the caption used (uniform over the row's captions under prompt diversification, else 0),
    from a stream apart from draw_t_noise's."""
    rng = np.random.default_rng([seed, row_id, STREAM_SOFT_TARGET, draw, 1])
    z = rng.standard_normal(shape, dtype=np.float32)
    return z, int(rng.integers(n_captions)) if diversify else 0


def draw_t_noise(
    seed: int, row_id: int, draw: int, num_timesteps: int, shape: tuple[int, ...]
) -> tuple[int, np.ndarray]:
    """(t, noise) of one (row, draw): t uniform in [0, T), noise [C, H, W] float32 N(0, I)."""
    rng = np.random.default_rng([seed, row_id, STREAM_SOFT_TARGET, draw])
    t = int(rng.integers(num_timesteps))
    return t, rng.standard_normal(shape, dtype=np.float32)


def noised_inputs(
    seed: int,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    row_ids: np.ndarray,
    draws: np.ndarray,
    std: Optional[torch.Tensor] = None,
    n_captions: Optional[np.ndarray] = None,
    diversify: bool = False,
) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """The student inputs of soft-target examples, from their (row, draw) seeds alone: the
    labeller makes them with this function and the student regenerates them with it
    (`RegeneratedInputs`), so nothing but the keys has to be stored.

    Args:
        x0: [N, C, H, W] float32, each example's row: the image in [-1, 1], or a latent family's
            posterior mean (then `std` [N, C, h, w] and `n_captions` [N] are given).
        row_ids, draws: [N] int64, the (row, draw) key of each example.
    Returns:
        t [N] int64 in [0, T); x_t [N, C, H, W] float32 (x0 for latents = mean + std * z, a
        posterior draw per (row, draw)); caption [N] int64 (0 unless latent and diversify).
    """
    n, shape = len(row_ids), tuple(x0.shape[1:])
    T = schedule.num_train_timesteps
    t = np.empty(n, dtype=np.int64)
    noise = np.empty((n, *shape), dtype=np.float32)
    for i in range(n):
        t[i], noise[i] = draw_t_noise(seed, int(row_ids[i]), int(draws[i]), T, shape)
    caption = np.zeros(n, dtype=np.int64)
    if std is not None:
        if n_captions is None:
            raise ValueError("a latent family's inputs need n_captions with std")
        z = np.empty((n, *shape), dtype=np.float32)
        for i in range(n):
            z[i], caption[i] = draw_latent_caption(
                seed, int(row_ids[i]), int(draws[i]), shape, int(n_captions[i]), diversify
            )
        x0 = x0 + std * torch.from_numpy(z)
    x_t = schedule.q_sample(x0, torch.from_numpy(t), torch.from_numpy(noise))
    return t, x_t, caption


class RegeneratedInputs:
    """A student's x_t, regenerated per batch from the (row, draw) keys of its soft targets
    (distill.store_x_t=false): bit-identical to what the labeller fed its teachers, at no host
    memory per example beyond the keys.

    Args:
        x0: [R, C, H, W] float32, the source rows (images in [-1, 1], or latent means);
            std [R, ...] and n_captions [R] for latent families.
        pos: [N] int64, each example's position in x0. row_id, draw: [N] int64 keys.
        t: [N] int64 and caption [N] int64 as stored: a regenerated draw that disagrees (the
            soft targets were labelled under another seed, schedule or source) raises.
    """

    def __init__(
        self,
        seed: int,
        schedule: NoiseSchedule,
        x0: torch.Tensor,
        pos: np.ndarray,
        row_id: np.ndarray,
        draw: np.ndarray,
        t: np.ndarray,
        std: Optional[torch.Tensor] = None,
        n_captions: Optional[np.ndarray] = None,
        caption: Optional[np.ndarray] = None,
        diversify: bool = False,
    ) -> None:
        self.seed, self.schedule = seed, schedule
        self.x0, self.std, self.n_captions = x0, std, n_captions
        self.pos, self.row_id, self.draw, self.t = pos, row_id, draw, t
        self.caption, self.diversify = caption, diversify

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] float32: x_t of examples idx [B] (int64, on the CPU)."""
        i = idx.numpy()
        at = torch.from_numpy(self.pos[i])
        t, x_t, caption = noised_inputs(
            self.seed,
            self.schedule,
            self.x0[at],
            self.row_id[i],
            self.draw[i],
            None if self.std is None else self.std[at],
            None if self.n_captions is None else self.n_captions[self.pos[i]],
            self.diversify,
        )
        stale = not np.array_equal(t, self.t[i])
        if self.caption is not None and self.std is not None:
            stale |= not np.array_equal(caption, self.caption[i])
        if stale:
            raise DataError(
                "the soft targets' (t, noise) draws do not match this run's seed and schedule "
                "(labelled by another config); rerun with --force distill"
            )
        return x_t
