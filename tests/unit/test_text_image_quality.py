"""SSCD similarity and CLIP score from local weights (tiny models built offline here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raydefense.quality.text_image import clip_score, sscd_nearest_similarity


class TinyDescriptor(torch.nn.Module):
    """A stand-in SSCD: conv + global pooling -> 16-d descriptor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def test_sscd_similarity_finds_copies(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "sscd.torchscript.pt"
    torch.jit.script(TinyDescriptor()).save(str(path))
    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, (6, 3, 32, 32)).astype(np.float32)
    generated = np.concatenate([train[:2], rng.uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)])
    sims = sscd_nearest_similarity(str(path), generated, train, size=64)
    assert sims.shape == (5,) and np.allclose(sims[:2], 1.0, atol=1e-5)
    assert (sims[2:] < 1.0 - 1e-4).all()
    gray = sscd_nearest_similarity(str(path), generated[:, :1], train[:, :1], size=64)
    assert np.allclose(gray[:2], 1.0, atol=1e-5)  # grayscale is replicated to RGB


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    from transformers import CLIPConfig, CLIPModel

    from raydefense.diffusion.tiny_sd import TOKEN_LENGTH, byte_level_tokenizer

    d = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config={
            "vocab_size": 1000,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": TOKEN_LENGTH,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(str(d))
    byte_level_tokenizer(str(d / "tok")).save_pretrained(str(d))
    return str(d)


def test_clip_score_is_a_cosine_per_image_and_prompt(tiny_clip: str) -> None:
    images = np.random.default_rng(0).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    prompts = ["a digit one", "a digit two", "a digit three"]
    s = clip_score(tiny_clip, images, prompts)
    assert s.shape == (3,) and (np.abs(s) <= 1.0 + 1e-6).all()
    assert not np.allclose(s, clip_score(tiny_clip, images, prompts[::-1]))  # prompts matter
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        clip_score(tiny_clip, images, prompts[:2])
