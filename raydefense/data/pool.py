"""The image pool every dataset loads into, the dataset registry, and pixel conversions.

Loaders register in `DATASETS` (built-in ones when `raydefense.data` is imported: digits in
`sources`, the on-disk formats in `formats`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa

from raydefense.config import DataConfig
from raydefense.registry import Registry


@dataclass(frozen=True)
class ImagePool:
    """All candidate images of a dataset, in the dataset's canonical order (split files index it).

    images: [N, C, H, W] uint8 in [0, 255]. labels: [N] int64 or None. captions: None (no text
    came with the images), or one non-empty list of strings per image: index 0 is the image's
    original caption, the rest are extra captions (prompt diversification, paper section 3.1;
    e.g. BLIP captions stored beside the original).
    """

    images: np.ndarray
    labels: Optional[np.ndarray]
    name: str
    captions: Optional[list[list[str]]] = None

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError("ImagePool.images must be uint8 [N, C, H, W]")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError("ImagePool.labels must have one entry per image")
        if self.captions is not None:
            check_caption_lists(self.captions, len(self.images), "ImagePool.captions")


def check_caption_lists(captions: object, n: int, what: str) -> None:
    """ValueError unless `captions` is a list of n non-empty lists of strings."""
    if not isinstance(captions, list) or len(captions) != n:
        raise ValueError(f"{what} must be a list with one list of captions per image ({n})")
    for i, caps in enumerate(captions):
        if not isinstance(caps, list) or not caps:
            raise ValueError(
                f"{what}[{i}] is {type(caps).__name__} {caps!r:.60}; each image needs a "
                "non-empty list of captions (index 0 = its original caption)"
            )
        for c in caps:
            if not isinstance(c, str):
                raise ValueError(f"{what}[{i}] holds {type(c).__name__} {c!r:.60}, not a str")


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


def image_column(images_u8: np.ndarray) -> pa.Array:
    """uint8 [N, ...] -> a fixed-size binary column, each row's raw bytes (C*H*W), as the rows
    table stores images (data.tables.decode_images reads them back)."""
    flat = np.ascontiguousarray(images_u8).reshape(len(images_u8), -1)
    return pa.array([r.tobytes() for r in flat], pa.binary(flat.shape[1]))


def to_model_range(images_u8: np.ndarray) -> np.ndarray:
    """uint8 [.., C, H, W] in [0, 255] -> float32 in [-1, 1] (x / 255 * 2 - 1, no flips)."""
    return images_u8.astype(np.float32) / 127.5 - 1.0
