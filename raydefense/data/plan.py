"""The split plan: members / non-members, K disjoint member shards, calibration / test parts,
content hashes, and the membership matrix (models x rows) that every later stage obeys.

Invariant 1: shards are disjoint and cover the members; members and non-members are disjoint, by
index and by content hash (SHA-256 of the uint8 pixels). Invariant 2: the membership matrix is
written once here and is the single source of truth for which rows a model may read.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa

from raydefense.config import DataConfig
from raydefense.data.sources import ImagePool
from raydefense.errors import DataError, SplitOverlapError
from raydefense.seeding import STREAM_SPLIT, derive_seed

MEMBER, NONMEMBER = "member", "nonmember"
CALIBRATION, TEST = "calibration", "test"


def teacher_name(shard: int) -> str:
    """Shard index 0..K-1 -> model name teacher_1..teacher_K."""
    return f"teacher_{shard + 1}"


def model_names(num_shards: int) -> list[str]:
    """Rows of the membership matrix: the undefended baseline, then one teacher per shard."""
    return ["baseline"] + [teacher_name(k) for k in range(num_shards)]


def content_hash(image_u8: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image_u8).tobytes()).hexdigest()


@dataclass
class Plan:
    """A materialised split. Arrays are aligned: one entry per selected row.

    row_id: [R] int64, index into the source pool. split: [R] MEMBER/NONMEMBER. shard: [R] int,
    0..K-1 for members, -1 for non-members. part: [R] CALIBRATION/TEST. images: [R, C, H, W] uint8.
    membership: [M, R] bool, M = 1 + K models (see model_names).
    """

    row_id: np.ndarray
    hash: list[str]
    split: np.ndarray
    shard: np.ndarray
    part: np.ndarray
    label: np.ndarray
    images: np.ndarray
    models: list[str]
    membership: np.ndarray
    duplicates_dropped: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def num_shards(self) -> int:
        return len(self.models) - 1

    def summary(self) -> dict:
        members = self.split == MEMBER
        return {
            "num_rows": int(len(self.row_id)),
            "num_members": int(members.sum()),
            "num_nonmembers": int((~members).sum()),
            "shard_sizes": [int((self.shard == k).sum()) for k in range(self.num_shards)],
            "calibration": {s: int(((self.split == s) & (self.part == CALIBRATION)).sum())
                            for s in (MEMBER, NONMEMBER)},
            "test": {s: int(((self.split == s) & (self.part == TEST)).sum())
                     for s in (MEMBER, NONMEMBER)},
            "models": self.models,
            "image_shape": list(self.images.shape[1:]),
            "duplicates_dropped": self.duplicates_dropped,
            **self.meta,
        }

    def to_table(self) -> pa.Table:
        """The rows table written as Parquet (image = raw uint8 bytes, C*H*W per row)."""
        flat = self.images.reshape(len(self.images), -1)
        return pa.table({
            "row_id": pa.array(self.row_id, pa.int64()),
            "hash": pa.array(self.hash, pa.string()),
            "split": pa.array(self.split.tolist(), pa.string()),
            "shard": pa.array(self.shard, pa.int16()),
            "part": pa.array(self.part.tolist(), pa.string()),
            "label": pa.array(self.label, pa.int64()),
            "image": pa.array([r.tobytes() for r in flat], pa.binary(flat.shape[1])),
        })

    def membership_table(self) -> pa.Table:
        cols = {"row_id": pa.array(self.row_id, pa.int64())}
        cols.update({m: pa.array(self.membership[i]) for i, m in enumerate(self.models)})
        return pa.table(cols)


def _load_split_file(path: str, pool_size: int) -> tuple[np.ndarray, np.ndarray]:
    """SecMI/PIA `*_train_ratio0.5.npz`: mia_train_idxs = members, mia_eval_idxs = non-members."""
    try:
        with np.load(path) as z:
            members, nonmembers = np.asarray(z["mia_train_idxs"]), np.asarray(z["mia_eval_idxs"])
    except FileNotFoundError:
        raise DataError(f"data.split_file {path!r} does not exist") from None
    except (KeyError, ValueError, OSError) as e:
        raise DataError(f"data.split_file {path!r} is not a SecMI/PIA split file "
                        f"(needs mia_train_idxs and mia_eval_idxs): {e}") from None
    top = max(members.max(initial=-1), nonmembers.max(initial=-1))
    if top >= pool_size:
        raise DataError(f"data.split_file {path!r} indexes row {top} but the dataset has only "
                        f"{pool_size} images; check data.source / data.root")
    if np.intersect1d(members, nonmembers).size:
        raise SplitOverlapError(f"data.split_file {path!r} lists rows as both member and "
                                "non-member")
    return members.astype(np.int64), nonmembers.astype(np.int64)


def _take(pool_idx: np.ndarray, n: Optional[int], what: str, rng: np.random.Generator,
          shuffle: bool) -> np.ndarray:
    idx = rng.permutation(pool_idx) if shuffle else pool_idx
    if n is None:
        return idx
    if n > len(idx):
        raise DataError(f"data.num_{what} = {n} but only {len(idx)} {what} are available; "
                        f"lower data.num_{what}")
    return idx[:n]


def _assign_parts(n: int, frac: float) -> np.ndarray:
    n_cal = int(round(n * frac))
    if n > 1:
        n_cal = min(max(n_cal, 1), n - 1)
    return np.array([CALIBRATION] * n_cal + [TEST] * (n - n_cal), dtype=object)


def make_plan(pool: ImagePool, cfg: DataConfig, seed: int) -> Plan:
    """Split the pool (seeded; deterministic for a given seed and config).

    Raises:
        SplitOverlapError: duplicate images across splits/shards with on_duplicate='error'.
        DataError: impossible sizes.
    """
    rng = np.random.default_rng(derive_seed(seed, STREAM_SPLIT))
    n_pool = len(pool.images)
    if cfg.split_file:
        mem_pool, non_pool = _load_split_file(cfg.split_file, n_pool)
    else:
        perm = rng.permutation(n_pool)
        mem_pool, non_pool = perm[: n_pool // 2], perm[n_pool // 2:]
    # Split files are already random permutations; subsampling them still needs a seeded draw.
    members = _take(mem_pool, cfg.num_members, "members", rng, shuffle=bool(cfg.split_file))
    nonmembers = _take(non_pool, cfg.num_nonmembers, "nonmembers", rng,
                       shuffle=bool(cfg.split_file))
    k = cfg.num_shards
    if len(members) < 2 * k:
        raise DataError(f"{len(members)} members cannot fill {k} shards with calibration and test "
                        "rows; raise data.num_members or lower data.num_shards")

    shard_of_member = np.empty(len(members), dtype=np.int64)
    for s, chunk in enumerate(np.array_split(rng.permutation(len(members)), k)):
        shard_of_member[chunk] = s

    row_id = np.concatenate([members, nonmembers])
    split = np.array([MEMBER] * len(members) + [NONMEMBER] * len(nonmembers), dtype=object)
    shard = np.concatenate([shard_of_member, -np.ones(len(nonmembers), dtype=np.int64)])
    images = pool.images[row_id]
    hashes = [content_hash(im) for im in images]

    keep, dropped = _check_duplicates(hashes, split, shard, cfg.on_duplicate)
    row_id, split, shard, images = row_id[keep], split[keep], shard[keep], images[keep]
    hashes = [hashes[i] for i in np.flatnonzero(keep)]

    # Calibration/test parts, stratified per shard (members) and over the non-members.
    part = np.empty(len(row_id), dtype=object)
    groups = [np.flatnonzero(shard == s) for s in range(k)] + [np.flatnonzero(split == NONMEMBER)]
    for g in groups:
        part[g] = _assign_parts(len(g), cfg.calibration_fraction)

    models = model_names(k)
    membership = np.zeros((len(models), len(row_id)), dtype=bool)
    membership[0] = split == MEMBER
    for s in range(k):
        membership[1 + s] = shard == s
    labels = pool.labels[row_id] if pool.labels is not None else -np.ones(len(row_id), np.int64)
    plan = Plan(row_id=row_id, hash=hashes, split=split, shard=shard, part=part, label=labels,
                images=images, models=models, membership=membership, duplicates_dropped=dropped,
                meta={"source": pool.name, "split_file": cfg.split_file})
    validate_plan(plan)
    return plan


def _check_duplicates(hashes: list[str], split: np.ndarray, shard: np.ndarray,
                      on_duplicate: str) -> tuple[np.ndarray, int]:
    """Rows whose content appears in more than one (split, shard) group break invariant 1.

    Returns a keep mask and the number of rows dropped (on_duplicate='drop': every copy of a
    conflicting image goes; a repeat inside one group keeps its first copy).
    """
    where: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        where[h].append(i)
    keep = np.ones(len(hashes), dtype=bool)
    conflicts = 0
    for rows in where.values():
        if len(rows) < 2:
            continue
        groups = {(split[i], int(shard[i])) for i in rows}
        if len(groups) > 1:
            conflicts += 1
            keep[rows] = False
        else:
            keep[rows[1:]] = False
    dropped = int((~keep).sum())
    if dropped and on_duplicate == "error":
        raise SplitOverlapError(
            f"{dropped} duplicate images ({conflicts} across splits or shards) found by content "
            "hash; set data.on_duplicate=drop to drop them")
    return keep, dropped


def validate_plan(plan: Plan) -> None:
    """Check invariants 1-2 on a plan (also run on a plan read back from storage)."""
    members = plan.split == MEMBER
    if len(set(plan.row_id.tolist())) != len(plan.row_id):
        raise SplitOverlapError("a source row appears twice in the plan")
    mem_h = {h for h, m in zip(plan.hash, members) if m}
    non_h = {h for h, m in zip(plan.hash, members) if not m}
    if mem_h & non_h:
        raise SplitOverlapError(f"{len(mem_h & non_h)} images are both member and non-member")
    teachers = plan.membership[1:]
    if (teachers.sum(axis=0) > 1).any():
        raise SplitOverlapError("member shards overlap: a row belongs to two teachers")
    if not np.array_equal(teachers.any(axis=0), members):
        raise SplitOverlapError("member shards do not cover exactly the members")
    if not np.array_equal(plan.membership[0], members):
        raise SplitOverlapError("the baseline must train on exactly the members")
    shard_hashes = [{h for h, s in zip(plan.hash, plan.shard) if s == k}
                    for k in range(plan.num_shards)]
    for a in range(plan.num_shards):
        for b in range(a + 1, plan.num_shards):
            if shard_hashes[a] & shard_hashes[b]:
                raise SplitOverlapError(f"shards {a + 1} and {b + 1} share image content")


def plan_from_tables(rows: pa.Table, membership: pa.Table, image_shape: list[int]) -> Plan:
    """Rebuild a Plan from the Parquet tables written by `prepare` (and re-validate it)."""
    d = rows.to_pydict()
    images = np.frombuffer(b"".join(d["image"]), dtype=np.uint8).reshape(-1, *image_shape)
    models = [c for c in membership.column_names if c != "row_id"]
    if membership.column("row_id").to_pylist() != d["row_id"]:
        raise SplitOverlapError("membership matrix rows do not match the rows table")
    plan = Plan(row_id=np.array(d["row_id"], np.int64), hash=d["hash"],
                split=np.array(d["split"], dtype=object), shard=np.array(d["shard"], np.int64),
                part=np.array(d["part"], dtype=object), label=np.array(d["label"], np.int64),
                images=images.copy(), models=models,
                membership=np.stack([membership.column(m).to_numpy(zero_copy_only=False)
                                     for m in models]).astype(bool))
    validate_plan(plan)
    return plan
