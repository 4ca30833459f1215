"""Encode a latent experiment's rows once (`prepare`): VAE posterior moments per image and the
text embedding of every caption (see `raydefense.data.encoded`)."""

from __future__ import annotations

import numpy as np
import torch

from raydefense.config import ExperimentConfig
from raydefense.data.encoded import write_encoded
from raydefense.data.plan import Plan
from raydefense.data.pool import to_model_range
from raydefense.diffusion.backbones.sd import SDCodec
from raydefense.errors import DataError
from raydefense.storage import Storage

ENCODE_BATCH = 32


def encode_plan_rows(cfg: ExperimentConfig, plan: Plan, storage: Storage) -> dict[str, float]:
    """Encode every row of `plan` with the pipeline's frozen VAE and text encoder and write the
    encoded tables. Returns counts for the log: rows, captions."""
    captions = plan.captions
    if captions is None:
        raise DataError(
            f"data.source={cfg.data.source!r} gives no captions; a text-conditioned model "
            "(model.kind=sd) needs them: set data.caption_column (parquet), add a metadata.jsonl "
            "(imagefolder) or use a captioned source such as digits_captioned"
        )
    if plan.images.shape[1] != 3:
        raise DataError(
            f"model.kind=sd encodes RGB images but data.source={cfg.data.source!r} gives "
            f"{plan.images.shape[1]}-channel ones: use an RGB source"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    codec = SDCodec(cfg.model, device)
    means, stds, embs = [], [], []
    for s in range(0, len(plan.row_id), ENCODE_BATCH):
        x = torch.from_numpy(to_model_range(plan.images[s : s + ENCODE_BATCH]))
        m, sd = codec.latent_moments(x)
        means.append(m.cpu())
        stds.append(sd.cpu())
    flat = [c for caps in captions for c in caps]
    vecs = torch.cat(
        [codec.embed(flat[s : s + ENCODE_BATCH]).cpu() for s in range(0, len(flat), ENCODE_BATCH)]
    )
    bounds = np.cumsum([0] + [len(c) for c in captions])
    embs = [vecs[bounds[i] : bounds[i + 1]] for i in range(len(captions))]
    null = codec.embed([""])[0].cpu()
    write_encoded(storage, plan.row_id, torch.cat(means), torch.cat(stds), captions, embs, null)
    return {"rows": float(len(plan.row_id)), "captions": float(len(flat))}
