"""Tiny fake datasets written in the real on-disk layouts (shared by unit and e2e tests)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def random_images(n: int, c: int = 3, side: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, c, side, side), dtype=np.uint8)


def hwc(chw: np.ndarray) -> np.ndarray:
    return chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)


def png_bytes(chw: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(hwc(chw)).save(buf, format="PNG")
    return buf.getvalue()


def write_cifar10(
    folder: Path,
    per_batch: int = 5,
    seed: int = 0,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py with 5 python-2-style pickles (bytes keys) + a test_batch.

    images: [5 * per_batch, 3, 32, 32] uint8 to write (default: uniform noise).
    """
    folder.mkdir(parents=True)
    images = random_images(5 * per_batch, seed=seed) if images is None else images
    labels = np.arange(5 * per_batch) % 10 if labels is None else labels
    for b in range(5):
        sl = slice(b * per_batch, (b + 1) * per_batch)
        batch = {
            b"batch_label": f"training batch {b + 1} of 5".encode(),
            b"labels": labels[sl].tolist(),
            b"data": images[sl].reshape(per_batch, 3072),  # R plane, G plane, B plane
            b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)],
        }
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {b"labels": [0], b"data": np.zeros((1, 3072), np.uint8)}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    return images, labels


def digits_as_cifar(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n scikit-learn digits as CIFAR-shaped images: [n, 3, 32, 32] uint8 (each 8x8
    digit upscaled 4x, grey in all three channels) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:n] * (255.0 / 16.0)).round().astype(np.uint8)
    x = x.repeat(4, axis=1).repeat(4, axis=2)
    return np.repeat(x[:, None], 3, axis=1), d.target[:n].astype(np.int64)
