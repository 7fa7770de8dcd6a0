"""Reconstruction grids from saved arrays (the paper's Figures 2 and 4).

The input is one `.npz` per arm, written by the evaluation stage:
`ratios` (r,), `original` (n, H, W, C) in [0, 1], `masked` and `recon` (r, n, H, W, C),
C = 1 (drawn in grey) or 3. No model is loaded here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure

from dashboards.figures import new_figure

CELL = 1.05  # inches per image


def load_reconstructions(npz_path: Path | str) -> dict[str, np.ndarray]:
    with np.load(npz_path) as data:
        missing = {"ratios", "original", "masked", "recon"} - set(data.files)
        if missing:
            raise KeyError(f"{npz_path}: missing arrays {sorted(missing)}; has {sorted(data.files)}")
        arrays = {k: np.asarray(data[k]) for k in ("ratios", "original", "masked", "recon")}
    r, n = len(arrays["ratios"]), len(arrays["original"])
    for k in ("masked", "recon"):
        if arrays[k].shape[:2] != (r, n) or arrays[k].shape[2:] != arrays["original"].shape[1:]:
            raise ValueError(f"{npz_path}: {k} has shape {arrays[k].shape}, expected {(r, *arrays['original'].shape)}")
    return arrays


GAP = 1  # pixels of white between tiles


def mosaic(tiles: list[list[np.ndarray]]) -> np.ndarray:
    """Rows of (H, W, C) images in [0, 1] as one (H', W', C) image, GAP white pixels apart. One
    image per panel, not one axes per tile: a grid of 40 axes took most of a report's drawing time."""
    h, w, c = tiles[0][0].shape
    rows, cols = len(tiles), len(tiles[0])
    out = np.ones((rows * (h + GAP) - GAP, cols * (w + GAP) - GAP, c), dtype=np.float32)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            out[i * (h + GAP):i * (h + GAP) + h, j * (w + GAP):j * (w + GAP) + w] = np.clip(tile, 0.0, 1.0)
    return out


def _panel(ax: Axes, tiles: list[list[np.ndarray]], labels: list[str]) -> None:
    """The tiles as one image, each column labelled above."""
    image = mosaic(tiles)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    w = tiles[0][0].shape[1]
    ax.set_xticks([j * (w + GAP) + (w - 1) / 2 for j in range(len(labels))], labels, fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _nearest(ratios: np.ndarray, target: float) -> int:
    return int(np.argmin(np.abs(ratios - target)))


def _figure2(sub: SubFigure, arrays: dict[str, np.ndarray], ratio_index: int, samples: int) -> None:
    """Rows of (masked | reconstruction | original) at one ratio."""
    ratio = float(arrays["ratios"][ratio_index])
    sub.suptitle(f"Figure 2 style: mask ratio {ratio:.0%}", fontsize=10)
    tiles = [[arrays["masked"][ratio_index, i], arrays["recon"][ratio_index, i], arrays["original"][i]]
             for i in range(samples)]
    _panel(sub.subplots(), tiles, ["masked", "reconstruction", "original"])


def _figure4(sub: SubFigure, arrays: dict[str, np.ndarray], samples: int) -> None:
    """One pair per ratio, each (masked, reconstruction), the original last."""
    ratios = arrays["ratios"]
    sub.suptitle("Figure 4 style: one pair per mask ratio", fontsize=10)
    tiles = [[image for k in range(len(ratios)) for image in (arrays["masked"][k, i], arrays["recon"][k, i])]
             + [arrays["original"][i]] for i in range(samples)]
    labels = [f"{float(r):.0%}\n{what}" for r in ratios for what in ("masked", "recon.")] + ["original"]
    _panel(sub.subplots(), tiles, labels)


def reconstruction_grid(npz_path: Path | str, *, title: str | None = None, ratio: float = 0.75,
                        max_samples: int = 6, max_samples_per_ratio: int = 3) -> Figure:
    """Figure 2 (masked | reconstruction | original, at the ratio nearest `ratio`) beside
    Figure 4 (every saved ratio, for the first few images). Grey for 1-channel images."""
    arrays = load_reconstructions(npz_path)
    n, r = len(arrays["original"]), len(arrays["ratios"])
    if n == 0 or r == 0:
        fig = new_figure(4, 1.5)
        fig.text(0.5, 0.5, f"{Path(npz_path).name}: no images", ha="center", va="center")
        return fig
    rows2 = min(n, max_samples)
    rows4 = min(n, max_samples_per_ratio) if r > 1 else 0
    cols4 = 2 * r + 1 if rows4 else 0
    width = CELL * (3 + cols4) + (0.4 if rows4 else 0.0)
    fig = new_figure(max(width, 4.0), CELL * max(rows2, rows4) + 0.9)
    fig.suptitle(title or f"Reconstructions: {Path(npz_path).stem}", fontsize=11)
    if rows4:
        left, right = fig.subfigures(1, 2, width_ratios=[3, cols4], wspace=0.03)
        _figure2(left, arrays, _nearest(arrays["ratios"], ratio), rows2)
        _figure4(right, arrays, rows4)
    else:
        _figure2(fig, arrays, 0, rows2)
    return fig
