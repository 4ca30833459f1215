"""Datasets that ship with a package (digits, digits_captioned); nothing downloads. The on-disk
formats (cifar10, cifar100, stl10_unlabeled, tiny_imagenet, imagefolder, parquet) live in
`raydefense.data.formats`; both register in `raydefense.data.pool.DATASETS`, and importing
`raydefense.data` registers all. `data.resolution` (when set) resizes every source's images, digits
included, to a square size.
"""

from __future__ import annotations

import numpy as np

from raydefense.config import DataConfig
from raydefense.data.pool import DATASETS, ImagePool, resize_images

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_CAPTIONED_RESOLUTION = 32  # digits_captioned's size when data.resolution is None
# digits_captioned: caption 0 (the original) and the extra captions, for {word} / {n} of a label.
DIGIT_CAPTION = "a handwritten digit {word}"
DIGIT_EXTRA_CAPTIONS = (
    "a photo of the number {n}",
    "the digit {word}, written by hand",
    "a black and white image of a {n}",
    "a small pixelated {word}",
    "a white handwritten {n} on a black background",
    "a low resolution scan of the numeral {word}",
)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (uint8 [1797, 1, 8, 8], int64 [1797] labels)."""
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return images, d.target.astype(np.int64)


def digit_captions(label: int) -> list[str]:
    """The captions of a digits_captioned image: [original, *extras], fixed per label."""
    fields = {"word": DIGIT_WORDS[label], "n": str(label)}
    return [t.format(**fields) for t in (DIGIT_CAPTION, *DIGIT_EXTRA_CAPTIONS)]


@DATASETS.register("digits")
def load_digits(cfg: DataConfig) -> ImagePool:
    """scikit-learn's 1,797 8x8 handwritten digits (bundled with scikit-learn, works offline).

    Pixel values 0..16 are mapped to uint8 by round(v * 255 / 16).
    """
    images, labels = _digits()
    return ImagePool(images=resize_images(images, cfg.resolution), labels=labels, name="digits")


@DATASETS.register("digits_captioned")
def load_digits_captioned(cfg: DataConfig) -> ImagePool:
    """The digits (same order and labels) as a captioned text-to-image set: RGB (the grey value
    replicated to 3 channels), resized to data.resolution (None: 32 x 32, PIL bicubic).

    Captions come from the label, with no randomness: the original caption is DIGIT_CAPTION
    ("a handwritten digit seven"), then one extra caption per DIGIT_EXTRA_CAPTIONS template ("a
    photo of the number 7", ...), so every image has 1 + len(DIGIT_EXTRA_CAPTIONS) captions.
    """
    images, labels = _digits()
    res = cfg.resolution if cfg.resolution is not None else DIGITS_CAPTIONED_RESOLUTION
    grey = resize_images(images, res)
    per_label = {k: digit_captions(k) for k in range(len(DIGIT_WORDS))}
    return ImagePool(
        images=np.ascontiguousarray(np.repeat(grey, 3, axis=1)),
        labels=labels,
        name="digits_captioned",
        captions=[list(per_label[int(k)]) for k in labels],
    )
