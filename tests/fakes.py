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


CAPTION_WORDS = ["a", "digit", "picture", "of", "the", "number", "zero", "one", "two", "drawn"]


def tiny_blip(out: Path) -> Path:
    """A random BLIP captioner (BlipForConditionalGeneration + BlipProcessor) saved at `out`,
    built offline: a 16-wide, 1-layer vision and text model on 16 x 16 inputs and a BERT
    tokenizer over a 16-token vocabulary (its decoder start token [DEC], as BLIP's)."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    out.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *CAPTION_WORDS]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(out / "vocab.txt"), bos_token="[DEC]", model_max_length=32)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 16, "width": 16}), tokenizer=tokenizer
    )
    small = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = BlipConfig(
        text_config={
            **small,
            "vocab_size": len(vocab),
            "intermediate_size": 32,
            "max_position_embeddings": 32,
            "pad_token_id": 0,
            "bos_token_id": vocab.index("[DEC]"),
            "eos_token_id": vocab.index("[SEP]"),
            "sep_token_id": vocab.index("[SEP]"),
        },
        vision_config={**small, "image_size": 16, "patch_size": 8, "intermediate_size": 32},
        projection_dim=16,
        image_text_hidden_size=16,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out
