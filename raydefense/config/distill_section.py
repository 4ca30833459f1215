"""`distill`: DistillMD's soft targets and student."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import (
    Field,
    model_validator,
)

from raydefense.config.sections import Section


class DistillConfig(Section):
    """DistillMD soft targets (Algorithm 2) and the student."""

    draws_per_row: int | Literal["auto"] = Field(
        "auto",
        description="soft-target (t, noise) draws per member row; 'auto' = enough that no draw is "
        "reused during student training (equivalent to fresh noise every step)",
    )
    batching: Literal["alternate", "mixed"] = Field(
        "alternate",
        description="alternate: whole batches alternate between shards (Algorithm 2, literal); "
        "mixed: every batch mixes rows of all shards",
    )
    teacher_assignment: Literal["mean", "one_other"] = Field(
        "mean",
        description="K > 2 shards: who labels a member row. mean: the mean of the K - 1 teachers "
        "that did not train on it; one_other: one of them, chosen uniformly per row from a seeded "
        "stream (every draw of the row uses it). K = 2: identical (the single other teacher)",
    )
    teacher_weights: Literal["ema", "raw"] = "ema"
    label_batch_size: int = Field(1024, ge=1)
    target_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="how soft targets are stored and held by the student: bfloat16 halves "
        "their bytes (a paper-scale student holds one per training example; the loss is "
        "computed in float32 either way)",
    )
    store_x_t: bool = Field(
        False,
        description="false: soft targets store their (row, draw) keys and t, and the student "
        "regenerates each x_t from the seeded noise per batch (bit-identical, half the bytes "
        "of float32 targets); true: x_t is stored with every target",
    )
    disk_dir: Optional[str] = Field(
        None,
        description="a local directory where each student fit holds its soft targets in a "
        "memory-mapped file (reserved up front, unlinked at once) instead of RAM: for "
        "paper-scale students whose targets outgrow the host (cifar10_ddpm: 0.56 TiB in "
        "bfloat16); null: in RAM. The same batches and bytes either way",
    )
    synthetic_per_teacher: int = Field(
        0,
        ge=0,
        description="an extension of Algorithm 2 (0 = off, the paper's form): each teacher draws "
        "this many DDIM samples that join the student's inputs, owned by the teacher that drew "
        "them and labelled by the others like member rows; pixel models only",
    )
    synthetic_steps: int = Field(50, ge=1, description="DDIM steps of each synthetic sample")
    member_inputs: bool = Field(
        True,
        description="true (the paper's form): the student's inputs are the noised member rows; "
        "false (an extension): members are left out of its inputs and it distils on the "
        "teachers' synthetic rows and/or public rows alone (needs "
        "distill.synthetic_per_teacher > 0 or distill.public_inputs)",
    )
    public_inputs: bool = Field(
        False,
        description="an extension of Algorithm 2: every spare pool row (in no model's rows or "
        "any audit, no content copy of a plan row: data the defender holds but trains no "
        "teacher on) joins the student's inputs, labelled by the mean of all K teachers; pixel "
        "models only",
    )

    @model_validator(mode="after")
    def _check_inputs(self) -> DistillConfig:
        if not self.member_inputs and not (self.synthetic_per_teacher or self.public_inputs):
            raise ValueError(
                "distill.member_inputs=false leaves the student no inputs: set "
                "distill.synthetic_per_teacher > 0 (e.g. 2048) or distill.public_inputs=true"
            )
        return self
