"""Members and non-members given as folders (`data.member_roots`, `data.nonmember_root`) instead of
one dataset plus a split: what an audit of a model trained elsewhere usually has."""

from __future__ import annotations

from typing import Optional

import numpy as np

from raydefense.config import DataConfig
from raydefense.data.pool import DATASETS, ImagePool
from raydefense.errors import DataError

# (member pool indices, non-member pool indices, each member's shard or None)
GivenSplit = tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]


def load_pool(cfg: DataConfig) -> tuple[ImagePool, Optional[GivenSplit]]:
    """The pool `data.*` describes, and the split that comes with it: None for one dataset
    (`data.root`; a split file or a seeded draw splits it), else the member folders then the
    non-member folder concatenated in that order, members first. Several member folders are
    the shards, in order.

    Raises:
        DataError: folders whose images differ in shape, or captions / labels in some only.
    """
    if cfg.member_roots is None or cfg.nonmember_root is None:
        return DATASETS.get(cfg.source)(cfg), None
    roots = [*cfg.member_roots, cfg.nonmember_root]
    loader = DATASETS.get(cfg.source)
    pools = [
        loader(cfg.model_copy(update={"root": r, "member_roots": None, "nonmember_root": None}))
        for r in roots
    ]
    shapes = {p.images.shape[1:] for p in pools}
    if len(shapes) > 1:
        raise DataError(
            f"data.member_roots / nonmember_root hold images of different shapes "
            f"{sorted(shapes)}; set data.resolution to bring them to one size"
        )
    for what, present in (
        ("labels", [p.labels is not None for p in pools]),
        ("captions", [p.captions is not None for p in pools]),
    ):
        if any(present) and not all(present):
            missing = [r for r, ok in zip(roots, present) if not ok]
            raise DataError(
                f"data.member_roots / nonmember_root: {what} in some folders only (none in "
                f"{missing[0]!r}); give every folder the same metadata"
            )
    sizes = [len(p.images) for p in pools]
    starts = np.cumsum([0, *sizes])
    members = np.arange(starts[len(cfg.member_roots)], dtype=np.int64)
    nonmembers = np.arange(starts[-2], starts[-1], dtype=np.int64)
    shards = (
        np.concatenate([np.full(n, k, np.int64) for k, n in enumerate(sizes[:-1])])
        if len(cfg.member_roots) > 1
        else None
    )
    labels = None if pools[0].labels is None else np.concatenate([p.labels for p in pools])
    captions = None if pools[0].captions is None else [c for p in pools for c in p.captions or []]
    pool = ImagePool(
        images=np.concatenate([p.images for p in pools]),
        labels=labels,
        name=pools[0].name,
        captions=captions,
    )
    return pool, (members, nonmembers, shards)
