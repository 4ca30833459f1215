"""GSA1 / GSA2 white-box gradient attacks (Pang et al., PoPETs 2025; spec/attacks.md §5).

Per image x0 and each of S equidistant timesteps K_j = round(T j / S) - 1 (j = 1..S; T = 1000,
S = 10 gives 99, 199, ..., 999), with noise_j drawn per (row, j):
    x_t = q_sample(x0, K_j, noise_j),
    L_j = mean over C*H*W of (net(x_t, K_j) - noise_j)^2,  g_j = dL_j / dtheta.
GSA1 features: per-parameter-tensor L2 norm of (1/S) sum_j g_j. The gradient is linear, so this is
exactly the norm of the gradient of the official mean-over-S loss (eval mode has no
cross-sample ops: GroupNorm is per sample, dropout is off).
GSA2 features: (1/S) sum_j of the per-tensor L2 norms of g_j.
One feature per parameter tensor (every weight and bias), in net.parameters() order.
A gradient-boosting classifier trained on shadow models' features scores the target's rows.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from raydefense.attacks.base import ATTACKS, LearnedAttack, Query, check_cond
from raydefense.attacks.classifiers import Standardizer, gradient_boosting, zscore
from raydefense.config import GSAConfig
from raydefense.diffusion.eps import FrozenEps
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.seeding import STREAM_GSA, per_row_normal


def gsa_timesteps(num_train_timesteps: int, num_timesteps: int) -> list[int]:
    """K_j = round(T j / S) - 1 for j = 1..S (0-based indices; T / S * j - 1 when S divides T).

    Integer round-half-up, so no float error creeps into the indices.
    """
    T, S = num_train_timesteps, num_timesteps
    if not 1 <= S <= T:
        raise ValueError(f"GSA num_timesteps must be in [1, {T}] (got {S})")
    return [(2 * T * j + S) // (2 * S) - 1 for j in range(1, S + 1)]


def _item_loss(
    net: torch.nn.Module,
    params: dict[str, torch.Tensor],
    rest: dict[str, torch.Tensor],
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    cond: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One item's denoising loss: x_t, noise [C, H, W], t [] long, cond [L, D] (this item's
    conditioning) or None -> scalar. Without cond the net is called as net(x_t, t)."""
    args: tuple[torch.Tensor, ...] = (x_t[None], t[None])
    if cond is not None:
        args = (*args, cond[None])
    out = functional_call(net, (params, rest), args)
    return (out[0].float() - noise).pow(2).mean()


def _grads_vmap(
    net: torch.nn.Module,
    params: dict[str, torch.Tensor],
    rest: dict[str, torch.Tensor],
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    cond: Optional[torch.Tensor] = None,
) -> dict[str, torch.Tensor]:
    """Per-item gradients, each [N, *param.shape], in one vmapped backward. cond: [N, L, D], item
    i's conditioning in row i (vmapped like x_t), or None."""

    def loss(
        p: dict[str, torch.Tensor],
        x: torch.Tensor,
        tt: torch.Tensor,
        n: torch.Tensor,
        *c: torch.Tensor,
    ) -> torch.Tensor:
        return _item_loss(net, p, rest, x, tt, n, c[0] if c else None)

    items = (x_t, t, noise) if cond is None else (x_t, t, noise, cond)

    with warnings.catch_warnings():
        # CPU SDPA (the mid-block attention) has no batching rule yet: torch falls back to a
        # slower per-item loop for that op only, and warns on every call.
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        return vmap(grad(loss), in_dims=(None, *([0] * len(items))))(params, *items)


def _grads_loop(
    net: torch.nn.Module,
    params: dict[str, torch.Tensor],
    rest: dict[str, torch.Tensor],
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    cond: Optional[torch.Tensor] = None,
) -> dict[str, torch.Tensor]:
    """Fallback: the same per-item gradients, one backward per item (cond [N, L, D] or None)."""
    names = list(params)
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    out: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    with torch.enable_grad():
        for i in range(x_t.shape[0]):
            c = None if cond is None else cond[i]
            loss = _item_loss(net, leaves, rest, x_t[i], t[i], noise[i], c)
            gs = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
            for k, g in zip(names, gs):
                out[k].append(torch.zeros_like(leaves[k]) if g is None else g)
    return {k: torch.stack(v) for k, v in out.items()}


