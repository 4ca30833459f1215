"""Learned attacks: GSA1/GSA2 gradient features and classifier, SecMI_NNs, and their helpers."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import scale

from raydefense.attacks import ATTACKS
from raydefense.attacks import gsa as gsa_mod
from raydefense.attacks.base import Query
from raydefense.attacks.classifiers import (
    AttackResNet,
    Standardizer,
    gradient_boosting,
    predict_resnet,
    train_resnet_regressor,
    zscore,
)
from raydefense.attacks.gsa import GSA1, GSA2, gsa_features, gsa_timesteps
from raydefense.attacks.secmi import SecMIStat, secmi_error_maps
from raydefense.attacks.secmi_nn import SecMINN
from raydefense.config import GSAConfig, SecMINNConfig
from raydefense.diffusion.backbones import build_net
from raydefense.diffusion.eps import EpsNet, FrozenEps
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import ConfigError
from raydefense.families import UNet2DConfig
from raydefense.seeding import STREAM_GSA, per_row_normal

SCHED = NoiseSchedule()


@pytest.fixture(scope="module")
def tiny_unet() -> EpsNet:
    torch.manual_seed(0)
    return build_net(UNet2DConfig(block_out_channels=[8, 16], norm_num_groups=4), (1, 8, 8)).eval()


def _x0(b: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 8, 8, generator=g) * 2 - 1


def _loop_features(
    unet: torch.nn.Module, x0: torch.Tensor, row_ids: torch.Tensor, seed: int, s: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: one loss.backward() per (row, j), as the official GSA2 loop."""
    ks = gsa_timesteps(SCHED.num_train_timesteps, s)
    params = [p for p in unet.parameters() if p.requires_grad]
    f1, f2 = [], []
    for i in range(x0.shape[0]):
        gs = []
        for j, k in enumerate(ks, start=1):
            noise = per_row_normal((1, 8, 8), row_ids[i : i + 1], seed, STREAM_GSA, j)
            x_t = SCHED.q_sample(x0[i : i + 1], k, noise)
            unet.zero_grad(set_to_none=True)
            loss = (unet(x_t, torch.tensor([k])) - noise).pow(2).mean()
            loss.backward()
            gs.append([p.grad.detach().clone() for p in params])
        f1.append(
            torch.stack(
                [torch.stack([g[c] for g in gs]).mean(0).norm() for c in range(len(params))]
            )
        )
        f2.append(
            torch.stack([torch.stack([g[c].norm() for g in gs]).mean() for c in range(len(params))])
        )
    unet.zero_grad(set_to_none=True)
    return torch.stack(f1), torch.stack(f2)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max elementwise relative error of a against the reference b, with the denominator floored
    at 1e-5 max|b|: some gradients are exactly zero in exact arithmetic (the attention key bias
    only shifts every logit of a softmax row by the same amount) and float32 leaves ~1e-9 noise
    there, which has no meaningful relative error."""
    floor = b.abs().max().clamp_min(1e-30) * 1e-5
    return float(((a - b).abs() / b.abs().clamp_min(floor)).max())


# ------------------------------------------------------------------------------------- GSA


def test_gsa_timesteps() -> None:
    assert gsa_timesteps(1000, 10) == [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]
    assert gsa_timesteps(1000, 3) == [332, 666, 999]
    assert gsa_timesteps(100, 1) == [99]
    with pytest.raises(ValueError):
        gsa_timesteps(10, 11)


def test_gsa_vmap_equals_loop(tiny_unet: torch.nn.Module) -> None:
    x0, ids = _x0(3), torch.tensor([5, 9, 2])
    f1, f2 = gsa_features(tiny_unet, SCHED, x0, ids, seed=7, num_timesteps=3, batch_size=2)
    r1, r2 = _loop_features(tiny_unet, x0, ids, 7, 3)
    n_tensors = sum(1 for p in tiny_unet.parameters() if p.requires_grad)
    assert f1.shape == f2.shape == (3, n_tensors) and f1.dtype == torch.float32
    assert _rel_err(f1, r1) < 1e-4 and _rel_err(f2, r2) < 1e-4
    assert not tiny_unet.training


def test_gsa_loop_fallback(tiny_unet: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    x0, ids = _x0(2), torch.tensor([3, 4])
    f1, f2 = gsa_features(tiny_unet, SCHED, x0, ids, seed=1, num_timesteps=2)

    def broken(*a: object, **k: object) -> None:
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(gsa_mod, "_grads_vmap", broken)
    with pytest.warns(UserWarning, match="falling back"):
        g1, g2 = gsa_features(tiny_unet, SCHED, x0, ids, seed=1, num_timesteps=2)
    assert _rel_err(g1, f1) < 1e-4 and _rel_err(g2, f2) < 1e-4


def test_gsa_properties(tiny_unet: torch.nn.Module) -> None:
    x0, ids = _x0(3, seed=2), torch.tensor([10, 11, 12])
    f1, f2 = gsa_features(tiny_unet, SCHED, x0, ids, seed=3, num_timesteps=2, batch_size=2)
    # Triangle inequality: the norm of a mean never exceeds the mean of the norms.
    assert bool((f1 <= f2 * (1 + 1e-5) + 1e-12).all()) and bool((f1 >= 0).all())
    again = gsa_features(tiny_unet, SCHED, x0, ids, seed=3, num_timesteps=2, batch_size=2)
    assert torch.equal(again[0], f1) and torch.equal(again[1], f2)
    alone = gsa_features(tiny_unet, SCHED, x0[1:2], ids[1:2], seed=3, num_timesteps=2)
    assert _rel_err(alone[0], f1[1:2]) < 1e-4 and _rel_err(alone[1], f2[1:2]) < 1e-4
    other = gsa_features(tiny_unet, SCHED, x0[1:2], ids[1:2], seed=4, num_timesteps=2)
    assert not torch.allclose(other[0], f1[1:2])


def test_gsa_attack_features_cache_and_errors(
    tiny_unet: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ATTACKS.get("gsa1") is GSA1 and ATTACKS.get("gsa2") is GSA2
    a1, a2 = GSA1({"num_timesteps": 2}), GSA2(GSAConfig(num_timesteps=2, classifier="sklearn"))
    assert (a1.access, a1.kind, a1.trains_on) == ("white-box", "learned", "shadow")
    assert a2.settings() == [{"num_timesteps": 2, "classifier": "sklearn", "scaling": "separate"}]
    x0, ids = _x0(2), torch.tensor([0, 1])
    with pytest.raises(TypeError, match="needs the network itself"):
        a1.features(Query(lambda x, t: x, SCHED, x0, ids, 0))
    calls = []
    real = gsa_mod.gsa_features

    def counting(*a: object, **k: object) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(gsa_mod, "gsa_features", counting)
    cache: dict = {}
    eps = FrozenEps(tiny_unet)
    f1 = a1.features(Query(eps, SCHED, x0, ids, 0, cache=cache))
    f2 = a2.features(Query(eps, SCHED, x0, ids, 0, cache=cache))
    assert len(calls) == 1 and ("gsa", 2) in cache
    assert torch.equal(f1, cache[("gsa", 2)][0]) and torch.equal(f2, cache[("gsa", 2)][1])


def _blobs(n: int, d: int, seed: int, shift: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n)
    x = rng.normal(size=(2 * n, d)) + shift * y[:, None]
    return x.astype(np.float32), y


@pytest.mark.parametrize("kind", ["xgboost", "sklearn"])
def test_gradient_boosting_separates_blobs(kind: str) -> None:
    xtr, ytr = _blobs(100, 5, 0)
    xte, yte = _blobs(100, 5, 1)
    clf = gradient_boosting(kind, 20, seed=0)
    clf.fit(xtr, ytr)
    assert roc_auc_score(yte, clf.predict_proba(xte)[:, 1]) > 0.95
    assert type(clf).__module__.startswith(kind)


def test_gradient_boosting_missing_xgboost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xgboost", None)  # makes `import xgboost` fail
    with pytest.raises(ConfigError, match="pip install xgboost-cpu"):
        gradient_boosting("xgboost", 10, 0)
    assert type(gradient_boosting("auto", 10, 0)).__name__ == "GradientBoostingClassifier"


@pytest.mark.parametrize("scaling", ["separate", "shadow"])
def test_gsa_fit_predict(scaling: str) -> None:
    xtr, ytr = _blobs(60, 4, 2)
    xte, yte = _blobs(60, 4, 3)
    att = GSA2({"classifier": "sklearn", "n_estimators": 20, "scaling": scaling})
    (p,) = att.fit_predict(xtr, ytr, [xte], seed=0)
    assert p.shape == (120,) and p.dtype == np.float32 and roc_auc_score(yte, p) > 0.95


def test_zscore_and_standardizer() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)) * [1.0, 5.0, 0.1, 1.0] + [0.0, 3.0, -2.0, 0.0]
    x[:, 3] = 7.0  # constant column -> 0
    np.testing.assert_allclose(zscore(x), scale(x), rtol=1e-10, atol=1e-12)
    assert np.all(zscore(x)[:, 3] == 0)
    st = Standardizer().fit(x)
    np.testing.assert_allclose(st.transform(x[:5]), scale(x)[:5], rtol=1e-10, atol=1e-12)
    assert st.transform(x.astype(np.float32)).dtype == np.float32


# ---------------------------------------------------------------------------------- SecMI_NN


@pytest.mark.parametrize("shape", [(4, 1, 8, 8), (4, 3, 32, 32)])
def test_attack_resnet_shapes(shape: tuple[int, int, int, int]) -> None:
    model = AttackResNet(in_channels=shape[1]).eval()
    with torch.no_grad():
        assert model(torch.randn(shape)).shape == (4, 1)


def _maps(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flattened 1x8x8 |error| maps; members (label 1) have half the error scale."""
    rng = np.random.default_rng(seed)
    y = np.repeat([1, 0], n)
    sigma = np.where(y == 1, 0.5, 1.0)[:, None]
    return np.abs(rng.normal(size=(2 * n, 64)) * sigma).astype(np.float32), y


