"""Checkpoints: the network's raw and EMA weights (each as its backbone saves them, under
`unet/` and `ema/`) + `state.pt` (step, optimizer state) + `training.json` (what the fit cost
so far and, for DP-SGD, the privacy it spent: `training_record`)."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import torch

from raydefense.diffusion.eps import EpsNet

STATE_FILE = "state.pt"
TRAINING_FILE = "training.json"
# The raw weights live under `unet/` (the diffusers layout's name, whatever the family).
WEIGHTS_DIRS = {"raw": "unet", "ema": "ema"}


def weights_dir(directory: str, weights: str) -> str:
    """<directory>/unet for weights "raw", <directory>/ema for "ema"."""
    if weights not in WEIGHTS_DIRS:
        raise ValueError(f"weights must be one of {sorted(WEIGHTS_DIRS)}, got {weights!r}")
    return os.path.join(directory, WEIGHTS_DIRS[weights])


def save_checkpoint(
    directory: str,
    net: EpsNet,
    ema_net: EpsNet,
    state: dict,
    training: Optional[dict[str, Any]] = None,
) -> None:
    """Writes <directory>/{unet,ema}/, <directory>/state.pt and (given) training.json."""
    os.makedirs(directory, exist_ok=True)
    net.save(weights_dir(directory, "raw"))
    ema_net.save(weights_dir(directory, "ema"))
    torch.save(state, os.path.join(directory, STATE_FILE))
    if training is not None:
        with open(os.path.join(directory, TRAINING_FILE), "w") as f:
            json.dump(training, f, indent=1, sort_keys=True)


def read_training(directory: str) -> Optional[dict[str, Any]]:
    """A model directory's training record (`training.json`), or None (a model trained before
    the record existed, or imported)."""
    path = os.path.join(directory, TRAINING_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record: dict[str, Any] = json.load(f)
    return record


def load_state(directory: str) -> dict:
    return torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=False)
