"""Image sources behind a registry. Each returns the whole pool as uint8 pixels; nothing downloads.

A source loads from a local path (`data.root`) or from data that ships with a package (digits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from raydefense.config import DataConfig
from raydefense.registry import Registry


@dataclass(frozen=True)
class ImagePool:
    """All candidate images of a dataset, in the dataset's canonical order (split files index it).

    images: [N, C, H, W] uint8 in [0, 255]. labels: [N] int64 or None.
    """

    images: np.ndarray
    labels: Optional[np.ndarray]
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError("ImagePool.images must be uint8 [N, C, H, W]")


DATASETS: Registry[Callable[[DataConfig], ImagePool]] = Registry("dataset")


@DATASETS.register("digits")
def load_digits(cfg: DataConfig) -> ImagePool:
    """scikit-learn's 1,797 8x8 handwritten digits (bundled with scikit-learn, works offline).

    Pixel values 0..16 are mapped to uint8 by round(v * 255 / 16).
    """
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return ImagePool(images=images, labels=d.target.astype(np.int64), name="digits")


def to_model_range(images_u8: np.ndarray) -> np.ndarray:
    """uint8 [.., C, H, W] in [0, 255] -> float32 in [-1, 1] (x / 255 * 2 - 1, no flips)."""
    return images_u8.astype(np.float32) / 127.5 - 1.0