def test_secmi_nn_end_to_end() -> None:
    # The official lr 1e-3; small batches and 8 epochs give enough SGD steps (and BatchNorm
    # running-statistic updates) on 48 rows for eval-mode outputs to separate the classes.
    att = SecMINN(SecMINNConfig(epochs=8, batch_size=8))
    assert ATTACKS.get("secmi_nn") is SecMINN
    assert (att.access, att.kind, att.trains_on) == ("gray-box", "learned", "calibration")
    assert att.settings() == [{"t_sec": 100, "k": 10}]
    xtr, ytr = _maps(24, 0)
    xte, yte = _maps(24, 1)
    s1, s2 = att.fit_predict(xtr, ytr, [xte, xte[:3]], seed=0, image_shape=(1, 8, 8))
    assert s1.shape == (48,) and s1.dtype == np.float32 and s2.shape == (3,)
    np.testing.assert_allclose(s2, s1[:3], rtol=1e-5, atol=1e-6)
    assert roc_auc_score(yte, s1) > 0.9  # higher = member
    with pytest.raises(ValueError, match="image_shape"):
        att.fit_predict(xtr, ytr, [xte], seed=0)


def test_secmi_nn_deterministic_and_cross_fit() -> None:
    att = SecMINN(SecMINNConfig(epochs=1, batch_size=8, cv_folds=2))
    xtr, ytr = _maps(8, 2)
    a = att.fit_predict(xtr, ytr, [xtr], seed=3, image_shape=(1, 8, 8))[0]
    b = att.fit_predict(xtr, ytr, [xtr], seed=3, image_shape=(1, 8, 8))[0]
    np.testing.assert_array_equal(a, b)
    oof = att.cross_fit(xtr, ytr, seed=3, image_shape=(1, 8, 8))
    assert oof.shape == (16,) and oof.dtype == np.float32 and np.isfinite(oof).all()
    np.testing.assert_array_equal(oof, att.cross_fit(xtr, ytr, seed=3, image_shape=(1, 8, 8)))
    assert not np.allclose(oof, a)  # out-of-fold, not the in-sample model's scores


