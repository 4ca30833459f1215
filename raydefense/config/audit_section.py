"""`audit`: existing models to audit instead of training the targets."""

from __future__ import annotations

from pydantic import (
    Field,
    model_validator,
)

from raydefense.config.sections import Section

AUDIT_ROLE = r"^(baseline|student|teacher_[1-9][0-9]*)$"


class AuditConfig(Section):
    """Audit existing models instead of training them (`raydefense audit`): each named target
    role is imported, not trained; the other targets are left out. Shadow models (for the
    shadow-trained attacks) are still trained, like the `model` section describes."""

    models: dict[str, str] = Field(
        default_factory=dict,
        description="target role (baseline, student, teacher_k) -> a diffusers UNet directory, "
        "a diffusers pipeline directory, a raydefense model directory (models/<name>), or an "
        "MLflow model URI (models:/<name>/<version>, runs:/<run id>/<path>)",
    )
    digests: dict[str, str] = Field(
        default_factory=dict,
        description="set by the audit command, not by hand: role -> SHA-256 of the imported "
        "weights (so new weights under the same path are audited afresh)",
    )

    @model_validator(mode="after")
    def _check_roles(self) -> AuditConfig:
        import re

        for role in self.models:
            if not re.match(AUDIT_ROLE, role):
                raise ValueError(
                    f"audit.models: unknown role {role!r}; name each model baseline (trained "
                    "on all members), teacher_1..teacher_K (trained on shard k; DualMD is "
                    "audited when all K are given) or student"
                )
        return self
