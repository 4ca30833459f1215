"""Optional Inception-v3 FID / IS through torch-fidelity, from a local weights file only.

torch-fidelity's "inception-v3-compat" extractor reproduces the TensorFlow FID network
bit-for-bit (TF-style bilinear resize to 299, (x - 128) / 128 scaling). It is imported lazily
so the rest of the package works without it (it also needs a torchvision build matching torch).
Nothing is ever downloaded: `feature_extractor_weights_path` is always passed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from raydefense.errors import ConfigError
from raydefense.quality.fid import feature_stats, frechet_distance, inception_score

ArrayLike = Union[np.ndarray, torch.Tensor]

_MISSING_MSG = (
    "quality.inception_weights is set but torch-fidelity is not installed; pip install "
    "torch-fidelity (needs torchvision matching torch) or unset "
    "quality.inception_weights"
)


def _load_extractor(weights_path: str, device: Union[str, torch.device]) -> Any:
    """The torch-fidelity extractor in eval mode on device; ConfigError on a bad setup."""
    path = Path(weights_path).expanduser()
    # Checked first: it is cheap, and without it torch-fidelity would try to download.
    if not path.is_file():
        raise ConfigError(
            f"quality.inception_weights={str(weights_path)!r} does not exist or is "
            "not a file; point it at torch-fidelity's "
            "weights-inception-2015-12-05-6726825d.pth or unset it"
        )
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except (ImportError, OSError) as exc:  # OSError: a torchvision built for another torch/CUDA
        raise ConfigError(_MISSING_MSG) from exc
    extractor = FeatureExtractorInceptionV3(
        name="inception-v3-compat",
        features_list=["2048", "logits_unbiased"],
        feature_extractor_weights_path=str(path),
    )
    return extractor.to(device).eval()


def _as_uint8_rgb(images: ArrayLike) -> torch.Tensor:
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"expected uint8 [N, 1 or 3, H, W] images, got {x.dtype} {tuple(x.shape)}")
    if x.shape[1] == 1:
        # Inception takes RGB; grayscale becomes three equal channels.
        x = x.repeat(1, 3, 1, 1)
    return x


def _extract(
    extractor: Any, images: ArrayLike, batch_size: int, device: Union[str, torch.device]
) -> tuple[np.ndarray, np.ndarray]:
    x = _as_uint8_rgb(images)
    feats, probs = [], []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            pool3, logits = extractor(x[s : s + batch_size].to(device))
            feats.append(pool3.double().cpu())
            # IS uses the softmax of the bias-free logits, as torch-fidelity's own ISC does.
            probs.append(torch.softmax(logits.double(), dim=1).cpu())
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def inception_features(
    images_uint8: ArrayLike,
    weights_path: str,
    batch_size: int = 64,
    device: Union[str, torch.device] = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Inception-v3 pool3 features and class probabilities.

    images_uint8: [N, 1 or 3, H, W] uint8 in [0, 255] (torch or numpy; any H, W, resized to 299
    inside torch-fidelity). Returns (features [N, 2048] float64, probs [N, 1008] float64 with rows
    summing to 1). Raises ConfigError if weights_path is missing or torch-fidelity is unavailable.
    """
    extractor = _load_extractor(weights_path, device)
    return _extract(extractor, images_uint8, batch_size, device)


def inception_fid_is(
    real_u8: ArrayLike,
    fake_u8: ArrayLike,
    weights_path: str,
    splits: int = 1,
    batch_size: int = 64,
    device: Union[str, torch.device] = "cpu",
) -> dict[str, float]:
    """Inception FID(real, fake) and IS(fake) with one extractor load.

    real_u8 [N, C, H, W], fake_u8 [M, C, H, W]: uint8 in [0, 255], C in {1, 3}, N, M >= 2.
    splits: IS splits over the fake set (1 by default: small sample counts make 10-way IS biased).
    Returns {"fid": float >= 0, "inception_score": float in [1, 1008]}.
    """
    extractor = _load_extractor(weights_path, device)
    real_feats, _ = _extract(extractor, real_u8, batch_size, device)
    fake_feats, fake_probs = _extract(extractor, fake_u8, batch_size, device)
    fid = frechet_distance(*feature_stats(real_feats), *feature_stats(fake_feats))
    is_mean, _ = inception_score(fake_probs, splits=splits)
    return {"fid": fid, "inception_score": is_mean}