def test_train_resnet_keeps_global_rng_and_handles_batch_of_one() -> None:
    xtr, ytr = _maps(8, 0)
    state = torch.get_rng_state()
    # 17 rows with batch 16 leaves a last batch of 1, which BatchNorm cannot train on.
    model = train_resnet_regressor(
        xtr[:17].reshape(-1, 1, 8, 8), ytr[:17], SecMINNConfig(epochs=1, batch_size=16), seed=0
    )
    assert torch.equal(state, torch.get_rng_state())
    assert predict_resnet(model, xtr.reshape(-1, 1, 8, 8)).shape == (16,)


def test_secmi_nn_features_share_cache() -> None:
    calls = []

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(int(t[0]))
        return torch.tanh(x) * (1.0 + t.view(-1, 1, 1, 1).float() / 1000.0) + 0.1 * x.pow(2)

    x0, ids = _x0(3), torch.arange(3)
    att = SecMINN({"t_sec": 40, "k": 10})
    x_tilde, x_hat = secmi_error_maps(eps, SCHED, x0, 40, 10)
    n_calls = len(calls)
    cache: dict = {}
    feats = att.features(Query(eps, SCHED, x0, ids, 0, cache=cache))
    assert feats.shape == (3, 64) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, (x_tilde - x_hat).abs().flatten(1))
    assert len(calls) == 2 * n_calls and ("secmi", 40, 10) in cache
    stat = SecMIStat({"t_sec": 40, "k": 10}).score(Query(eps, SCHED, x0, ids, 0, cache=cache))
    assert len(calls) == 2 * n_calls  # reused, no new round trip
    torch.testing.assert_close(stat[:, 0], -feats.pow(2).sum(1))


