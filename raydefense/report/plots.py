"""ROC figures and sample-image grids as PNG files.

Uses matplotlib's object API with the Agg canvas directly (no pyplot), so it never touches the
global backend or figure registry of the calling process and is safe from worker threads.
Files are written with an explicit PNG format, so callers may pass a temporary name without the
.png suffix and rename it into place.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from raydefense.roster import target_order_key

ROC_DPI = 120
LOG_FPR_MIN = 1e-3


def roc_auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoidal area under a ROC curve given as points (any order), both in [0, 1]."""
    fpr = np.asarray(fpr, dtype=np.float64).ravel()
    tpr = np.asarray(tpr, dtype=np.float64).ravel()
    order = np.lexsort((tpr, fpr))  # by FPR, ties by TPR: vertical segments stay vertical
    f, t = fpr[order], tpr[order]
    return float(np.sum(np.diff(f) * (t[1:] + t[:-1]) / 2.0))


def _legend_order(labels: list[str]) -> list[str]:
    """Target-like labels in report order (baseline, teacher_k, dualmd, student, others)."""
    return sorted(labels, key=target_order_key)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: str) -> None:
    """Saves a two-panel ROC figure as PNG (dpi 120).

    Left panel: log-scale FPR from 1e-3 to 1 (the low-FPR regime that TPR@1%FPR and TPR@0.1%FPR
    read). Right panel: linear axes (the whole curve, whose area is the AUC). Both show the chance
    diagonal; the legend gives each curve's trapezoidal AUC.

    Args:
        curves: label -> (fpr, tpr), each a 1-D array of the same length with values in [0, 1].
        title: figure title.
        path: output file; written as PNG whatever its suffix.
    """
    fig = Figure(figsize=(10.0, 4.4))
    FigureCanvasAgg(fig)
    ax_log, ax_lin = fig.subplots(1, 2)

    chance = np.logspace(math.log10(LOG_FPR_MIN), 0.0, 200)
    ax_log.plot(chance, chance, linestyle="--", color="0.6", linewidth=1.0, label="chance")
    ax_lin.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="0.6", linewidth=1.0)

    for label in _legend_order(list(curves)):
        fpr, tpr = (np.asarray(a, dtype=np.float64).ravel() for a in curves[label])
        if fpr.shape != tpr.shape:
            raise ValueError(f"ROC curve {label!r}: fpr has {fpr.size} points, tpr has {tpr.size}")
        order = np.lexsort((tpr, fpr))
        fpr, tpr = fpr[order], tpr[order]
        text = f"{label} (AUC {roc_auc(fpr, tpr):.3f})" if fpr.size > 1 else label
        (line,) = ax_log.plot(np.clip(fpr, LOG_FPR_MIN, 1.0), tpr, linewidth=1.5, label=text)
        ax_lin.plot(fpr, tpr, linewidth=1.5, color=line.get_color())

    ax_log.set_xscale("log")
    ax_log.set_xlim(LOG_FPR_MIN, 1.0)
    ax_log.set_ylim(0.0, 1.0)
    ax_log.set_title("log FPR (low-FPR regime)", fontsize=10)
    ax_lin.set_xlim(0.0, 1.0)
    ax_lin.set_ylim(0.0, 1.0)
    ax_lin.set_aspect("equal")
    ax_lin.set_title("linear", fontsize=10)
    for ax in (ax_log, ax_lin):
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.grid(True, which="major", alpha=0.3)
    ax_log.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=ROC_DPI, format="png")


def grid_layout(
    n: int,
    height: int,
    width: int,
    nrow: int | None = None,
    *,
    min_tile: int = 32,
    padding: int = 2,
) -> tuple[int, int, int, int, int]:
    """Geometry of an image grid: (columns, rows, scale, out_height, out_width) in pixels.

    `nrow` is the number of images per grid row (torchvision's convention); default
    ceil(sqrt(n)). Tiles are upscaled by an integer factor so the shorter side is >= min_tile.
    """
    cols = max(1, min(n, nrow if nrow else math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    scale = max(1, math.ceil(min_tile / max(1, min(height, width))))
    out_h = rows * height * scale + (rows + 1) * padding
    out_w = cols * width * scale + (cols + 1) * padding
    return cols, rows, scale, out_h, out_w


def image_grid(
    images: np.ndarray,
    nrow: int | None = None,
    *,
    min_tile: int = 32,
    padding: int = 2,
    pad_value: int = 255,
) -> np.ndarray:
    """Tiles images into one uint8 array.

    Args:
        images: [N, C, H, W] (or [N, H, W]) float in [-1, 1], C = 1 or 3; values outside the range
            are clipped, NaN becomes -1.
        nrow: images per grid row (default ceil(sqrt(N))).
        min_tile: upscale (nearest neighbour, integer factor) until a tile's shorter side is at
            least this many pixels, so 8x8 digits stay visible.
        padding: pixels between tiles and around the border, filled with pad_value.
    Returns:
        [H_out, W_out] uint8 for C = 1, [H_out, W_out, 3] uint8 for C = 3 (see `grid_layout`).
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, C, H, W] with C in (1, 3), got shape {x.shape}")
    n, c, h, w = x.shape
    if n == 0:
        raise ValueError("images is empty (N = 0); nothing to tile")
    cols, rows, scale, out_h, out_w = grid_layout(n, h, w, nrow, min_tile=min_tile, padding=padding)
    x = np.nan_to_num(x, nan=-1.0, posinf=1.0, neginf=-1.0)
    pixels = np.rint((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    pixels = pixels.repeat(scale, axis=2).repeat(scale, axis=3)  # nearest-neighbour upscale
    pixels = pixels.transpose(0, 2, 3, 1)  # [N, H', W', C]
    th, tw = h * scale, w * scale

    grid = np.full((out_h, out_w, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        top = padding + r * (th + padding)
        left = padding + col * (tw + padding)
        grid[top : top + th, left : left + tw] = pixels[i]
    return grid[..., 0] if c == 1 else grid


def save_image_grid(images: np.ndarray, path: str, nrow: int | None = None) -> None:
    """Saves images [N, C, H, W] float in [-1, 1] (C = 1 or 3) as a PNG grid.

    Small images are upscaled with nearest neighbour to at least 32 px per tile, with 2 px white
    padding (see `image_grid` / `grid_layout` for the exact size). Written as PNG whatever the
    suffix of `path`.
    """
    grid = image_grid(images, nrow)
    try:
        from PIL import Image  # ships with matplotlib; writes true grayscale PNGs
    except ImportError:  # pragma: no cover - matplotlib always brings Pillow
        import matplotlib.image as mpimg

        mpimg.imsave(
            path, grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, format="png"
        )
        return
    # uint8 [H, W] maps to mode "L", [H, W, 3] to "RGB" (the `mode` argument is deprecated).
    Image.fromarray(np.ascontiguousarray(grid)).save(path, format="PNG")
