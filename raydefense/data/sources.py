"""Datasets that ship with a package (digits); nothing downloads. The on-disk formats (cifar10,
cifar100, stl10_unlabeled, tiny_imagenet, imagefolder, parquet) live in `raydefense.data.formats`;
both register in `raydefense.data.pool.DATASETS`, and importing `raydefense.data` registers all.
`data.resolution` (when set) resizes every source's images, digits included, to a square size.
"""

from __future__ import annotations

import numpy as np

from raydefense.config import DataConfig
from raydefense.data.pool import DATASETS, ImagePool, resize_images


@DATASETS.register("digits")
def load_digits(cfg: DataConfig) -> ImagePool:
    """scikit-learn's 1,797 8x8 handwritten digits (bundled with scikit-learn, works offline).

    Pixel values 0..16 are mapped to uint8 by round(v * 255 / 16).
    """
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return ImagePool(
        images=resize_images(images, cfg.resolution),
        labels=d.target.astype(np.int64),
        name="digits",
    )
