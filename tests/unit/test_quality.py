"""Quality: Frechet distance, precision/recall, IS, domain classifier, memorization, Inception."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from raydefense.errors import ConfigError
from raydefense.quality import (
    DomainClassifier,
    embed,
    feature_stats,
    fid_from_features,
    frechet_distance,
    inception_features,
    inception_fid_is,
    inception_score,
    memorization_summary,
    nearest_neighbour_ratio,
    precision_recall,
    train_domain_classifier,
)
from raydefense.quality.inception import _MISSING_MSG

# ---------------------------------------------------------------- Frechet distance


def test_frechet_identical_gaussians_is_zero() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    sigma = a @ a.T + np.eye(6)
    mu = rng.normal(size=6)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_frechet_diagonal_closed_form() -> None:
    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = frechet_distance(m1, np.diag(s1), m2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-8, abs=1e-10)
    # 1-D: (0 - 1)^2 + (sqrt(4) - sqrt(1))^2 = 2.
    assert frechet_distance(
        np.array([0.0]), np.array([[4.0]]), np.array([1.0]), np.array([[1.0]])
    ) == pytest.approx(2.0)


def test_feature_stats_shapes_and_1d() -> None:
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    mu, sigma = feature_stats(x)
    assert mu.dtype == np.float64 and mu.shape == (2,) and sigma.shape == (2, 2)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False, ddof=1))
    mu1, s1 = feature_stats(x[:, :1])
    assert mu1.shape == (1,) and s1.shape == (1, 1)


def test_fid_shifted_gaussians_and_singular_covariance() -> None:
    rng = np.random.default_rng(2)
    real = rng.normal(0.0, 1.0, size=(20000, 4))
    fake = rng.normal(1.0, 1.0, size=(20000, 4))
    assert fid_from_features(real, fake) == pytest.approx(4.0, abs=0.15)
    # Fewer samples than dimensions: singular covariances still give a finite, non-negative value.
    few = fid_from_features(rng.normal(size=(4, 10)), rng.normal(size=(5, 10)))
    assert np.isfinite(few) and few > -1e-6


# ---------------------------------------------------------------- precision / recall


def test_precision_recall_identical_and_disjoint() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3))
    assert precision_recall(x, x.copy(), k=3) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0, k=3) == (0.0, 0.0)
    with pytest.raises(ValueError):
        precision_recall(x[:3], x, k=3)


def test_precision_recall_half_coverage() -> None:
    rng = np.random.default_rng(4)
    # Real: uniform on [0, 2] x [0, 1]; fake: uniform on the left half [0, 1] x [0, 1].
    real = rng.uniform(size=(800, 2)) * np.array([2.0, 1.0])
    fake = rng.uniform(size=(400, 2))
    p, r = precision_recall(real, fake, k=3)
    assert p > 0.95
    assert 0.45 < r < 0.6


# ---------------------------------------------------------------- Inception Score


def test_inception_score_known_answers() -> None:
    k = 10
    onehot = np.tile(np.eye(k), (3, 1))
    mean, std = inception_score(onehot)
    assert mean == pytest.approx(k) and std == 0.0
    same = np.tile(np.full((1, k), 1.0 / k), (7, 1))
    assert inception_score(same)[0] == pytest.approx(1.0)
    mean2, std2 = inception_score(np.tile(np.eye(4), (2, 1)), splits=2)
    assert mean2 == pytest.approx(4.0) and std2 == pytest.approx(0.0)
    with pytest.raises(ValueError):
        inception_score(np.ones((3, 4)))


# ---------------------------------------------------------------- domain classifier


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0 * 2.0 - 1.0).astype(np.float32)[:, None, :, :]
    return x[:800], d.target[:800].astype(np.int64)


def test_domain_classifier_trains_and_is_deterministic(digits) -> None:
    x, y = digits
    rng_state = torch.get_rng_state()
    m1, acc1 = train_domain_classifier(x, y, num_classes=10, epochs=5, seed=7)
    m2, acc2 = train_domain_classifier(x, y, num_classes=10, epochs=5, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's RNG is untouched
    assert acc1 > 0.9 and acc1 == acc2
    assert not m1.training
    f1, f2 = embed(m1, x[:100]), embed(m2, x[:100])
    assert f1.shape == (100, 32) and f1.dtype == np.float32
    np.testing.assert_array_equal(f1, f2)
    # Another batch size changes only conv round-off, not the features.
    np.testing.assert_allclose(embed(m1, x[:100], batch_size=33), f1, rtol=1e-4, atol=1e-5)


def test_domain_classifier_shapes() -> None:
    m = DomainClassifier(in_channels=3, num_classes=5, feature_dim=16).eval()
    x = torch.rand(4, 3, 16, 12) * 2 - 1
    assert m.features(x).shape == (4, 16)
    p = m.probs(x)
    assert p.shape == (4, 5)
    torch.testing.assert_close(p.sum(1), torch.ones(4))
    with pytest.raises(ValueError):
        m(torch.zeros(2, 3, 4, 4))


# ---------------------------------------------------------------- memorization


def test_nearest_neighbour_ratio_exact_copy_and_far_samples() -> None:
    rng = np.random.default_rng(5)
    train = rng.uniform(-1, 1, size=(120, 1, 8, 8)).astype(np.float32)
    gen = np.concatenate([train[17:18], rng.uniform(-1, 1, size=(5, 1, 8, 8))]).astype(np.float32)
    ratios = nearest_neighbour_ratio(gen, train, k=50)
    assert ratios.shape == (6,) and ratios[0] == 0.0
    assert np.all((ratios >= 0) & (ratios <= 1))
    summary = memorization_summary(ratios, threshold=1 / 3)
    assert summary["memorized_count"] >= 1 and summary["nn_ratio_min"] == 0.0
    assert set(summary) == {
        "memorized_count",
        "memorized_fraction",
        "nn_ratio_median",
        "nn_ratio_min",
    }
    far = nearest_neighbour_ratio(rng.normal(size=(10, 1, 8, 8)) + 1000.0, train, k=50)
    assert np.all(far > 0.99) and np.all(far <= 1.0)
    # k is capped at N.
    assert nearest_neighbour_ratio(gen, train[:5], k=50).shape == (6,)


# ---------------------------------------------------------------- Inception wrapper


def test_inception_missing_weights_path(tmp_path) -> None:
    imgs = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(ConfigError, match="nope.pth"):
        inception_features(imgs, missing)


def test_inception_missing_torch_fidelity(tmp_path, monkeypatch) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    # A None entry makes the import raise ImportError whether or not torch-fidelity is installed.
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    imgs = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ConfigError) as info:
        inception_fid_is(imgs, imgs, str(weights))
    assert str(info.value) == _MISSING_MSG and "\n" not in _MISSING_MSG


def test_inception_wiring_with_stub_extractor(tmp_path, monkeypatch) -> None:
    """A stand-in extractor checks the call (name, features, weights path, uint8 RGB batches)."""
    calls: dict = {}

    class FakeExtractor(torch.nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kw):
            super().__init__()
            calls.update(
                name=name, features=list(features_list), path=feature_extractor_weights_path
            )

        def forward(self, x):
            assert x.dtype == torch.uint8 and x.shape[1] == 3
            f = x.double().flatten(1)[:, :6] / 255.0  # small dims keep sqrtm cheap
            return f.float(), torch.cat([f, -f], 1).float()

    pkg = types.ModuleType("torch_fidelity")
    sub = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    sub.FeatureExtractorInceptionV3 = FakeExtractor
    pkg.feature_extractor_inceptionv3 = sub
    monkeypatch.setitem(sys.modules, "torch_fidelity", pkg)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", sub)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")

    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8, generator=g)
    fake = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8, generator=g)
    feats, probs = inception_features(real.numpy(), str(weights), batch_size=7)
    assert calls == {
        "name": "inception-v3-compat",
        "features": ["2048", "logits_unbiased"],
        "path": str(weights),
    }
    assert feats.shape == (20, 6) and probs.shape == (20, 12)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    out = inception_fid_is(real, fake, str(weights))
    assert set(out) == {"fid", "inception_score"}
    assert out["fid"] >= 0 and 1.0 <= out["inception_score"] <= 12.0
    with pytest.raises(ValueError):
        inception_features(real.float(), str(weights))
