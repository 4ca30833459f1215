"""The split plan: members / non-members, K disjoint member shards, calibration / test parts,
content hashes, and the membership matrix (models x rows) that every later stage obeys.

Invariant 1: shards are disjoint and cover the members; members and non-members are disjoint, by
index and by content hash (SHA-256 of the uint8 pixels). Invariant 2: the membership matrix is
written once here and is the single source of truth for which rows a model may read.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from raydefense.config import DataConfig
from raydefense.data.pool import ImagePool, check_caption_lists, image_column
from raydefense.errors import DataError, SplitOverlapError
from raydefense.roster import (
    ONLINE,
    SHADOW_ROLES,
    STUDENT,
    is_teacher,
    is_variant,
    model_names,
    online_name,
    parse_draw,
    parse_online,
    parse_shadow,
    shadow_name,
)
from raydefense.seeding import STREAM_ONLINE, STREAM_SHADOW, STREAM_SPLIT, derive_seed

MEMBER, NONMEMBER, SHADOW = "member", "nonmember", "shadow"
CALIBRATION, TEST = "calibration", "test"


def content_hash(image_u8: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image_u8).tobytes()).hexdigest()


def unused_rows(
    pool_images: np.ndarray, plan_row_ids: np.ndarray, plan_hashes: set[str]
) -> np.ndarray:
    """Pool indices outside the plan, dropping any whose content copies a plan row (or an
    earlier unused row): data no model trains on and no attack audits.

    pool_images: [N, C, H, W] uint8. Returns [n] int64, ascending."""
    seen = set(plan_hashes)
    out = []
    for i in np.setdiff1d(np.arange(len(pool_images)), plan_row_ids):
        h = content_hash(pool_images[i])
        if h not in seen:
            seen.add(h)
            out.append(int(i))
    return np.asarray(out, dtype=np.int64)


@dataclass
class Plan:
    """A materialised split. Arrays are aligned: one entry per selected row.

    row_id: [R] int64, index into the source pool. split: [R] MEMBER/NONMEMBER/SHADOW.
    shard: [R] int, 0..K-1 for members, -1 otherwise. part: [R] CALIBRATION/TEST (SHADOW for
    shadow rows). images: [R, C, H, W] uint8. membership: [M, R] bool, one row per trained model
    (see model_names). shadow_train / shadow_heldout: [S, R] bool per shadow draw j, the rows its
    shadow models learn from (split into K shards for its teachers) and the rows drawn with them
    that none of them trains on (their non-members when an attack learns from them).
    online_train: [O, R] bool per online draw j (online LiRA's IN/OUT references): the audited
    rows (members and non-members) its models learn from, each audited row in exactly
    floor(O / 2) draws (LiRA's balanced assignment).
    captions: None, or per row its pool image's captions (index 0 = the original caption).
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
    shadow_heldout: Optional[np.ndarray] = None
    shadow_train: Optional[np.ndarray] = None
    online_train: Optional[np.ndarray] = None
    duplicates_dropped: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    captions: Optional[list[list[str]]] = None

    def __post_init__(self) -> None:
        if self.captions is not None:
            check_caption_lists(self.captions, len(self.row_id), "Plan.captions")
        if self.shadow_heldout is None:
            self.shadow_heldout = np.zeros((0, len(self.row_id)), dtype=bool)
        if self.shadow_train is None:
            self.shadow_train = np.zeros_like(self.shadow_heldout)
        if self.online_train is None:
            self.online_train = np.zeros((0, len(self.row_id)), dtype=bool)

    @property
    def teachers(self) -> list[str]:
        return [m for m in self.models if is_teacher(m)]

    @property
    def shadows(self) -> list[str]:
        """The shadow models of the membership matrix (shadow students are not rows)."""
        return [m for m in self.models if parse_shadow(m) is not None]

    @property
    def online_models(self) -> list[str]:
        """Online LiRA's reference models of the membership matrix (students are not rows)."""
        return [m for m in self.models if parse_online(m) is not None]

    @property
    def num_online_draws(self) -> int:
        assert self.online_train is not None  # set by __post_init__
        return len(self.online_train)

    @property
    def num_shadow_draws(self) -> int:
        assert self.shadow_heldout is not None  # set by __post_init__
        return len(self.shadow_heldout)

    def members_of(self, model: str) -> np.ndarray:
        """Bool [R]: the images `model` learned from: its membership row; the student's are all
        members, shadow_j_student's (online_j_student's) are draw j's training rows (students
        distil from them)."""
        if model == STUDENT:
            members: np.ndarray = self.split == MEMBER
            return members
        draw = parse_draw(model)
        if draw is not None and draw[2] == "student":
            assert self.shadow_train is not None and self.online_train is not None
            train: np.ndarray = (self.online_train if draw[0] == ONLINE else self.shadow_train)[
                draw[1]
            ]
            return train
        return self.rows_of(model)

    def shadow_nonmembers(self, model: str) -> np.ndarray:
        """Bool [R]: the held-out rows of a shadow model's draw."""
        shadow = parse_shadow(model)
        if shadow is None:
            raise KeyError(f"{model!r} is not a shadow model")
        assert self.shadow_heldout is not None  # set by __post_init__
        heldout: np.ndarray = self.shadow_heldout[shadow[0]]
        return heldout

    @property
    def num_shards(self) -> int:
        return len(self.teachers)

    def population(self) -> np.ndarray:
        """Bool [R]: the attacker's population: rows no audit scores (the shadow split) that no
        model trains on (held out by every shadow draw). What reference attacks compare with
        (RMIA's population samples z, the quantile regressor's training rows)."""
        assert self.shadow_train is not None  # set by __post_init__
        trained = self.membership.any(axis=0) | self.shadow_train.any(axis=0)
        rows: np.ndarray = (self.split == SHADOW) & ~trained
        return rows

    def validation_rows(self, n: int, model: str) -> tuple[np.ndarray, str]:
        """The n rows on which `model`'s fit measures held-out eps-MSE (early stopping, ASHA):
        rows no audit scores and `model` does not train on (the shadow split), shadow-trained
        rows before population rows, so a target's selection never reads an audited row nor the
        attacker's population. Without n such rows (no shadow draw), the first n calibration
        non-members (the rule before #27; they also set thresholds).

        Returns (bool mask [R], rule: "outside_audit" | "calibration_nonmembers")."""
        outside = (self.split == SHADOW) & ~self.members_of(model)
        pop = self.population()
        order = np.concatenate([np.flatnonzero(outside & ~pop), np.flatnonzero(outside & pop)])
        rule = "outside_audit"
        if len(order) < n:
            order = np.flatnonzero((self.split == NONMEMBER) & (self.part == CALIBRATION))
            rule = "calibration_nonmembers"
        out = np.zeros(len(self.row_id), dtype=bool)
        out[order[:n]] = True
        return out, rule

    def rows_of(self, model: str) -> np.ndarray:
        """Bool [R]: the rows `model` trains on (its row of the membership matrix)."""
        rows: np.ndarray = self.membership[self.models.index(model)]
        return rows

    def summary(self) -> dict[str, Any]:
        members = self.split == MEMBER
        return {
            "num_rows": int(len(self.row_id)),
            "num_members": int(members.sum()),
            "num_nonmembers": int((self.split == NONMEMBER).sum()),
            "num_shadow_rows": int((self.split == SHADOW).sum()),
            "shard_sizes": [int((self.shard == k).sum()) for k in range(self.num_shards)],
            "calibration": {
                s: int(((self.split == s) & (self.part == CALIBRATION)).sum())
                for s in (MEMBER, NONMEMBER)
            },
            "test": {
                s: int(((self.split == s) & (self.part == TEST)).sum()) for s in (MEMBER, NONMEMBER)
            },
            "models": self.models,
            "image_shape": list(self.images.shape[1:]),
            "duplicates_dropped": self.duplicates_dropped,
            **self.meta,
            **(
                {"captions_per_image": [min(map(len, self.captions)), max(map(len, self.captions))]}
                if self.captions
                else {}
            ),
        }

    def to_table(self) -> pa.Table:
        """The rows table written as Parquet (image = raw uint8 bytes, C*H*W per row; captions =
        list<string>, a column only when the plan has captions)."""
        cols = {
            "row_id": pa.array(self.row_id, pa.int64()),
            "hash": pa.array(self.hash, pa.string()),
            "split": pa.array(self.split.tolist(), pa.string()),
            "shard": pa.array(self.shard, pa.int16()),
            "part": pa.array(self.part.tolist(), pa.string()),
            "label": pa.array(self.label, pa.int64()),
            "image": image_column(self.images),
        }
        if self.captions is not None:
            cols["captions"] = pa.array(self.captions, pa.list_(pa.string()))
        return pa.table(cols)

    def membership_table(self) -> pa.Table:
        cols = {"row_id": pa.array(self.row_id, pa.int64())}
        cols.update({m: pa.array(self.membership[i]) for i, m in enumerate(self.models)})
        return pa.table(cols)

    def shadow_draws_table(self) -> pa.Table:
        """row_id + per shadow draw `shadow_<j>:train` and `shadow_<j>:heldout` bool columns,
        per online draw `online_<j>:train`."""
        cols = {"row_id": pa.array(self.row_id, pa.int64())}
        assert self.shadow_train is not None and self.shadow_heldout is not None  # __post_init__
        assert self.online_train is not None
        for j in range(self.num_shadow_draws):
            cols[f"{shadow_name(j)}:train"] = pa.array(self.shadow_train[j])
            cols[f"{shadow_name(j)}:heldout"] = pa.array(self.shadow_heldout[j])
        for j in range(self.num_online_draws):
            cols[f"{online_name(j)}:train"] = pa.array(self.online_train[j])
        return pa.table(cols)


def _load_split_file(
    path: str, pool_size: int
) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """SecMI/PIA `*_train_ratio0.5.npz`: mia_train_idxs = members, mia_eval_idxs = non-members;
    optionally member_shards (raydefense's extension): each member's shard 0..K-1, aligned with
    mia_train_idxs, for models trained on known shards (an audit's teachers)."""
    try:
        with np.load(path) as z:
            members, nonmembers = np.asarray(z["mia_train_idxs"]), np.asarray(z["mia_eval_idxs"])
            shards = np.asarray(z["member_shards"]) if "member_shards" in z.files else None
    except FileNotFoundError:
        raise DataError(f"data.split_file {path!r} does not exist") from None
    except (KeyError, ValueError, OSError) as e:
        raise DataError(
            f"data.split_file {path!r} is not a SecMI/PIA split file "
            f"(needs mia_train_idxs and mia_eval_idxs): {e}"
        ) from None
    top = max(members.max(initial=-1), nonmembers.max(initial=-1))
    if top >= pool_size:
        raise DataError(
            f"data.split_file {path!r} indexes row {top} but the dataset has only "
            f"{pool_size} images; check data.source / data.root"
        )
    if np.intersect1d(members, nonmembers).size:
        raise SplitOverlapError(
            f"data.split_file {path!r} lists rows as both member and non-member"
        )
    if shards is not None and (shards.shape != members.shape or (shards.size and shards.min() < 0)):
        raise DataError(
            f"data.split_file {path!r}: member_shards must give one shard index >= 0 per "
            f"member ({members.shape[0]}), got shape {list(shards.shape)}"
        )
    return (
        members.astype(np.int64),
        nonmembers.astype(np.int64),
        None if shards is None else shards.astype(np.int64),
    )


def write_split_file(
    path: str,
    members: np.ndarray,
    nonmembers: np.ndarray,
    ratio: Optional[float] = None,
    member_shards: Optional[np.ndarray] = None,
) -> None:
    """Write a split in the SecMI/PIA `*_train_ratio0.5.npz` format, readable by data.split_file.

    Keys: mia_train_idxs (members) and mia_eval_idxs (non-members), int64 indices into the
    source's canonical order, and ratio (float64; default len(members) / (len(members) +
    len(nonmembers)), 0.5 for the published files); member_shards (int64, aligned with the
    members) when given. The file is written at exactly `path` (no '.npz' is appended); parent
    folders are created.

    Raises:
        DataError: indices that are not 1-D non-negative integers.
        SplitOverlapError: a row listed as both member and non-member.
    """
    arrays = []
    for what, idx in (("members", members), ("nonmembers", nonmembers)):
        a = np.asarray(idx)
        if (
            a.ndim != 1
            or not (a.size == 0 or np.issubdtype(a.dtype, np.integer))
            or (a.size and a.min() < 0)
        ):
            raise DataError(
                f"write_split_file: {what} must be a 1-D array of non-negative "
                f"row indices (got {a.dtype} {list(a.shape)})"
            )
        arrays.append(a.astype(np.int64))
    if np.intersect1d(arrays[0], arrays[1]).size:
        raise SplitOverlapError("write_split_file: some rows are both member and non-member")
    total = len(arrays[0]) + len(arrays[1])
    if ratio is None:
        ratio = len(arrays[0]) / total if total else 0.0
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    extra: dict[str, Any] = {}
    if member_shards is not None:
        extra["member_shards"] = np.asarray(member_shards, dtype=np.int64)
        if extra["member_shards"].shape != arrays[0].shape:
            raise DataError("write_split_file: member_shards must align with members")
    with open(path, "wb") as f:
        np.savez(
            f,
            mia_train_idxs=arrays[0],
            mia_eval_idxs=arrays[1],
            ratio=np.float64(ratio),
            **extra,
        )


def _take(
    pool_idx: np.ndarray, n: Optional[int], what: str, rng: np.random.Generator, shuffle: bool
) -> np.ndarray:
    idx = rng.permutation(pool_idx) if shuffle else pool_idx
    if n is None:
        return idx
    if n > len(idx):
        raise DataError(
            f"data.num_{what} = {n} but only {len(idx)} {what} are available; lower data.num_{what}"
        )
    return idx[:n]


def _assign_parts(n: int, frac: float) -> np.ndarray:
    n_cal = int(round(n * frac))
    if n > 1:
        n_cal = min(max(n_cal, 1), n - 1)
    return np.array([CALIBRATION] * n_cal + [TEST] * (n - n_cal), dtype=object)


def make_plan(
    pool: ImagePool,
    cfg: DataConfig,
    seed: int,
    num_shadows: int = 0,
    shadow_members: Optional[int] = None,
    shadow_roles: tuple[str, ...] = ("baseline",),
    given: Optional[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]] = None,
    num_online: int = 0,
    online_roles: tuple[str, ...] = (),
    variants: tuple[str, ...] = (),
) -> Plan:
    """Split the pool (seeded; deterministic for a given seed and config).

    `given` (raydefense.data.given.load_pool): the members, non-members and member shards that
    came with the pool (member / non-member folders), used like a split file's.

    Shadow draws (num_shadows > 0) each take 2 * shadow_members rows (default: the baseline's
    member count) from the rows no target uses, the first half to train on and the second held
    out; draws may share rows with each other, never with the targets' rows. Per draw the plan
    holds a model for each of `shadow_roles` (SHADOW_ROLES): "baseline" trains on all of the
    draw's training rows, "teacher" (and "student", distilled from them) on K disjoint shards of
    them, like the targets. Draws and shards use their own seed streams, so adding shadows or
    roles leaves the target split (and the other shadows' rows) unchanged.

    Online draws (num_online > 0, online LiRA's references) train on audited rows: each
    audited row goes to exactly floor(num_online / 2) of them (LiRA's balanced assignment), a
    draw holds a model per `online_roles` like a shadow draw; their own seed stream again.

    `variants` (the baseline_<name> targets of `train.variants`) train on the baseline's rows; a
    variant role among the shadow or online roles gives each draw a model on that draw's
    training rows. Their rows come after all others: without variants the plan is unchanged.

    Raises:
        SplitOverlapError: duplicate images across splits/shards with on_duplicate='error'.
        DataError: impossible sizes.
    """
    rng = np.random.default_rng(derive_seed(seed, STREAM_SPLIT))
    n_pool = len(pool.images)
    given_shards: Optional[np.ndarray] = None
    if given is not None:
        mem_pool, non_pool, given_shards = given
    elif cfg.split_file:
        mem_pool, non_pool, given_shards = _load_split_file(cfg.split_file, n_pool)
    else:
        perm = rng.permutation(n_pool)
        mem_pool, non_pool = perm[: n_pool // 2], perm[n_pool // 2 :]
    # Split files are already random permutations; subsampling them still needs a seeded draw.
    shuffle = bool(cfg.split_file) or given is not None
    members = _take(mem_pool, cfg.num_members, "members", rng, shuffle=shuffle)
    nonmembers = _take(non_pool, cfg.num_nonmembers, "nonmembers", rng, shuffle=shuffle)
    k = cfg.num_shards
    if len(members) < 2 * k:
        raise DataError(
            f"{len(members)} members cannot fill {k} shards with calibration and test "
            "rows; raise data.num_members or lower data.num_shards"
        )

    shard_of_member = _member_shards(cfg, members, mem_pool, given_shards, given is not None, rng)

    shadow_rows, shadow_train, shadow_held = _draw_shadows(
        n_pool,
        np.concatenate([members, nonmembers]),
        num_shadows,
        shadow_members or len(members),
        seed,
    )
    row_id = np.concatenate([members, nonmembers, shadow_rows])
    split = np.array(
        [MEMBER] * len(members) + [NONMEMBER] * len(nonmembers) + [SHADOW] * len(shadow_rows),
        dtype=object,
    )
    shard = np.concatenate(
        [shard_of_member, -np.ones(len(nonmembers) + len(shadow_rows), dtype=np.int64)]
    )
    images = pool.images[row_id]
    hashes = [content_hash(im) for im in images]

    keep, dropped = _check_duplicates(hashes, split, shard, cfg.on_duplicate)
    row_id, split, shard, images = row_id[keep], split[keep], shard[keep], images[keep]
    captions = None if pool.captions is None else [list(pool.captions[i]) for i in row_id]
    hashes = [hashes[i] for i in np.flatnonzero(keep)]
    keep_shadow = keep[len(keep) - len(shadow_rows) :]
    shadow_train, shadow_held = shadow_train[:, keep_shadow], shadow_held[:, keep_shadow]

    # Calibration/test parts, stratified per shard (members) and over the non-members.
    part = np.empty(len(row_id), dtype=object)
    groups = [np.flatnonzero(shard == s) for s in range(k)] + [np.flatnonzero(split == NONMEMBER)]
    for g in groups:
        part[g] = _assign_parts(len(g), cfg.calibration_fraction)
    part[split == SHADOW] = SHADOW

    unknown = {r for r in (*shadow_roles, *online_roles) if not is_variant(r)} - set(SHADOW_ROLES)
    unknown |= {v for v in variants if not is_variant(v)}
    if unknown:
        raise ValueError(
            f"unknown shadow roles {sorted(unknown)}; expected {SHADOW_ROLES} or baseline_<name>"
        )
    models = model_names(k, num_shadows, shadow_roles, num_online, online_roles, variants)
    membership = np.zeros((len(models), len(row_id)), dtype=bool)
    membership[0] = split == MEMBER
    for v in variants:
        membership[models.index(v)] = split == MEMBER
    for s in range(k):
        membership[1 + s] = shard == s
    n_target = len(row_id) - shadow_train.shape[1]
    train = np.zeros((num_shadows, len(row_id)), dtype=bool)
    heldout = np.zeros((num_shadows, len(row_id)), dtype=bool)
    train[:, n_target:], heldout[:, n_target:] = shadow_train, shadow_held
    online = _draw_online(split, num_online, seed)
    for j in range(num_shadows):
        name = partial(shadow_name, j)
        _draw_members(membership, models, train[j], k, seed, STREAM_SHADOW, j, name)
    for j in range(num_online):
        name = partial(online_name, j)
        _draw_members(membership, models, online[j], k, seed, STREAM_ONLINE, j, name)
    labels = pool.labels[row_id] if pool.labels is not None else -np.ones(len(row_id), np.int64)
    plan = Plan(
        row_id=row_id,
        hash=hashes,
        split=split,
        shard=shard,
        part=part,
        label=labels,
        images=images,
        models=models,
        membership=membership,
        shadow_heldout=heldout,
        shadow_train=train,
        online_train=online,
        duplicates_dropped=dropped,
        meta={
            "source": pool.name,
            "split_file": cfg.split_file,
            "shadow_roles": list(shadow_roles) if num_shadows else [],
            **({"online_roles": list(online_roles)} if num_online else {}),
            **({"variants": list(variants)} if variants else {}),
        },
        captions=captions,
    )
    validate_plan(plan)
    # With a captioner the extra captions come later (prepare's caption step checks them then).
    if captions is not None and cfg.prompt_diversification and cfg.captioner is None:
        check_captions(cfg, plan, needs_captions=False)
    return plan


def _member_shards(
    cfg: DataConfig,
    members: np.ndarray,
    mem_pool: np.ndarray,
    given_shards: Optional[np.ndarray],
    given_folders: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """Each member's shard ([N] int64): as the split file or the member folders say, else K
    random equal parts (one draw from the split's stream)."""
    k = cfg.num_shards
    shard_of_member = np.empty(len(members), dtype=np.int64)
    if given_shards is not None:  # the split file says which shard each member trained in
        if given_shards.max(initial=-1) + 1 != k:
            where = (
                f"data.member_roots ({len(cfg.member_roots or [])} folders)"
                if given_folders
                else f"data.split_file {cfg.split_file!r}"
            )
            raise DataError(
                f"{where} gives {given_shards.max() + 1} member shards but data.num_shards={k}: "
                f"set data.num_shards={given_shards.max() + 1}"
            )
        shard_by_row = dict(zip(mem_pool.tolist(), given_shards.tolist()))
        shard_of_member[:] = [shard_by_row[int(r)] for r in members]
    else:
        for s, chunk in enumerate(np.array_split(rng.permutation(len(members)), k)):
            shard_of_member[chunk] = s
    return shard_of_member


def _draw_members(
    membership: np.ndarray,
    models: list[str],
    trains_on: np.ndarray,
    k: int,
    seed: int,
    stream: int,
    j: int,
    name: Callable[..., str],
) -> None:
    """A shadow or online draw's rows in the membership matrix: its baseline-like model trains
    on all of `trains_on` ([rows] bool), its teachers on K disjoint shards of them (drawn from
    (stream, j)), a variant's model on all of them too; the models of roles the plan lacks are
    skipped. name(role, shard) -> model."""
    for m in models:
        draw = parse_draw(m)
        if draw is not None and is_variant(draw[2]) and m == name(draw[2]):
            membership[models.index(m)] = trains_on
    if name("baseline") in models:
        membership[models.index(name("baseline"))] = trains_on
    if name("teacher", 0) in models:
        rows = np.flatnonzero(trains_on)
        order = np.random.default_rng(derive_seed(seed, stream, j, 1)).permutation(len(rows))
        for s, chunk in enumerate(np.array_split(order, k)):
            membership[models.index(name("teacher", s)), rows[chunk]] = True


def check_captions(
    cfg: DataConfig,
    pool_or_plan_captions: ImagePool | Plan | list[list[str]] | None,
    needs_captions: bool,
) -> None:
    """Check that the captions suit the config (one-line DataError otherwise).

    `pool_or_plan_captions`: an ImagePool, a Plan (errors then name the row and its pool index),
    or their captions (None = no captions). Errors: `needs_captions` (a text-conditioned model)
    and there are no captions; data.prompt_diversification with no captions, or with an image
    that has only its original caption (the first one is named).
    """
    row_id: Optional[np.ndarray] = None
    if isinstance(pool_or_plan_captions, Plan):
        captions, row_id = pool_or_plan_captions.captions, pool_or_plan_captions.row_id
    elif isinstance(pool_or_plan_captions, ImagePool):
        captions = pool_or_plan_captions.captions
    else:
        captions = pool_or_plan_captions
    if captions is None:
        if needs_captions:
            raise DataError(
                f"data.source={cfg.source!r} gives no captions; a text-conditioned model needs "
                "them: set data.caption_column (parquet), add a metadata.jsonl/metadata.csv with "
                "file_name and text to data.root (imagefolder), or use data.source=digits_captioned"
            )
        if cfg.prompt_diversification:
            raise DataError(
                f"data.prompt_diversification=true but data.source={cfg.source!r} gives no "
                "captions to draw from; set data.caption_column (and extra captions), or set "
                "data.prompt_diversification=false"
            )
        return
    if cfg.prompt_diversification:
        single = next((i for i, caps in enumerate(captions) if len(caps) < 2), None)
        if single is not None:
            where = (
                f"plan row {single} (pool index {int(row_id[single])})"
                if row_id is not None
                else f"pool index {single}"
            )
            caps = captions[single]
            has = f"only its original caption ({caps[0]!r:.60})" if caps else "no caption"
            raise DataError(
                f"data.prompt_diversification=true but {where} has {has}; supply extra "
                "captions (several per image, or data.extra_caption_column), or set "
                "data.prompt_diversification=false"
            )


def _draw_shadows(
    n_pool: int, target_rows: np.ndarray, num_shadows: int, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows for the shadow models, from the pool rows no target uses.

    Returns (rows [U] sorted source indices, train [S, U] bool, heldout [S, U] bool)."""
    empty = np.zeros((num_shadows, 0), dtype=bool)
    if num_shadows == 0:
        return np.zeros(0, np.int64), empty, empty
    free = np.setdiff1d(np.arange(n_pool), target_rows)
    if 2 * n > len(free):
        raise DataError(
            f"each shadow model needs 2 x {n} rows disjoint from the targets' rows but "
            f"only {len(free)} are left; lower attacks.shadow.members or "
            "data.num_members/num_nonmembers, or set attacks.shadow.num_models=0"
        )
    draws = [
        np.random.default_rng(derive_seed(seed, STREAM_SHADOW, j)).permutation(free)[: 2 * n]
        for j in range(num_shadows)
    ]
    rows = np.unique(np.concatenate(draws))
    pos = {int(r): i for i, r in enumerate(rows)}
    train = np.zeros((num_shadows, len(rows)), dtype=bool)
    held = np.zeros((num_shadows, len(rows)), dtype=bool)
    for j, d in enumerate(draws):
        train[j, [pos[int(r)] for r in d[:n]]] = True
        held[j, [pos[int(r)] for r in d[n:]]] = True
    return rows, train, held


def _draw_online(split: np.ndarray, num_online: int, seed: int) -> np.ndarray:
    """Online draws over the audited rows (members and non-members): each audited row IN for
    exactly floor(num_online / 2) draws, chosen by a seeded per-row ranking (Carlini et al.'s
    `keep = argsort(uniform) < n / 2`). -> [O, R] bool."""
    audited = np.flatnonzero((split == MEMBER) | (split == NONMEMBER))
    out = np.zeros((num_online, len(split)), dtype=bool)
    if num_online:
        u = np.random.default_rng(derive_seed(seed, STREAM_ONLINE)).uniform(
            size=(num_online, len(audited))
        )
        out[:, audited] = u.argsort(axis=0).argsort(axis=0) < num_online // 2
    return out


def _check_duplicates(
    hashes: list[str], split: np.ndarray, shard: np.ndarray, on_duplicate: str
) -> tuple[np.ndarray, int]:
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
            "hash; set data.on_duplicate=drop to drop them"
        )
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
    teachers = np.stack([plan.rows_of(t) for t in plan.teachers])
    if (teachers.sum(axis=0) > 1).any():
        raise SplitOverlapError("member shards overlap: a row belongs to two teachers")
    if not np.array_equal(teachers.any(axis=0), members):
        raise SplitOverlapError("member shards do not cover exactly the members")
    if not np.array_equal(plan.membership[0], members):
        raise SplitOverlapError("the baseline must train on exactly the members")
    for v in (m for m in plan.models if is_variant(m)):
        if not np.array_equal(plan.rows_of(v), members):
            raise SplitOverlapError(f"{v} must train on exactly the members, like the baseline")
    shard_hashes = [
        {h for h, s in zip(plan.hash, plan.shard) if s == k} for k in range(plan.num_shards)
    ]
    for a in range(plan.num_shards):
        for b in range(a + 1, plan.num_shards):
            if shard_hashes[a] & shard_hashes[b]:
                raise SplitOverlapError(f"shards {a + 1} and {b + 1} share image content")
    shadow_rows = plan.split == SHADOW
    assert plan.shadow_train is not None and plan.shadow_heldout is not None  # __post_init__
    for j in range(plan.num_shadow_draws):
        if (plan.shadow_train[j] & ~shadow_rows).any() or (
            plan.shadow_heldout[j] & ~shadow_rows
        ).any():
            raise SplitOverlapError(
                f"shadow draw {j + 1} reads rows of the targets' member/non-member sets"
            )
        if (plan.shadow_train[j] & plan.shadow_heldout[j]).any():
            raise SplitOverlapError(f"shadow draw {j + 1} trains on rows it also holds out")
    shadow_teachers: dict[int, list[np.ndarray]] = defaultdict(list)
    for m in plan.shadows:
        shadow = parse_shadow(m)
        assert shadow is not None  # plan.shadows are the models that parse as shadows
        j, role, _ = shadow
        if j >= plan.num_shadow_draws:
            raise SplitOverlapError(f"{m} has no shadow draw in the plan")
        if (plan.rows_of(m) & ~plan.shadow_train[j]).any():
            raise SplitOverlapError(f"{m} trains on rows outside its draw's training rows")
        if role == "teacher":
            shadow_teachers[j].append(plan.rows_of(m))
    for j, shards in shadow_teachers.items():
        if (np.sum(shards, axis=0) > 1).any() or not np.array_equal(
            np.any(shards, axis=0), plan.shadow_train[j]
        ):
            raise SplitOverlapError(
                f"shadow draw {j + 1}'s teacher shards must be disjoint and cover its training rows"
            )
    assert plan.online_train is not None  # __post_init__
    audited = (plan.split == MEMBER) | (plan.split == NONMEMBER)
    if (plan.online_train & ~audited).any():
        raise SplitOverlapError("an online draw trains on rows outside the audited rows")
    online_teachers: dict[int, list[np.ndarray]] = defaultdict(list)
    for m in plan.online_models:
        online = parse_online(m)
        assert online is not None  # online_models are the models that parse as online
        j, role, _ = online
        if j >= plan.num_online_draws:
            raise SplitOverlapError(f"{m} has no online draw in the plan")
        if (plan.rows_of(m) & ~plan.online_train[j]).any():
            raise SplitOverlapError(f"{m} trains on rows outside its draw's training rows")
        if role == "teacher":
            online_teachers[j].append(plan.rows_of(m))
    for j, shards in online_teachers.items():
        if (np.sum(shards, axis=0) > 1).any() or not np.array_equal(
            np.any(shards, axis=0), plan.online_train[j]
        ):
            raise SplitOverlapError(
                f"online draw {j + 1}'s teacher shards must be disjoint and cover its rows"
            )
    target_h = {h for h, sp in zip(plan.hash, plan.split) if sp != SHADOW}
    if target_h & {h for h, sp in zip(plan.hash, plan.split) if sp == SHADOW}:
        raise SplitOverlapError("shadow rows share image content with target rows")


def plan_from_tables(
    rows: pa.Table,
    membership: pa.Table,
    image_shape: list[int],
    shadow_draws: Optional[pa.Table] = None,
) -> Plan:
    """Rebuild a Plan from the Parquet tables written by `prepare` (and re-validate it)."""
    d = rows.to_pydict()
    images = np.frombuffer(b"".join(d["image"]), dtype=np.uint8).reshape(-1, *image_shape)
    models = [c for c in membership.column_names if c != "row_id"]
    if membership.column("row_id").to_pylist() != d["row_id"]:
        raise SplitOverlapError("membership matrix rows do not match the rows table")
    plan = Plan(
        row_id=np.array(d["row_id"], np.int64),
        hash=d["hash"],
        split=np.array(d["split"], dtype=object),
        shard=np.array(d["shard"], np.int64),
        part=np.array(d["part"], dtype=object),
        label=np.array(d["label"], np.int64),
        images=images.copy(),
        models=models,
        membership=np.stack(
            [membership.column(m).to_numpy(zero_copy_only=False) for m in models]
        ).astype(bool),
        shadow_heldout=_draw_columns(shadow_draws, "heldout"),
        shadow_train=_draw_columns(shadow_draws, "train"),
        online_train=_draw_columns(shadow_draws, "train", ONLINE),
        captions=d["captions"] if "captions" in d else None,
    )
    validate_plan(plan)
    return plan


def _draw_columns(
    table: Optional[pa.Table], kind: str, prefix: str = "shadow"
) -> Optional[np.ndarray]:
    """The `<prefix>_<j>:<kind>` columns of a shadow-draws table -> [S, R] bool (None if
    none); prefix "shadow" or "online"."""
    if table is None:
        return None

    def parsed(column: str) -> Optional[tuple[str, int, str, int]]:
        return parse_draw(column.split(":")[0]) if ":" in column else None

    names = [
        c
        for c in table.column_names
        if c.endswith(f":{kind}") and (parsed(c) or ("",))[0] == prefix
    ]
    if not names:
        return None

    def draw(column: str) -> int:
        d = parsed(column)
        assert d is not None  # the columns are named <prefix>_<j>:<kind>
        return d[1]

    names.sort(key=draw)
    return np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in names]).astype(bool)
