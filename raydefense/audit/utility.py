"""Utility and memorization of generated samples, and the domain feature extractor (trained on
spare pool rows, then shadow rows; disjoint from every audited row) that stands in for
Inception on small data."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from raydefense.audit.targets import training_rows
from raydefense.config import ExperimentConfig
from raydefense.data.given import load_pool
from raydefense.data.plan import CALIBRATION, NONMEMBER, SHADOW, Plan, content_hash
from raydefense.data.pool import to_model_range
from raydefense.quality.domain import embed, train_domain_classifier
from raydefense.quality.fid import fid_from_features, inception_score, precision_recall
from raydefense.quality.memorization import (
    memorization_summary,
    nearest_neighbour_ratio,
)
from raydefense.quality.mmd import membership_mmd_test
from raydefense.quality.text_image import (
    SSCD_COPY_THRESHOLD,
    clip_score,
    sscd_nearest_similarity,
)
from raydefense.seeding import STREAM_DOMAIN, STREAM_QUALITY, derive_seed

log = logging.getLogger("raydefense")


MMD_ROWS = 2000  # per set in the distribution-level check


@dataclass
class DomainFeatures:
    """The domain classifier (trained on spare pool rows) and the reference embedding."""

    model: Any
    reference: np.ndarray  # [N_ref, D] embeddings of the non-member images
    train_accuracy: float
    train_rows: int = 0
    reference_calibration: Optional[np.ndarray] = None  # [N_cal, D] calibration non-members

    def embed(self, images: np.ndarray | torch.Tensor) -> np.ndarray:

        x = images if isinstance(images, np.ndarray) else images.cpu().numpy()
        return embed(self.model, np.asarray(x, dtype=np.float32))

    def feature_fn(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.embed(images))


def spare_rows(cfg: ExperimentConfig, plan: Plan, pool: Any) -> np.ndarray:
    """The domain feature extractor's pool indices, a seeded draw of at most
    `quality.domain_rows`: spare rows first (not in the plan, no content duplicate of a plan
    row), then, with `quality.domain_rows_from=spare_and_shadow` and too few spare rows, shadow
    rows (the attacker's own data: no target trains on them, no attack audits them; content
    duplicates of target rows dropped). -> [n] int64, sorted."""
    rng = np.random.default_rng(derive_seed(cfg.seed, STREAM_DOMAIN))
    out: list[int] = []
    seen: set[str] = set()

    def take(candidates: np.ndarray, used: set[str]) -> None:
        for i in rng.permutation(candidates):
            if len(out) == cfg.quality.domain_rows:
                return
            h = content_hash(pool.images[i])
            if h in used or h in seen:
                continue
            seen.add(h)
            out.append(int(i))

    take(np.setdiff1d(np.arange(len(pool.images)), plan.row_id), set(plan.hash))
    if cfg.quality.domain_rows_from == "spare_and_shadow":
        shadow = plan.split == SHADOW
        targets = {h for h, s in zip(plan.hash, shadow) if not s}
        take(np.unique(plan.row_id[shadow]), targets)
    return np.array(sorted(out), dtype=np.int64)


def train_domain_features(cfg: ExperimentConfig, plan: Plan) -> Optional[DomainFeatures]:
    """A small classifier trained on labelled spare pool rows (and shadow rows: `spare_rows`),
    never on a row any target trains on or any attack audits, so its feature space is disjoint
    from the audit; None without labels or such rows.

    Its penultimate features stand in for Inception's on datasets like digits ("domain FID");
    the FID reference is the non-member set."""

    pool, _ = load_pool(cfg.data)
    if pool.labels is None:
        return None
    rows = spare_rows(cfg, plan, pool)
    labels = pool.labels[rows]
    if len(rows) < 2 or (labels < 0).any() or len(np.unique(labels)) < 2:
        log.warning(
            "evaluate: %d labelled spare pool rows: no domain feature extractor (domain "
            "FID and the domain-space black-box attack are skipped); lower "
            "data.num_members/num_nonmembers or attacks.shadow.members",
            len(rows),
        )
        return None
    images = to_model_range(pool.images[rows])
    model, acc = train_domain_classifier(
        images,
        labels,
        int(pool.labels.max()) + 1,
        cfg.quality.domain_classifier_epochs,
        derive_seed(cfg.seed, STREAM_QUALITY),
    )
    nonmember = plan.split == NONMEMBER
    reference = embed(model, to_model_range(plan.images[nonmember]))
    # The calibration non-members alone: the domain FID that choices read (#27).
    on_cal = plan.part[nonmember] == CALIBRATION
    return DomainFeatures(model, reference, acc, len(rows), reference[on_cal])


def quality_rows(
    cfg: ExperimentConfig,
    plan: Plan,
    target: str,
    generated: np.ndarray,
    domain: Optional[DomainFeatures],
    prompts: Optional[list[str]] = None,
) -> list[dict[str, Any]]:
    """Utility and memorization of a target's generated images (results.json quality rows).
    prompts: a text-to-image target's prompt per generated image (CLIP score)."""

    q = cfg.quality
    out: list[dict[str, Any]] = []

    def add(metric: str, value: float) -> None:
        out.append({"target": target, "metric": metric, "value": float(value)})

    if domain is not None:
        fake = domain.embed(generated)
        add("domain_fid", fid_from_features(domain.reference, fake))
        if domain.reference_calibration is not None and len(domain.reference_calibration) > 1:
            add("domain_fid_calibration", fid_from_features(domain.reference_calibration, fake))
        p, r = precision_recall(domain.reference, fake, q.precision_recall_k)
        add("domain_precision", p)
        add("domain_recall", r)
        with torch.no_grad():
            probs = torch.softmax(domain.model(torch.from_numpy(generated)), dim=1).numpy()
        add("domain_is", inception_score(probs)[0])
    if q.inception_weights:
        from raydefense.quality.inception import inception_fid_is

        real_u8 = torch.from_numpy(plan.images[plan.split == NONMEMBER])
        fake_u8 = torch.from_numpy(np.rint((generated + 1.0) * 127.5).clip(0, 255).astype(np.uint8))
        for k, v in inception_fid_is(real_u8, fake_u8, q.inception_weights).items():
            add(k, v)
    train = to_model_range(plan.images[training_rows(plan, target)])
    if q.mmd_permutations:
        # Distribution level (arXiv 2502.02970): are the samples closer to the members than to
        # the non-members? In the domain feature space when there is one, else pixels.
        # Capped at MMD_ROWS per set (seeded) so the kernel matrix stays small at any scale.
        embed = domain.embed if domain is not None else (lambda x: x.reshape(len(x), -1))
        rng = np.random.default_rng(derive_seed(cfg.seed, STREAM_QUALITY, 7))
        cap = [rng.permutation(len(x))[:MMD_ROWS] for x in (generated, train)]
        nonmembers = plan.images[plan.split == NONMEMBER]
        nonmembers = to_model_range(nonmembers[rng.permutation(len(nonmembers))[:MMD_ROWS]])
        res = membership_mmd_test(
            embed(generated[cap[0]]),
            embed(train[cap[1]]),
            embed(nonmembers),
            q.mmd_permutations,
            derive_seed(cfg.seed, STREAM_QUALITY, 8),
        )
        add("mmd_member_gap", res["statistic"])
        add("mmd_p_value", res["p_value"])
    if q.sscd_model:  # text-to-image memorization (the paper's Table 5 SSCD column)
        sims = sscd_nearest_similarity(q.sscd_model, generated, train)
        add("sscd_similarity", float(sims.mean()))
        add("sscd_copies", float((sims > SSCD_COPY_THRESHOLD).mean()))
    if q.clip_model and prompts is not None:
        add("clip_score", float(clip_score(q.clip_model, generated, prompts).mean()))
    ratios = nearest_neighbour_ratio(generated, train, q.memorization_k)
    for k, v in memorization_summary(ratios, q.memorization_threshold).items():
        add(f"memorization_{k}" if not k.startswith("memor") else k, v)
    return out
