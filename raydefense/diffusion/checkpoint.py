"""Checkpoints: the network's raw and EMA weights (each as its backbone saves them, under
`unet/` and `ema/`) + `state.pt` (step, optimizer state)."""

from __future__ import annotations

import os

import torch

from raydefense.diffusion.eps import EpsNet

STATE_FILE = "state.pt"
# The raw weights live under `unet/` (the diffusers layout's name, whatever the family).
WEIGHTS_DIRS = {"raw": "unet", "ema": "ema"}


def weights_dir(directory: str, weights: str) -> str:
    """<directory>/unet for weights "raw", <directory>/ema for "ema"."""
    if weights not in WEIGHTS_DIRS:
        raise ValueError(f"weights must be one of {sorted(WEIGHTS_DIRS)}, got {weights!r}")
    return os.path.join(directory, WEIGHTS_DIRS[weights])


def save_checkpoint(directory: str, net: EpsNet, ema_net: EpsNet, state: dict) -> None:
    """Writes <directory>/{unet,ema}/ and <directory>/state.pt."""
    os.makedirs(directory, exist_ok=True)
    net.save(weights_dir(directory, "raw"))
    ema_net.save(weights_dir(directory, "ema"))
    torch.save(state, os.path.join(directory, STATE_FILE))


def load_state(directory: str) -> dict:
    return torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=False)
