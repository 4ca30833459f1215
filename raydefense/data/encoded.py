"""Encoded rows of a latent, text-conditioned experiment: what its models train and are attacked on.

The VAE and the text encoder are frozen, so `prepare` encodes every plan row once: the scaled
latent posterior's mean and std per image (a latent x0 is mean + std * N(0, I), drawn afresh at
every use, as diffusers' training does) and the CLIP embedding of every caption of the image,
plus the empty prompt's (classifier-free guidance, CLiD). Fits, the soft-target labeller and
scoring read these tables instead of running the VAE and the text encoder again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa
import torch

from raydefense.data.examples import LatentData
from raydefense.layout import ENCODED_JSON, LATENTS, TEXT
from raydefense.storage import Storage

NULL_ROW = -1  # the empty prompt's row_id in the text table


@dataclass
class EncodedRows:
    """Aligned with `row_id` [R] int64 (any order; `positions` maps row ids to positions).

    mean, std: [R, C, h, w] float32, the scaled latent posterior. emb: [R, K, L, D] float32, the
    embeddings of each row's captions (K = the most captions any row has; row r's valid ones are
    0..n_captions[r]-1, 0 = its original caption). null: [L, D], the empty prompt's embedding.
    """

    row_id: np.ndarray
    mean: torch.Tensor
    std: torch.Tensor
    emb: torch.Tensor
    n_captions: torch.Tensor
    null: torch.Tensor
    captions: Optional[list[list[str]]] = None  # each row's caption strings (0 = original)
    # row id -> position, built on first use (scoring looks rows up batch after batch)
    _pos: Optional[dict[int, int]] = field(default=None, repr=False, compare=False)

    def positions(self, row_ids: np.ndarray) -> np.ndarray:
        """Positions of `row_ids` [B] in this table -> [B] int64 (KeyError on an unknown row)."""
        if self._pos is None:
            self._pos = {int(r): i for i, r in enumerate(self.row_id)}
        return np.array([self._pos[int(r)] for r in row_ids], dtype=np.int64)

    def take(self, row_ids: np.ndarray) -> EncodedRows:
        """The rows `row_ids`, in that order."""
        idx = torch.from_numpy(self.positions(row_ids))
        return EncodedRows(
            row_id=np.asarray(row_ids, dtype=np.int64),
            mean=self.mean[idx],
            std=self.std[idx],
            emb=self.emb[idx],
            n_captions=self.n_captions[idx],
            null=self.null,
            captions=None if self.captions is None else [self.captions[int(i)] for i in idx],
        )

    def sample_latents(self, row_ids: np.ndarray, seed: int, stream: int) -> torch.Tensor:
        """One latent x0 per row, the posterior noise seeded per (seed, row, stream): a row's
        latent does not depend on its batch. -> [B, C, h, w]."""
        idx = torch.from_numpy(self.positions(row_ids))
        noise = np.stack(
            [
                np.random.default_rng([seed, int(r), stream, 0x1A7]).standard_normal(
                    tuple(self.mean.shape[1:]), dtype=np.float32
                )
                for r in row_ids
            ]
        )
        return self.mean[idx] + self.std[idx] * torch.from_numpy(noise)


def _bytes(arr: torch.Tensor) -> list[bytes]:
    flat = np.ascontiguousarray(arr.detach().cpu().numpy(), dtype=np.float32)
    return [r.tobytes() for r in flat.reshape(len(flat), -1)]


def write_encoded(
    storage: Storage,
    row_id: np.ndarray,
    mean: torch.Tensor,
    std: torch.Tensor,
    captions: list[list[str]],
    embeddings: list[torch.Tensor],
    null: torch.Tensor,
) -> None:
    """Write the latents and text tables. embeddings[r]: [len(captions[r]), L, D]."""
    storage.write_table(
        LATENTS,
        pa.table(
            {
                "row_id": pa.array(row_id, pa.int64()),
                "mean": pa.array(_bytes(mean), pa.binary()),
                "std": pa.array(_bytes(std), pa.binary()),
            }
        ),
    )
    rows, idx, text, emb = [NULL_ROW], [0], [""], _bytes(null[None])
    for r, caps, e in zip(row_id.tolist(), captions, embeddings):
        rows += [r] * len(caps)
        idx += list(range(len(caps)))
        text += caps
        emb += _bytes(e)
    storage.write_table(
        TEXT,
        pa.table(
            {
                "row_id": pa.array(rows, pa.int64()),
                "caption_index": pa.array(idx, pa.int32()),
                "caption": pa.array(text, pa.string()),
                "embedding": pa.array(emb, pa.binary()),
            }
        ),
    )
    storage.write_json(
        ENCODED_JSON,
        {"latent_shape": list(mean.shape[1:]), "embedding_shape": list(null.shape)},
    )


def read_encoded(storage: Storage) -> EncodedRows:
    """The tables write_encoded wrote (every row of the plan)."""
    meta = storage.read_json(ENCODED_JSON)
    lshape, eshape = tuple(meta["latent_shape"]), tuple(meta["embedding_shape"])
    lat = storage.read_table(LATENTS)

    def floats(values: list[bytes], shape: tuple[int, ...]) -> torch.Tensor:
        raw = np.frombuffer(b"".join(values), dtype=np.float32).reshape(-1, *shape)
        return torch.from_numpy(raw.copy())

    row_id = lat.column("row_id").to_numpy().astype(np.int64)
    text = storage.read_table(TEXT)
    t_rows = text.column("row_id").to_numpy()
    t_idx = text.column("caption_index").to_numpy()
    t_emb = floats(text.column("embedding").to_pylist(), eshape)
    null = t_emb[int(np.flatnonzero(t_rows == NULL_ROW)[0])]
    pos = {int(r): i for i, r in enumerate(row_id)}
    n = np.zeros(len(row_id), dtype=np.int64)
    for r in t_rows[t_rows != NULL_ROW].tolist():
        n[pos[r]] += 1
    emb = torch.zeros((len(row_id), max(int(n.max(initial=1)), 1), *eshape))
    texts = text.column("caption").to_pylist()
    captions: list[list[str]] = [[""] * int(k) for k in n]
    for j in np.flatnonzero(t_rows != NULL_ROW).tolist():
        emb[pos[int(t_rows[j])], int(t_idx[j])] = t_emb[j]
        captions[pos[int(t_rows[j])]][int(t_idx[j])] = texts[j]
    return EncodedRows(
        row_id=row_id,
        mean=floats(lat.column("mean").to_pylist(), lshape),
        std=floats(lat.column("std").to_pylist(), lshape),
        emb=emb,
        n_captions=torch.from_numpy(n),
        null=null,
        captions=captions,
    )


def model_training_latents(
    encoded: EncodedRows, row_ids: np.ndarray, diversify: bool
) -> LatentData:
    """A latent model's training data: the encoded rows `row_ids` (the rows the membership
    matrix assigns it, invariant 2)."""
    enc = encoded.take(row_ids)
    if bool((enc.n_captions < 1).any()):
        raise ValueError("every training row needs at least one caption")
    return LatentData(enc.mean, enc.std, enc.emb, enc.n_captions, diversify)
