"""DDPM noise schedule math (0-based indices, as the official SecMI/PIA code and diffusers use).

alphas_cumprod[t] = prod_{s=0..t} (1 - beta_s), so alphas_cumprod[0] = 1 - beta_0 (not 1). The UNet
is called with the same integer t in {0..T-1} that indexes the schedule (spec/attacks.md §1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

from raydefense.config import ModelConfig

BetaSchedule = Literal["linear", "scaled_linear"]


@dataclass(frozen=True)
class NoiseSchedule:
    """DDPM schedule: linear betas (Ho et al.), or "scaled_linear" (Stable Diffusion's: betas
    linear in sqrt(beta), then squared). Betas and the cumulative product are built in float64
    and cast to float32 (bit-faithful to the official attack code)."""

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: BetaSchedule = "linear"

    @classmethod
    def of(cls, cfg: ModelConfig) -> NoiseSchedule:
        """The schedule `model.*` configures (num_train_timesteps, beta_*)."""
        return cls(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.beta_schedule)

    def _betas64(self) -> torch.Tensor:
        T = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            return (
                torch.linspace(self.beta_start**0.5, self.beta_end**0.5, T, dtype=torch.float64)
                ** 2
            )
        return torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float64)

    @property
    def betas(self) -> torch.Tensor:
        """[T] float32."""
        return self._betas64().float()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """[T] float32, decreasing from 1 - beta_0 towards 0."""
        return torch.cumprod(1.0 - self._betas64(), dim=0).float()

    def table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """alphas_cumprod [T] on device as dtype, built once per (schedule, device, dtype): a
        training or scoring step reads it without rebuilding it on the host and copying it."""
        return _abar_table(self, device, dtype)

    def abar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """alphas_cumprod at t, shaped [B, 1, 1, 1] (or scalar) on like's device/dtype."""
        table = self.table(like.device, like.dtype)
        if isinstance(t, int):
            return table[t]
        return table[t.long()].view(-1, *([1] * (like.dim() - 1)))

    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor
    ) -> torch.Tensor:
        """Forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

        Args:
            x0: [B, C, H, W] in [-1, 1]. t: [B] long or an int. noise: like x0, N(0, I).
        """
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise

    def predict_x0(
        self, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor
    ) -> torch.Tensor:
        """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); never clipped."""
        a = self.abar(t, x_t)
        return (x_t - (1.0 - a).sqrt() * eps) / a.sqrt()

    def ddim_move(
        self,
        x: torch.Tensor,
        eps: torch.Tensor,
        t_from: torch.Tensor | int,
        t_to: torch.Tensor | int,
    ) -> torch.Tensor:
        """Deterministic DDIM move (eta = 0) from index t_from to t_to with eps = eps(x, t_from).

        t_to > t_from is DDIM inversion (SecMI's phi), t_to < t_from the denoise step (psi).
        No clipping of x0_hat (spec/attacks.md §1.8).
        """
        x0 = self.predict_x0(x, t_from, eps)
        a_to = self.abar(t_to, x)
        return a_to.sqrt() * x0 + (1.0 - a_to).sqrt() * eps

    def ddpm_step(
        self,
        x_t: torch.Tensor,
        eps: torch.Tensor,
        t: int,
        t_prev: int,
        generator: torch.Generator | None = None,
        clip: bool = True,
    ) -> torch.Tensor:
        """Ancestral step t -> t_prev (t_prev = -1 means the final clean output), posterior
        variance ("fixedsmall"), generalised to strided timesteps; x0_hat clipped to [-1, 1]
        when clip (pixel models)."""
        a_t = self.abar(t, x_t)
        a_prev = (
            self.abar(t_prev, x_t)
            if t_prev >= 0
            else torch.ones((), dtype=x_t.dtype, device=x_t.device)
        )
        beta_t = 1.0 - a_t / a_prev
        x0 = self.predict_x0(x_t, t, eps)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        mean = (a_prev.sqrt() * beta_t / (1.0 - a_t)) * x0 + (
            (1.0 - beta_t).sqrt() * (1.0 - a_prev) / (1.0 - a_t)
        ) * x_t
        if t_prev < 0:
            return mean
        var = beta_t * (1.0 - a_prev) / (1.0 - a_t)
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return mean + var.sqrt() * noise


@functools.lru_cache(maxsize=64)
def _abar_table(schedule: NoiseSchedule, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Read-only by contract (callers index it); the cache is bounded by the (schedule, device,
    # dtype) combinations a process meets, a handful.
    return schedule.alphas_cumprod.to(device=device, dtype=dtype)