def gsa_features(
    net: torch.nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    row_ids: torch.Tensor,
    seed: int,
    num_timesteps: int,
    batch_size: int = 16,
    cond: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GSA1 and GSA2 features of every row (module docstring for the definitions).

    Per-(row, j) gradients come from torch.func (functional_call + vmap(grad)) over chunks of
    `batch_size` rows (batch_size * S items at once, memory ~ that many gradient copies), in
    float32 with the net in eval mode (its mode is restored after). If vmap cannot handle some
    op of the model, a per-item backward loop computes the same values (a warning says so).

    Args:
        net: an EpsNet (any nn.Module called as net(x_t, t) -> eps).
        x0: [B, C, H, W] in [-1, 1]. row_ids: [B] int64; noise of (row, j) comes from
            per_row_normal(..., seed, STREAM_GSA, j), so a row's features do not depend on its
            batch. num_timesteps: S.
        cond: [B, L, D] text embeddings aligned with x0 (text-to-image targets), None for
            unconditional models (the net is then called as net(x_t, t)); item (row, j) is
            conditioned on cond[row], for every j.
    Returns:
        (f1, f2), each [B, P] float32 >= 0, P = number of parameter tensors in
        net.parameters() order; f1 <= f2 elementwise (norm of a mean <= mean of norms).
    """
    S = num_timesteps
    ks = gsa_timesteps(schedule.num_train_timesteps, S)
    # Every parameter tensor, whatever its requires_grad flag (inference loaders freeze them):
    # torch.func differentiates the detached copies below.
    params = {n: p.detach().float() for n, p in net.named_parameters()}
    if not params:
        raise ValueError("GSA needs a model with parameters")
    rest = {n: (b.float() if b.is_floating_point() else b) for n, b in net.named_buffers()}
    dev = next(iter(params.values())).device
    x0 = x0.to(dev, torch.float32)
    check_cond("gsa", x0, cond)
    if cond is not None:
        cond = cond.to(dev, torch.float32)
    b = x0.shape[0]
    shape = tuple(x0.shape[1:])
    # [B, S, C, H, W]: noise of row i at K_j from its own stream (j = 1..S as in K_j's formula).
    noise = torch.stack(
        [per_row_normal(shape, row_ids, seed, STREAM_GSA, j) for j in range(1, S + 1)], dim=1
    ).to(dev)
    t_rows = torch.tensor(ks, dtype=torch.long, device=dev)

    f1 = torch.empty(b, len(params), dtype=torch.float32, device=dev)
    f2 = torch.empty_like(f1)
    was_training = net.training
    net.eval()
    use_vmap = True
    try:
        for lo in range(0, b, max(1, batch_size)):
            hi = min(b, lo + max(1, batch_size))
            nb = hi - lo
            # Row-major items: item r*S + j is row lo + r at timestep K_j.
            xi = x0[lo:hi, None].expand(nb, S, *shape).reshape(nb * S, *shape)
            ni = noise[lo:hi].reshape(nb * S, *shape)
            ti = t_rows.repeat(nb)
            ci = None if cond is None else cond[lo:hi].repeat_interleave(S, dim=0)  # row-major
            x_t = schedule.q_sample(xi, ti, ni)
            grads = None
            if use_vmap:
                try:
                    grads = _grads_vmap(net, params, rest, x_t, ti, ni, ci)
                except torch.OutOfMemoryError:
                    raise
                except (RuntimeError, NotImplementedError) as e:
                    warnings.warn(
                        f"GSA: vmap over the model failed ({e}); falling back to a "
                        f"per-item backward loop (same values, slower)",
                        stacklevel=2,
                    )
                    use_vmap = False
            if grads is None:
                grads = _grads_loop(net, params, rest, x_t, ti, ni, ci)
            for c, name in enumerate(params):
                g = grads[name].reshape(nb, S, -1).float()
                f1[lo:hi, c] = g.mean(dim=1).norm(dim=1)
                f2[lo:hi, c] = g.norm(dim=2).mean(dim=1)
            del grads
    finally:
        net.train(was_training)
    return f1, f2


class _GSA(LearnedAttack):
    """Shared body of GSA1 / GSA2; `variant` picks the feature."""

    name = ""
    variant = 1
    access = "white-box"
    trains_on = "shadow"

    def __init__(self, cfg: GSAConfig | dict[str, Any], num_train_timesteps: int = 1000) -> None:
        self.cfg = cfg if isinstance(cfg, GSAConfig) else GSAConfig.model_validate(cfg)

    def weights(self, default: str) -> str:
        return self.cfg.weights  # the official code attacks the raw training weights

    def settings(self) -> list[dict[str, Any]]:
        return [
            {
                "num_timesteps": self.cfg.num_timesteps,
                "classifier": self.cfg.classifier,
                "scaling": self.cfg.scaling,
            }
        ]

    def features(self, q: Query) -> torch.Tensor:
        """q.eps must be a FrozenEps (white-box: its `.net` gives parameters and gradients); the
        gradient pass is shared by GSA1 and GSA2 through q's per-batch cache, under ("gsa", S).
        Returns:
            [B, P] float32 per-parameter-tensor gradient norms (>= 0).
        """
        eps = q.eps
        if not isinstance(eps, FrozenEps):
            raise TypeError(
                f"{self.name} is a white-box attack and needs the network itself (a FrozenEps "
                f"over an EpsNet); got {type(eps).__name__}"
            )
        n, chunk = self.cfg.num_timesteps, self.cfg.batch_size
        f1, f2 = q.shared(
            ("gsa", n),
            lambda: gsa_features(
                eps.net, q.schedule, q.x0, q.row_ids, q.seed, n, chunk, cond=q.cond
            ),
        )
        return f1 if self.variant == 1 else f2

    def fit_predict(
        self,
        train_x: np.ndarray,
        train_y: np.ndarray,
        eval_x: list[np.ndarray],
        seed: int,
        image_shape: Optional[tuple[int, int, int]] = None,
    ) -> list[np.ndarray]:
        """Fit the gradient-boosting classifier on shadow features and score each eval matrix.

        Scaling "separate" (the official code, transductive): the shadow matrix and each eval
        matrix are z-scored with their own statistics, so the caller passes a target's whole
        audited matrix as one eval matrix. "shadow": eval matrices reuse the shadow statistics.
        The official code fits on a random 70% of the shadow rows (the 30% is only a sanity
        report) and truncates members to the non-member count; here the classifier is fitted on
        all shadow rows given (balancing is the caller's choice).

        Args:
            train_x: [N, P] shadow features, train_y: [N] in {0, 1} (member = 1).
            eval_x: matrices [M_i, P]. image_shape: unused (uniform signature with secmi_nn).
        Returns:
            [M_i] float32 member probabilities per eval matrix, higher = member.
        """
        train_x = np.asarray(train_x, dtype=np.float32)
        y = np.asarray(train_y).astype(np.int64).reshape(-1)
        if self.cfg.scaling == "separate":
            tr, scale = zscore(train_x), zscore
        else:
            st = Standardizer().fit(train_x)
            tr, scale = st.transform(train_x), st.transform
        evs = [np.asarray(e, dtype=np.float32) for e in eval_x]
        evs = [scale(e) if len(e) else e for e in evs]
        clf = gradient_boosting(self.cfg.classifier, self.cfg.n_estimators, seed)
        clf.fit(tr, y)
        return [
            clf.predict_proba(e)[:, 1].astype(np.float32)
            if len(e)
            else np.zeros(0, dtype=np.float32)
            for e in evs
        ]


@ATTACKS.register("gsa1")
class GSA1(_GSA):
    """GSA1: norm of the gradient of the mean loss over the S timesteps."""

    name = "gsa1"
    variant = 1


@ATTACKS.register("gsa2")
class GSA2(_GSA):
    """GSA2: mean over the S timesteps of the per-timestep gradient norms."""

    name = "gsa2"
    variant = 2
