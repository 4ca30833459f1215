"""Pang & Wang's black-box attack on text-to-image models, as the DualMD paper ran it (Table 4;
spec/text-to-image.md §3): for each audited image, `num_generations` images generated from its
caption through the target's public interface (DDIM; DualMD: the alternating pipeline), and the
mean similarity of the generations to the image. Members' captions regenerate their images.

This is the threshold form of their attack. Its columns: pixel SSIM and the negative squared
distance, and, when `attacks.pang_wang.feature_model` names a local image model (theirs:
DeiT-base distilled, 384 px), their feature similarity: the cosine similarity of the
generation's and the image's last hidden states along the feature dimension, averaged over the
tokens and the generations. Their script reports the best of 1,000 epochs measured on the
target; here, as for every attack, a setting is chosen on calibration only.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from raydefense.attacks.base import ATTACKS, InterfaceAttack, PublicQuery
from raydefense.attacks.similarity import mse, ssim
from raydefense.config import PangWangConfig
from raydefense.errors import ConfigError
from raydefense.seeding import STREAM_PANG_WANG, derive_seed


@ATTACKS.register("pang_wang")
class PangWang(InterfaceAttack):
    """One column per similarity (attacks.pang_wang.similarity)."""

    name = "pang_wang"
    text_only = True

    def __init__(
        self, cfg: PangWangConfig | dict[str, Any], num_train_timesteps: int = 1000
    ) -> None:
        self.cfg = cfg if isinstance(cfg, PangWangConfig) else PangWangConfig.model_validate(cfg)
        self._features: Optional[FeatureModel] = None

    def similarities(self) -> list[str]:
        return [*self.cfg.similarity, *(["feature"] if self.cfg.feature_model else [])]

    def settings(self) -> list[dict[str, Any]]:
        return [
            {"similarity": s, "generations": self.cfg.num_generations} for s in self.similarities()
        ]

    def features(self) -> FeatureModel:
        """The feature model, loaded on first use (one load per scoring actor)."""
        if self._features is None:
            assert self.cfg.feature_model is not None
            self._features = FeatureModel(self.cfg.feature_model)
        return self._features

    @torch.no_grad()
    def score_interface(self, q: PublicQuery) -> torch.Tensor:
        """Generation g of row r uses seed derive_seed(q.seed, STREAM_PANG_WANG, r, g), from the
        row's caption (q.cond). Returns [B, len(similarity)], the mean similarity over the
        generations."""
        if q.cond is None:
            raise ValueError("pang_wang generates from the audited images' captions (cond)")
        images, row_ids, seed = q.images, q.row_ids, q.seed
        names = self.similarities()
        sims = {s: torch.zeros(len(images)) for s in names}
        ref = images.cpu()
        ref_features = self.features()(ref) if "feature" in sims else None
        for g in range(self.cfg.num_generations):
            seeds = [derive_seed(seed, STREAM_PANG_WANG, int(r), g) for r in row_ids.tolist()]
            gen = q.interface.generate(q.cond, seeds).cpu()
            for s in sims:
                if s == "ssim":
                    sims[s] += ssim(gen, ref)
                elif s == "l2":
                    sims[s] += -mse(gen, ref)
                else:
                    assert ref_features is not None
                    sims[s] += feature_cosine(self.features()(gen), ref_features)
        n = self.cfg.num_generations
        return torch.stack([sims[s] / n for s in names], dim=1).float()


def feature_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B]: cosine similarity of two [B, tokens, D] hidden states along D, averaged over tokens
    (their `F.cosine_similarity(..., dim=-1)` then the mean)."""
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).mean(dim=1)


class FeatureModel:
    """A local transformers image model as a feature extractor: images [B, C, H, W] in [-1, 1]
    -> its last hidden state [B, tokens, D], after the resize and normalisation its image
    processor config names (nothing is downloaded: the directory must hold both)."""

    def __init__(self, path: str) -> None:
        import json
        import os

        from transformers import AutoModel

        try:
            self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
            with open(os.path.join(path, "preprocessor_config.json")) as f:
                proc = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"attacks.pang_wang.feature_model {path!r} is not a local transformers image "
                f"model with its preprocessor_config.json ({str(e).splitlines()[0][:200]}); save "
                "one with save_pretrained and its image processor's save_pretrained"
            ) from None
        size = proc.get("crop_size") or proc.get("size") or {}
        self.size = int(size.get("height", size.get("shortest_edge", 224)))
        self.mean = torch.tensor(proc.get("image_mean", [0.5, 0.5, 0.5])).view(1, -1, 1, 1)
        self.std = torch.tensor(proc.get("image_std", [0.5, 0.5, 0.5])).view(1, -1, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float().clamp(-1, 1) + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = torch.nn.functional.interpolate(
            x, size=(self.size, self.size), mode="bicubic", align_corners=False
        )
        x = (x - self.mean) / self.std
        return self.model(pixel_values=x).last_hidden_state
