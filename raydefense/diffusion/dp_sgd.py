"""DP-SGD (Abadi et al. 2016) for diffusion models, as DPDM trains them (Dockhorn et al., TMLR
2023): each example's gradient, averaged over its `multiplicity` noise draws (t, eps) first, is
clipped to L2 norm `max_norm`; the clipped gradients are summed, Gaussian noise of standard
deviation `noise_multiplier * max_norm` is added once, and the sum is divided by the expected
batch size (Poisson sampling: each example joins a step with probability q, so the batch size
itself is random and reveals nothing).

The accountant is Rényi DP of the sampled Gaussian mechanism (Mironov, Talwar and Zhang 2019,
integer orders, exact), composed over the steps and converted to (epsilon, delta) with Balle et
al. 2020 (Theorem 21): the accounting Opacus' RDP accountant does, at the integer orders
(`tests/unit/test_dp_sgd.py` compares them). Noise multiplicity does not change the accounting:
an example still contributes one clipped gradient per step.

Torch, numpy and scipy; a fit trains privately through `fit(private=...)`
(`raydefense.diffusion.private_step`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.special import gammaln, logsumexp

# Integer Rényi orders searched for the tightest epsilon.
DEFAULT_ORDERS: tuple[int, ...] = tuple(range(2, 257))


# ----------------------------------------------------------------------------- the accountant


def rdp_sampled_gaussian(q: float, sigma: float, orders: Sequence[int]) -> np.ndarray:
    """Rényi DP of one step of the sampled Gaussian mechanism at each integer order a >= 2:
    log(A_a) / (a - 1), A_a = sum_k C(a, k) (1 - q)^(a - k) q^k exp((k^2 - k) / (2 sigma^2)).

    Args: q: the sampling rate in [0, 1]; sigma: the noise multiplier (> 0).
    Returns: [len(orders)] float64 (inf for sigma = 0)."""
    out = np.empty(len(orders), dtype=np.float64)
    for i, a in enumerate(orders):
        if int(a) != a or a < 2:
            raise ValueError(f"Rényi orders must be integers >= 2 (got {a})")
        a = int(a)
        if q == 0:
            out[i] = 0.0
        elif sigma <= 0:
            out[i] = math.inf
        elif q == 1:
            out[i] = a / (2 * sigma**2)
        else:
            k = np.arange(a + 1, dtype=np.float64)
            log_binom = gammaln(a + 1) - gammaln(k + 1) - gammaln(a - k + 1)
            terms = (
                log_binom
                + k * math.log(q)
                + (a - k) * math.log1p(-q)
                + (k * k - k) / (2 * sigma**2)
            )
            out[i] = float(logsumexp(terms)) / (a - 1)
    return out


def epsilon_spent(
    q: float,
    sigma: float,
    steps: int,
    delta: float,
    orders: Sequence[int] = DEFAULT_ORDERS,
) -> tuple[float, int]:
    """(epsilon, the order that gives it) of `steps` compositions of the sampled Gaussian
    mechanism at (q, sigma), for the target delta: min over orders of
    steps * RDP(a) - (log delta + log a) / (a - 1) + log((a - 1) / a)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1) (got {delta})")
    a = np.asarray(orders, dtype=np.float64)
    eps = (
        steps * rdp_sampled_gaussian(q, sigma, orders)
        - (math.log(delta) + np.log(a)) / (a - 1)
        + np.log((a - 1) / a)
    )
    i = int(np.nanargmin(eps))
    return float(max(eps[i], 0.0)), int(a[i])


def noise_multiplier_for(
    epsilon: float,
    delta: float,
    q: float,
    steps: int,
    orders: Sequence[int] = DEFAULT_ORDERS,
    tolerance: float = 0.01,
) -> float:
    """The smallest noise multiplier (to within `tolerance` in epsilon, never above the target)
    whose `steps` steps at sampling rate q spend at most `epsilon` at `delta`.

    Raises:
        ValueError: no noise multiplier up to 1e4 reaches the target (epsilon too small for the
            steps and batch: fewer steps or a smaller batch).
    """
    if epsilon <= 0:
        raise ValueError(f"target epsilon must be positive (got {epsilon})")
    lo, hi = 0.0, 1.0
    while epsilon_spent(q, hi, steps, delta, orders)[0] > epsilon:
        lo, hi = hi, 2 * hi
        if hi > 1e4:
            raise ValueError(
                f"epsilon={epsilon:g} at delta={delta:g} is out of reach with {steps} steps at "
                f"sampling rate {q:.4g} (noise multiplier above 1e4): train fewer steps or on "
                "smaller batches, or raise the target"
            )
    while True:
        mid = (lo + hi) / 2
        spent = epsilon_spent(q, mid, steps, delta, orders)[0]
        if spent > epsilon:
            lo = mid
        else:
            hi = mid
            if epsilon - spent <= tolerance:
                return hi
        if hi - lo < 1e-6:
            return hi


