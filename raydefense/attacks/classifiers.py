"""Attack-model helpers for the learned attacks: gradient boosting (GSA), z-scoring, and the
CIFAR-style ResNet-18 regressor of SecMI_NNs (spec/attacks.md §2.4, §5.2).

Pure numpy / scikit-learn / torch; no Ray, MLflow or file-system access.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from raydefense.config import SecMINNConfig
from raydefense.errors import ConfigError


def _seed32(seed: int) -> int:
    """A seed in [0, 2**32), the range scikit-learn and xgboost accept."""
    return int(seed) % (2**32)


def xgboost_available() -> bool:
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return False
    return True


def gradient_boosting(
    kind: Literal["auto", "xgboost", "sklearn"], n_estimators: int, seed: int
) -> Any:
    """A gradient-boosting binary classifier with fit / predict_proba.

    "xgboost" (or "auto" with xgboost importable): XGBClassifier(n_estimators, random_state,
    n_jobs=1), otherwise xgboost defaults as in the GSA code; "sklearn" (or "auto" without
    xgboost): GradientBoostingClassifier(n_estimators, random_state). The two differ (depth 6 /
    eta 0.3 vs depth 3 / lr 0.1), so results record which one ran via the attack's settings.
    """
    if kind not in ("auto", "xgboost", "sklearn"):
        raise ConfigError(f"unknown classifier {kind!r}; choose auto, xgboost or sklearn")
    if kind == "xgboost" or (kind == "auto" and xgboost_available()):
        try:
            from xgboost import XGBClassifier
        except ImportError:
            raise ConfigError(
                "classifier=xgboost but xgboost is not installed; run "
                "`pip install xgboost-cpu` or set classifier=sklearn"
            ) from None
        return XGBClassifier(n_estimators=n_estimators, random_state=_seed32(seed), n_jobs=1)
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(n_estimators=n_estimators, random_state=_seed32(seed))


class Standardizer:
    """Per-column z-scoring fitted on one matrix and applied to others (the "shadow" scaling:
    target features reuse the shadow statistics). Zero-variance columns map to 0."""

    mean_: Optional[np.ndarray] = None
    scale_: Optional[np.ndarray] = None

    def fit(self, x: np.ndarray) -> Standardizer:
        """x: [N, F] float. Statistics in float64, population std (ddof 0) as sklearn."""
        x64 = np.asarray(x, dtype=np.float64)
        self.mean_ = x64.mean(axis=0)
        std = x64.std(axis=0)
        # A constant column carries no information; scale 1 keeps it at 0 after centring
        # instead of dividing by zero (sklearn's _handle_zeros_in_scale does the same).
        self.scale_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """x: [M, F] -> [M, F] float64 (or x's floating dtype)."""
        if self.mean_ is None or self.scale_ is None:
            raise RuntimeError("Standardizer.transform called before fit")
        x = np.asarray(x)
        out = (x.astype(np.float64) - self.mean_) / self.scale_
        return out.astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else out

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)


def zscore(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std per column of x [N, F] with its own statistics; std == 0 columns become 0.
    Matches sklearn.preprocessing.scale (the GSA code's per-matrix scaling)."""
    return Standardizer().fit_transform(x)


# --------------------------------------------------------------------------- SecMI_NNs ResNet


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class AttackResNet(nn.Module):
    """The CIFAR-style ResNet-18 of SecMI_NNs: 3x3 stem with stride 1, no max-pool, BasicBlock
    stages [2, 2, 2, 2] with widths 64, 128, 256, 512 and strides 1, 2, 2, 2, BatchNorm, one
    output.

    Deviation from the original: the official head is avg_pool2d(4), which only fits 32x32
    inputs; here adaptive average pooling to 1x1 replaces it. On 32x32 inputs (4x4 final maps) the
    two are identical; other sizes (8x8 digits) now work too.

    Args:
        in_channels: channels of the error maps (1 grayscale, 3 RGB).
        width: stem width; the stages are width x (1, 2, 4, 8) (64 = the original).
    Input [N, in_channels, H, W] float32; output [N, 1] unbounded.
    """

    def __init__(self, in_channels: int = 3, num_outputs: int = 1, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        in_planes = width
        for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
            layers.append(
                nn.Sequential(
                    _BasicBlock(in_planes, planes, stride), _BasicBlock(planes, planes, 1)
                )
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(8 * width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.pool(out).flatten(1))


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train_resnet_regressor(
    maps: np.ndarray,
    labels: np.ndarray,
    cfg: SecMINNConfig,
    seed: int,
    device: str | torch.device | None = None,
) -> AttackResNet:
    """Train AttackResNet as SecMI_NNs does: MSE between the raw output and the label (a
    regression, not BCE), SGD(lr, momentum, weight_decay), shuffled batches of cfg.batch_size,
    cfg.epochs epochs, or more when needed to reach cfg.min_steps SGD steps (small calibration
    sets: 256 maps at batch 128 give only 30 steps in 15 epochs, where CIFAR's 10k give 1,200).

    Args:
        maps: [N, C, H, W] float32 error maps (>= 0). labels: [N] in {0, 1}, member = 1.
        seed: seeds the initialisation and the shuffling; the global torch RNG is left untouched.
        device: None = CUDA when available, else CPU.
    Returns:
        the model after the last epoch, in eval mode on `device`.
    """
    maps_t = torch.from_numpy(np.array(maps, dtype=np.float32))  # a writable copy
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float32).view(-1)
    if maps_t.dim() != 4 or maps_t.shape[0] != y.shape[0]:
        raise ValueError(
            f"maps must be [N, C, H, W] with N = len(labels); got "
            f"{tuple(maps_t.shape)} and {tuple(y.shape)}"
        )
    dev = _device(device)
    n = maps_t.shape[0]
    # A final batch of one row would make BatchNorm fail in training mode (one value per
    # channel at the 1x1 stage); drop that single row from the epoch instead.
    drop_last = n > cfg.batch_size and n % cfg.batch_size == 1
    forked = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(seed)
        model = AttackResNet(in_channels=maps_t.shape[1], width=cfg.width).to(dev)
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        gen = torch.Generator()
        gen.manual_seed(seed)
        loader = DataLoader(
            TensorDataset(maps_t, y),
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=gen,
            drop_last=drop_last,
        )
        # The official loop deep-copies the model whenever test_acc > test_acc_best but never
        # updates test_acc_best (stays 0), so it effectively keeps the last epoch; we keep the
        # last epoch directly (no selection on held-out labels).
        steps_per_epoch = max(1, len(loader))
        epochs = max(cfg.epochs, -(-cfg.min_steps // steps_per_epoch))
        for _ in range(epochs):
            model.train()
            for xb, yb in loader:
                xb, yb = xb.to(dev), yb.to(dev)
                loss = F.mse_loss(model(xb).view(-1), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return model.eval()


@torch.no_grad()
def predict_resnet(model: nn.Module, maps: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Raw outputs of a trained regressor. maps: [N, C, H, W] float32 -> [N] float32 (higher =
    member, since members were labelled 1)."""
    model.eval()
    dev = next(model.parameters()).device
    x = torch.from_numpy(np.array(maps, dtype=np.float32))  # a writable copy
    outs = [
        model(x[i : i + batch_size].to(dev)).view(-1).float().cpu()
        for i in range(0, x.shape[0], batch_size)
    ]
    if not outs:
        return np.zeros(0, dtype=np.float32)
    return torch.cat(outs).numpy().astype(np.float32)
