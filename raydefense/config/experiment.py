"""The whole config: `ExperimentConfig` (every section, the checks across sections)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import (
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from raydefense.config.attack_sections import AttacksConfig
from raydefense.config.audit_section import AuditConfig
from raydefense.config.data_section import DataConfig
from raydefense.config.distill_section import DistillConfig
from raydefense.config.runtime_sections import (
    QualityConfig,
    ResourcesConfig,
    SamplingConfig,
    StorageConfig,
    TrackingConfig,
)
from raydefense.config.sections import Section
from raydefense.config.sweep_section import SweepConfig
from raydefense.config.train_section import TrainConfig
from raydefense.errors import ConfigError
from raydefense.families import DEFAULT_FAMILY, ModelConfig, model_family
from raydefense.families.schema import FORMER_MODEL_FIELDS
from raydefense.hashing import stable_hash


def _model_of(value: Any) -> Any:
    """`model` validated by its family's schema (dicts; a ModelConfig passes as it is)."""
    if isinstance(value, Mapping):
        kind = value.get("kind", DEFAULT_FAMILY)
        if not isinstance(kind, str):
            raise ValueError(f"model.kind must be a family name, got {kind!r}")
        try:
            family = model_family(kind)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return family.model_validate(dict(value))
    return value


class ExperimentConfig(Section):
    experiment: str = "digits"
    seed: int = 0
    data: DataConfig = DataConfig()
    model: SerializeAsAny[ModelConfig] = Field(
        default_factory=lambda: model_family(DEFAULT_FAMILY)()
    )
    train: TrainConfig = TrainConfig()
    distill: DistillConfig = DistillConfig()
    attacks: AttacksConfig = AttacksConfig()
    sampling: SamplingConfig = SamplingConfig()
    quality: QualityConfig = QualityConfig()
    tracking: TrackingConfig = TrackingConfig()
    storage: StorageConfig = StorageConfig()
    resources: ResourcesConfig = ResourcesConfig()
    sweep: SweepConfig = SweepConfig()
    audit: AuditConfig = AuditConfig()

    _family_schema = field_validator("model", mode="before")(_model_of)

    @model_validator(mode="after")
    def _check_capabilities(self) -> ExperimentConfig:
        """Settings the model family's capabilities rule out (`latent`, `conditional`)."""
        m = self.model
        if m.latent and self.train.hflip:
            raise ValueError(
                f"train.hflip flips pixels, but model.kind={m.kind} trains on latents encoded "
                "once in prepare: set train.hflip=false"
            )
        if not m.conditional and self.data.prompt_diversification:
            raise ValueError(
                "data.prompt_diversification draws captions for a text-conditioned model; "
                f"model.kind={m.kind} takes none: set model.kind=sd or turn it off"
            )
        if m.latent and self.distill.synthetic_per_teacher:
            raise ValueError(
                "distill.synthetic_per_teacher draws pixel samples; a latent model "
                f"(model.kind={m.kind}) is not supported: set it to 0"
            )
        if m.latent and self.distill.public_inputs:
            raise ValueError(
                "distill.public_inputs labels pixel rows; a latent model "
                f"(model.kind={m.kind}) is not supported: set it to false"
            )
        if not m.conditional and self.data.captioner is not None:
            raise ValueError(
                "data.captioner writes captions for a text-conditioned model; "
                f"model.kind={m.kind} takes none: set model.kind=sd or unset it"
            )
        self._check_private_and_variants()
        return self

    def _check_private_and_variants(self) -> None:
        """DP-SGD trains pixel rows in fp32 without flips; a variant's dropout needs a family
        with a dropout field."""
        t = self.train
        for role in t.roles():
            r = t.for_role(role)
            if r.dp is None:
                continue
            where = f"train.{role}.dp" if role in ("baseline", "teacher", "student") else "train.dp"
            if role.startswith("baseline_"):
                where = f"train.variants.{role.removeprefix('baseline_')}.dp"
            if role == "student":
                raise ValueError(
                    f"{where}: the student learns from soft targets and DP-SGD trains on image "
                    "rows; unset it (train.dp trains the teachers privately)"
                )
            if self.model.latent:
                raise ValueError(
                    f"{where}: DP-SGD trains on image rows and model.kind={self.model.kind} "
                    "trains on latents; unset it"
                )
            if r.precision != "fp32" or r.compile or r.hflip:
                raise ValueError(
                    f"{where}: DP-SGD steps in fp32 without torch.compile or flips; set "
                    "train.precision=fp32, train.compile=false and train.hflip=false for it"
                )
        if t.variants and self.audit.models:
            raise ValueError(
                "train.variants trains new targets and an audit (audit.models) attacks imported "
                "ones: unset train.variants for the audit"
            )
        for name, v in t.variants.items():
            if v.dropout is not None and not hasattr(self.model, "dropout"):
                raise ValueError(
                    f"train.variants.{name}.dropout: model.kind={self.model.kind} has no "
                    "dropout setting; drop it from the variant"
                )

    def flat_params(self) -> dict[str, str]:
        """Dotted keys -> string values, as logged to MLflow params."""
        return {
            k: json.dumps(v) if isinstance(v, (list, dict)) else str(v)
            for k, v in _flatten(self.model_dump(mode="json")).items()
        }

    def fingerprint(self) -> str:
        """SHA-256 of the whole config (results.json's `config_fingerprint`); an unused `audit`
        section is left out, so configs from before it keep their fingerprints."""
        d = self.model_dump(mode="json")
        if d["audit"] == AuditConfig().model_dump(mode="json"):
            del d["audit"]
        # DP-SGD and the variants came later: unset, they leave the fingerprint as it was.
        for section in (d["train"], *(d["train"][r] for r in ("baseline", "teacher", "student"))):
            if section.get("dp", 0) is None:
                del section["dp"]
        if not d["train"]["variants"]:
            del d["train"]["variants"]
        for k, former in FORMER_MODEL_FIELDS.items():
            d["model"].setdefault(k, former)
        return stable_hash(d)


def first_error(e: ValidationError) -> tuple[str, str, Any]:
    """The first error of a pydantic ValidationError: (dotted location, message without
    pydantic's "Value error, " prefix, the offending input), for one-line ConfigErrors."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return loc, str(err["msg"]).removeprefix("Value error, "), err.get("input")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
