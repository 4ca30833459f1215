"""Image similarity for black-box attacks: SSIM (Wang et al. 2004, Gaussian window 11, sigma 1.5,
images in [-1, 1] mapped to [0, 1]) and the mean squared distance."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2


def _window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    g = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(g**2) / (2 * sigma**2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :])[None, None]
    return w.expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of image pairs: a, b [N, C, H, W] in [-1, 1] -> [N] (1 = identical). The window
    shrinks to the image for images smaller than it; no padding (valid windows only)."""
    x, y = (a.float() + 1) / 2, (b.float() + 1) / 2
    size = min(size, x.shape[-1], x.shape[-2])
    w = _window(size, sigma, x.shape[1], x)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, w, groups=x.shape[1])

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    num = (2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)
    den = (mx**2 + my**2 + SSIM_C1) * (vx + vy + SSIM_C2)
    return (num / den).flatten(1).mean(1)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of image pairs [N, C, H, W] -> [N]."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)
