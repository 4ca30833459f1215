"""Text-to-image memorization and prompt alignment (the paper's Table 5), from local weights only.

- SSCD (Pizzi et al., CVPR 2022; the copy-detection descriptor the paper's Table 5 uses): a
  TorchScript model at `quality.sscd_model` (e.g. the released `sscd_disc_mixup.torchscript.pt`).
  Per generated image, the cosine similarity of its descriptor to the nearest training image's
  (higher = closer to a copy); reported as the mean over generations and the fraction above 0.5.
  Images are resized to `SSCD_SIZE` and normalised with ImageNet statistics, as SSCD's README does.
- CLIP score: a transformers `CLIPModel` directory at `quality.clip_model` (with its tokenizer);
  per generated image, the cosine similarity of its image embedding to its prompt's text embedding,
  averaged (raw cosine, as the paper's 0.26-0.28).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SSCD_SIZE = 288
SSCD_COPY_THRESHOLD = 0.5  # SSCD's suggested copy threshold for the disc_mixup descriptor
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BATCH = 64


def _prepare(images: np.ndarray, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1] (C = 1 or 3) -> [N, 3, size, size], normalised."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    x = (x + 1) / 2
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m, s = torch.tensor(mean)[None, :, None, None], torch.tensor(std)[None, :, None, None]
    return (x - m) / s


@torch.no_grad()
def _descriptors(model: torch.nn.Module, images: np.ndarray, size: int) -> torch.Tensor:
    out = [
        model(_prepare(images[s : s + BATCH], size, IMAGENET_MEAN, IMAGENET_STD))
        for s in range(0, len(images), BATCH)
    ]
    return F.normalize(torch.cat(out).float().flatten(1), dim=1)


def sscd_nearest_similarity(
    model_path: str, generated: np.ndarray, train: np.ndarray, size: int = SSCD_SIZE
) -> np.ndarray:
    """Per generated image [M, C, H, W] in [-1, 1], the max cosine similarity of its SSCD
    descriptor to those of the training images [N, C, H, W]. -> [M] float64 in [-1, 1]."""
    model = torch.jit.load(model_path, map_location="cpu").eval()
    g, t = _descriptors(model, generated, size), _descriptors(model, train, size)
    return (g @ t.T).max(dim=1).values.double().numpy()


def _projected(out: object) -> torch.Tensor:
    """CLIP's projected embeddings [N, P]: transformers 5 returns them as the output's
    pooler_output, earlier versions as a plain tensor."""
    if isinstance(out, torch.Tensor):
        return out
    pooled: torch.Tensor = out.pooler_output  # type: ignore[attr-defined]
    return pooled


@torch.no_grad()
def clip_score(model_dir: str, images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Per image [N, C, H, W] in [-1, 1] and its prompt, cos(CLIP image embedding, CLIP text
    embedding). -> [N] float64."""
    from transformers import CLIPModel, CLIPTokenizer

    if len(prompts) != len(images):
        raise ValueError(f"clip_score: {len(images)} images but {len(prompts)} prompts")
    model = CLIPModel.from_pretrained(model_dir).eval()
    tok = CLIPTokenizer.from_pretrained(model_dir)
    size = int(model.config.vision_config.image_size)
    out = []
    for s in range(0, len(images), BATCH):
        pix = _prepare(images[s : s + BATCH], size, CLIP_MEAN, CLIP_STD)
        ids = tok(
            prompts[s : s + BATCH],
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        img = F.normalize(_projected(model.get_image_features(pixel_values=pix)), dim=1)
        txt = F.normalize(_projected(model.get_text_features(input_ids=ids)), dim=1)
        out.append((img * txt).sum(1))
    return torch.cat(out).double().numpy()