# ----------------------------------------------------------------------------- the step


def poisson_batch(n: int, q: float, generator: torch.Generator) -> torch.Tensor:
    """The indices of one Poisson-sampled batch: each of n examples joins with probability q
    (the size is Binomial(n, q), possibly 0). -> [B] int64."""
    return torch.nonzero(torch.rand(n, generator=generator) < q).flatten()


def per_example_gradients(
    net: torch.nn.Module,
    loss_of: Callable[[torch.nn.Module, dict[str, torch.Tensor], tuple[torch.Tensor, ...]], Any],
    inputs: tuple[torch.Tensor, ...],
    randomness: str = "error",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each example's gradient of its own loss, with torch.func (functional_call +
    vmap(grad_and_value)).

    Args:
        net: the network; its parameters that require grad are differentiated, its buffers
            are held fixed.
        loss_of(net, params, example): the loss (a scalar) of one example, `example` the
            per-example slices of `inputs` with their leading batch dimension kept at 1.
        inputs: tensors with a leading batch dimension B (images, noise draws, timesteps ...).
        randomness: vmap's ("different": each example its own dropout masks).
    Returns: ({parameter name: [B, *shape]}, [B] the losses).
    """
    from torch.func import grad_and_value, vmap

    params = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}

    def one(p: dict[str, torch.Tensor], *example: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = loss_of(net, p, tuple(e.unsqueeze(0) for e in example))
        return loss

    grads, losses = vmap(
        grad_and_value(one), in_dims=(None, *([0] * len(inputs))), randomness=randomness
    )(params, *inputs)
    return grads, losses


def clipped_sum(
    per_example: dict[str, torch.Tensor], max_norm: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each example's gradient (all parameters together) scaled to L2 norm at most max_norm,
    then summed over the examples.

    Args: per_example: {name: [B, *shape]} (B may be 0).
    Returns: ({name: [*shape]} the sum, [B] the per-example norms before clipping)."""
    if max_norm <= 0:
        raise ValueError(f"the clipping norm must be positive (got {max_norm})")
    first = next(iter(per_example.values()))
    b = first.shape[0]
    squares = torch.zeros(b, dtype=torch.float64, device=first.device)
    for g in per_example.values():
        squares += (g.double() ** 2).reshape(b, int(np.prod(g.shape[1:]))).sum(1)
    norms = torch.sqrt(squares).to(first.dtype)
    scale = (max_norm / (norms + 1e-12)).clamp(max=1.0)  # [B]
    summed = {
        name: (g * scale.view(b, *([1] * (g.dim() - 1)))).sum(0) for name, g in per_example.items()
    }
    return summed, norms


def clip_and_noise(
    per_example: dict[str, torch.Tensor],
    max_norm: float,
    noise_multiplier: float,
    expected_batch: float,
    generator: torch.Generator,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """DP-SGD's gradient: `clipped_sum`, plus N(0, (noise_multiplier * max_norm)^2) per
    coordinate, divided by the expected batch size (q * N, not the drawn size: Poisson
    sampling).

    Args: per_example: {name: [B, *shape]} (B may be 0); generator: the noise's (on the
        gradients' device).
    Returns: ({name: [*shape]} the noisy mean gradient, [B] the per-example norms before
    clipping)."""
    summed, norms = clipped_sum(per_example, max_norm)
    out = {}
    for name, clipped in summed.items():
        noise = torch.randn(
            clipped.shape, generator=generator, device=clipped.device, dtype=clipped.dtype
        )
        out[name] = (clipped + noise_multiplier * max_norm * noise) / expected_batch
    return out, norms
