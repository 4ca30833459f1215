"""Prompt diversification's extra captions from a local captioning model (paper section 3.1:
BLIP writes 5 extra captions per training image; each time an image is used one of its captions
is drawn uniformly).

`data.captioner` names a transformers image-to-text model saved at a local path (nothing is
downloaded). The prepare stage captions every planned row (members, non-members and shadow rows
alike, so no split is told apart by how it was captioned) and appends the generated captions to
the row's own: they land in `rows.parquet` and, for a latent model, in the encoded text table.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch

from raydefense.config import CaptionerConfig
from raydefense.data.plan import Plan
from raydefense.errors import DataError
from raydefense.seeding import STREAM_CAPTION, derive_seed


def load_captioner(cfg: CaptionerConfig, device: str = "cpu") -> tuple[Any, Any]:
    """(model, processor) from `cfg.path` (a save_pretrained directory), model in eval mode.

    Raises:
        DataError: the path is not a directory, or holds no loadable image-to-text model and
            processor (one line naming the path and what was missing).
    """
    if not os.path.isdir(cfg.path):
        raise DataError(
            f"data.captioner.path={cfg.path!r} is not a directory; save a captioning model "
            "and its processor there (save_pretrained), e.g. "
            "Salesforce/blip-image-captioning-base, and give its local path"
        )
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor: Any = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            cfg.path, local_files_only=True
        )
        model: Any = AutoModelForImageTextToText.from_pretrained(cfg.path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"data.captioner.path={cfg.path!r} holds no loadable image-to-text model and "
            f"processor ({first:.160}); save both there with save_pretrained"
        ) from None
    return model.to(device).eval(), processor


def _pil(chw: np.ndarray) -> Any:
    """uint8 [C, H, W] (C = 1 or 3) -> an RGB PIL image."""
    from PIL import Image

    hwc = np.repeat(chw, 3, axis=0) if chw.shape[0] == 1 else chw
    return Image.fromarray(np.ascontiguousarray(hwc.transpose(1, 2, 0)), mode="RGB")


@torch.no_grad()
def generate_captions(
    model: Any,
    processor: Any,
    images: np.ndarray,
    row_ids: np.ndarray,
    cfg: CaptionerConfig,
    seed: int,
) -> list[list[str]]:
    """`cfg.num_captions` sampled captions per image.

    images: uint8 [N, C, H, W] in [0, 255] (C = 1 or 3); row_ids: [N] the rows' pool indices.
    Each row is captioned alone, with the torch RNG seeded from (seed, row id), so a row's
    captions do not depend on which other rows are planned or in what order; the global RNG is
    restored afterwards. Returns N lists of stripped strings.
    """
    device = next(model.parameters()).device
    out: list[list[str]] = []
    for chw, row in zip(images, row_ids):
        inputs = processor(
            images=_pil(chw),
            **({"text": cfg.prompt} if cfg.prompt else {}),
            return_tensors="pt",
        ).to(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, int(row), STREAM_CAPTION))
            ids = model.generate(
                **inputs,
                do_sample=True,
                top_p=cfg.top_p,
                max_new_tokens=cfg.max_new_tokens,
                num_return_sequences=cfg.num_captions,
            )
        out.append([t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)])
    return out


def with_generated_captions(plan: Plan, cfg: CaptionerConfig, seed: int, device: str) -> Plan:
    """`plan` with `cfg.num_captions` generated captions appended to every row's captions (a
    plan without captions gets the generated ones alone: the first then stands as the
    original)."""
    model, processor = load_captioner(cfg, device)
    generated = generate_captions(model, processor, plan.images, plan.row_id, cfg, seed)
    own = plan.captions or [[] for _ in generated]
    return dataclasses.replace(plan, captions=[list(a) + b for a, b in zip(own, generated)])
