"""The image pool every dataset loads into, the dataset registry, and pixel conversions.

Loaders register in `DATASETS` (built-in ones when `raydefense.data` is imported: digits in
`sources`, the on-disk formats in `formats`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np

from raydefense.config import DataConfig
from raydefense.registry import Registry


@dataclass(frozen=True)
class ImagePool:
    """All candidate images of a dataset, in the dataset's canonical order (split files index it).

    images: [N, C, H, W] uint8 in [0, 255]. labels: [N] int64 or None. captions: N strings or
    None (text that came with the images, e.g. a parquet caption column).
    """

    images: np.ndarray
    labels: Optional[np.ndarray]
    name: str
    captions: Optional[list[str]] = None

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError("ImagePool.images must be uint8 [N, C, H, W]")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError("ImagePool.labels must have one entry per image")
        if self.captions is not None and len(self.captions) != len(self.images):
            raise ValueError("ImagePool.captions must have one entry per image")


DATASETS: Registry[Callable[[DataConfig], ImagePool]] = Registry("dataset")


def resize_image(chw: np.ndarray, resolution: int) -> np.ndarray:
    """One uint8 [C, H, W] image (C = 1 or 3) -> [C, resolution, resolution].

    PIL's BICUBIC filter, which PIL antialiases when shrinking; the aspect ratio is not kept.
    """
    if chw.shape[1:] == (resolution, resolution):
        return chw
    from PIL import Image

    hwc = chw[0] if chw.shape[0] == 1 else np.ascontiguousarray(chw.transpose(1, 2, 0))
    img = Image.fromarray(hwc)
    out = np.asarray(img.resize((resolution, resolution), Image.Resampling.BICUBIC))
    return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)


def resize_images(images: np.ndarray, resolution: Optional[int]) -> np.ndarray:
    """uint8 [N, C, H, W] -> [N, C, r, r] with resize_image; unchanged when r is None or already
    the size."""
    if resolution is None or images.shape[2:] == (resolution, resolution):
        return images
    out = np.empty((len(images), images.shape[1], resolution, resolution), dtype=np.uint8)
    for i, im in enumerate(images):
        out[i] = resize_image(im, resolution)
    return out


def to_model_range(images_u8: np.ndarray) -> np.ndarray:
    """uint8 [.., C, H, W] in [0, 255] -> float32 in [-1, 1] (x / 255 * 2 - 1, no flips)."""
    return images_u8.astype(np.float32) / 127.5 - 1.0