class _AffineEps(torch.nn.Module):
    """eps(x, t) = w x + b: two parameter tensors, gradients computable by hand."""

    def __init__(self, w: float, b: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))
        self.b = torch.nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.w * x + self.b


def test_gsa_known_answer_one_sample() -> None:
    """GSA1/GSA2 of one 1x2x2 image under eps = w x + b, S = 2 (t = 499, 999), by hand:
    loss_j = mean((w x_t + b - n)^2); dL/dw = mean(2 r x_t), dL/db = mean(2 r), r = w x_t + b - n.
    GSA1 = |mean_j grad_j| per tensor, GSA2 = mean_j |grad_j|."""
    sched = NoiseSchedule()
    x0 = torch.tensor([[[[0.5, -0.25], [1.0, -1.0]]]])
    w, b, seed, row = 0.3, -0.1, 4, 7
    gw, gb = [], []
    for j, t in zip((1, 2), (499, 999)):
        n = per_row_normal((1, 2, 2), [row], seed, STREAM_GSA, j).double().flatten()
        a = sched.alphas_cumprod.double()[t]
        x_t = a.sqrt() * x0.double().flatten() + (1 - a).sqrt() * n
        r = w * x_t + b - n
        gw.append(float((2 * r * x_t).mean()))
        gb.append(float((2 * r).mean()))
    f1, f2 = gsa_features(_AffineEps(w, b), sched, x0, torch.tensor([row]), seed, 2)
    assert gsa_timesteps(1000, 2) == [499, 999]
    assert f1[0].tolist() == pytest.approx([abs(sum(gw) / 2), abs(sum(gb) / 2)], rel=1e-5)
    assert f2[0].tolist() == pytest.approx(
        [(abs(gw[0]) + abs(gw[1])) / 2, (abs(gb[0]) + abs(gb[1])) / 2], rel=1e-5
    )


def test_secmi_nn_cross_fit_predict_shares_models() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((24, 1 * 8 * 8)).astype(np.float32)
    y = np.array([0, 1] * 12)
    att = SecMINN(SecMINNConfig(epochs=1, batch_size=8, width=4, min_steps=5, cv_folds=2))
    oof, (ev,) = att.cross_fit_predict(maps, y, [maps[:5]], seed=3, image_shape=(1, 8, 8))
    assert oof.shape == (24,) and ev.shape == (5,)
    oof2, (ev2,) = att.cross_fit_predict(maps, y, [maps[:5]], seed=3, image_shape=(1, 8, 8))
    assert np.array_equal(oof, oof2) and np.array_equal(ev, ev2)
    assert AttackResNet(1, width=4).linear.in_features == 32
