"""`data`: which images, how they are split, their captions."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import (
    Field,
    model_validator,
)

from raydefense.config.sections import Section


class CaptionerConfig(Section):
    """A captioning model that writes the extra captions of prompt diversification (paper section
    3.1: BLIP, 5 extra captions per training image) in the prepare stage."""

    path: str = Field(
        description="a local directory holding a transformers image-to-text model and its "
        "processor (save_pretrained layout), e.g. Salesforce/blip-image-captioning-base"
    )
    num_captions: int = Field(5, ge=1, description="extra captions per image (the paper's 5)")
    max_new_tokens: int = Field(30, ge=1, description="the longest caption, in tokens")
    top_p: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="nucleus sampling (BLIP's sampling mode, which gives diverse captions); "
        "each image's draws are seeded by (seed, row)",
    )
    prompt: Optional[str] = Field(
        None, description="a text prefix for conditional captioning (BLIP: 'a picture of')"
    )


class DataConfig(Section):
    """Where images come from and how they are split (members/non-members, shards, eval parts)."""

    source: str = "digits"
    root: Optional[str] = None
    split_file: Optional[str] = None
    member_roots: Optional[list[str]] = Field(
        None,
        description="instead of data.root + a split: the members as folders / Parquet files in "
        "data.source's format (imagefolder or parquet); several = one per shard, in order (an "
        "audit's teachers)",
    )
    nonmember_root: Optional[str] = Field(
        None, description="with member_roots: the non-members, in the same format"
    )
    num_members: Optional[int] = Field(None, ge=2, description="None: half of the pool")
    num_nonmembers: Optional[int] = Field(None, ge=2, description="None: the other half")
    num_shards: int = Field(2, ge=2)
    calibration_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    on_duplicate: Literal["error", "drop"] = "error"
    resolution: Optional[int] = Field(
        None,
        ge=1,
        description="resize every image to resolution x resolution (PIL bicubic); "
        "None = the source's native size (cifar 32, stl10_unlabeled 96, tiny_imagenet 64)",
    )
    image_column: str = Field(
        "image", description="parquet: encoded image bytes or raw uint8 arrays"
    )
    label_column: Optional[str] = Field(
        "label",
        description="parquet: int class labels (None or an absent default column = unlabeled)",
    )
    caption_column: Optional[str] = Field(
        None,
        description="captions: parquet: a string column (one caption per image) or a "
        "list<string> column (several; the first is the original); imagefolder: the caption "
        "column of metadata.jsonl / metadata.csv (None there = 'text')",
    )
    extra_caption_column: Optional[str] = Field(
        None,
        description="parquet / imagefolder metadata: a list<string> (or string) column of extra "
        "captions appended after the original one (e.g. BLIP captions stored beside it); a "
        "null row = no extras",
    )
    prompt_diversification: bool = Field(
        False,
        description="each time an image is used, one of its captions is drawn uniformly; "
        "false: its original caption only; applies to every model, the baseline included",
    )
    captioner: Optional[CaptionerConfig] = Field(
        None,
        description="generate extra captions in the prepare stage with a local captioning "
        "model (data.captioner.path), appended after each planned image's own captions; an "
        "image without captions gets the generated ones only (the first stands as original)",
    )

    @model_validator(mode="after")
    def _check_member_roots(self) -> DataConfig:
        if (self.member_roots is None) != (self.nonmember_root is None):
            raise ValueError(
                "data.member_roots and data.nonmember_root go together: give both (the "
                "members' and the non-members' folders) or neither"
            )
        if self.member_roots is not None:
            if not self.member_roots:
                raise ValueError("data.member_roots is empty: list the members' folders")
            if self.split_file or self.root:
                raise ValueError(
                    "data.member_roots replaces data.root and data.split_file: unset them"
                )
            if self.source not in ("imagefolder", "parquet"):
                raise ValueError(
                    f"data.member_roots are read as data.source={self.source!r}; set "
                    "data.source to imagefolder or parquet (their format)"
                )
        return self
