"""The sections that shape no model: `quality`, `sampling`, `tracking`, `storage`, `resources`."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import (
    Field,
)

from raydefense.config.sections import Section


class QualityConfig(Section):
    """Utility and memorization of generated samples (evaluate)."""

    num_generated: int = Field(512, ge=2, description="samples per target for FID/memorization")
    inception_weights: Optional[str] = Field(
        None,
        description="local path of torch-fidelity's Inception weights; None = no "
        "FID/IS (nothing is downloaded)",
    )
    domain_classifier_epochs: int = Field(30, ge=1)
    mmd_permutations: int = Field(
        1000,
        ge=0,
        description="distribution-level membership check "
        "(kernel MMD of generated samples to members vs non-members, "
        "permutation p-value); 0 = off",
    )
    domain_rows: int = Field(
        2000,
        ge=2,
        description="at most this many spare pool rows (no "
        "target, shadow or audit uses them; content duplicates of those "
        "dropped) train the domain feature extractor",
    )
    domain_rows_from: Literal["spare", "spare_and_shadow"] = Field(
        "spare_and_shadow",
        description="the rows the domain feature extractor may train on: spare pool rows "
        "only, or those first and then the shadow draws' rows (the attacker's own data, "
        "disjoint from every target's members and non-members) when spare rows are fewer than "
        "domain_rows (a split that uses nearly the whole pool leaves almost no spare rows)",
    )
    sscd_model: Optional[str] = Field(
        None,
        description="text-to-image memorization: local path of an SSCD TorchScript model "
        "(sscd_disc_mixup.torchscript.pt); None = no SSCD similarity",
    )
    clip_model: Optional[str] = Field(
        None,
        description="text-to-image prompt alignment: a local transformers CLIPModel directory "
        "(with its tokenizer); None = no CLIP score",
    )
    memorization_k: int = Field(50, ge=1)
    memorization_threshold: float = Field(1 / 3, gt=0)
    precision_recall_k: int = Field(3, ge=1)


class SamplingConfig(Section):
    """Sample grids (baseline, DualMD, student) and the held-out quality metric."""

    sampler: Literal["ddim", "ddpm"] = "ddim"
    num_steps: int = Field(50, ge=1)
    num_images: int = Field(64, ge=1)
    quality_draws: int = Field(4, ge=1)
    guidance_scale: float = Field(
        1.0,
        ge=1.0,
        description="text-to-image sampling: classifier-free guidance weight (1 = no guidance; "
        "SD's default is 7.5); under DualMD both halves of a step come from that step's teacher",
    )


class TrackingConfig(Section):
    uri: str = "sqlite:///mlflow.db"
    enabled: bool = True
    register_models: bool = Field(
        True,
        description="log every trained target model (baseline, teacher_k, student) to its run "
        "as an MLflow pyfunc that generates images, register it as <experiment>-<model>, and "
        "tag the version with its audit (worst-case AUC, TPR@1%FPR, utility) after the report",
    )


class StorageConfig(Section):
    root: str = "./runs"


class ResourcesConfig(Section):
    workers_per_model: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    concurrent_fits: int = Field(3, ge=1)
    torch_threads: Optional[int] = Field(
        None,
        ge=1,
        description="threads per worker; None = the node's cores shared among the "
        "workers running at once (at least cpus_per_worker)",
    )
    label_actors: int = Field(1, ge=1, description="soft-target actor pool size")
    local_num_cpus: Optional[int] = Field(
        None, ge=1, description="logical CPUs of a local Ray cluster; None = 2 x os.cpu_count()"
    )
