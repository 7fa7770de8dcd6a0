"""Reconstruction targets of Table 1d, each a small module behind a name.

Shared contract on patchified images `patches` (N, L, P), P = p*p*C, already mean/std
normalised by the data pipeline as in the reference:
- `out_dim`: width of the decoder's prediction per patch;
- `forward(patches)`: the target, (N, L, out_dim) floats or (N, L) token ids, each patch's from
  that patch alone (the training step asks only for the removed patches' targets, any L);
- `loss(pred, target)`: per-patch loss (N, L), averaged over removed patches by the model;
- `to_pixels(pred, patches)`: the prediction as pixel patches (N, L, P), for figures.
Targets with state (PCA basis, token codebook) keep it in buffers, so it is saved with the model,
and are fitted once on training patches before pre-training starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.config import ModelConfig
from core.errors import ConfigError, MissingFile


class PixelTarget(nn.Module):
    """Predict the (normalised) pixels of each patch."""

    needs_fit = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.out_dim = cfg.patch_dim

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return patches

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((pred - target) ** 2).mean(dim=-1)  # (N, L)

    def to_pixels(self, pred: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return pred


class NormPixelTarget(PixelTarget):
    """Pixels normalised per patch over all p*p*C values jointly, unbiased variance, eps 1e-6."""

    eps = 1e-6

    def _stats(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = patches.mean(dim=-1, keepdim=True)  # (N, L, 1)
        var = patches.var(dim=-1, keepdim=True)  # unbiased, as the reference
        return mean, (var + self.eps) ** 0.5

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(patches)
        return (patches - mean) / std

    def to_pixels(self, pred: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(patches)  # the true patch's statistics, as the release's visualisation
        return pred * std + mean


class PCATarget(PixelTarget):
    """The largest `pca_components` principal-component coefficients of each patch (the paper: 96)."""

    needs_fit = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.out_dim = cfg.pca_components
        self.register_buffer("mean", torch.zeros(cfg.patch_dim))
        self.register_buffer("components", torch.zeros(cfg.pca_components, cfg.patch_dim))  # (k, P) orthonormal rows

    @torch.no_grad()
    def fit(self, patches: torch.Tensor, generator: torch.Generator | None = None) -> None:
        flat = patches.reshape(-1, patches.shape[-1]).double()  # (M, P)
        mean = flat.mean(dim=0)
        _, _, vh = torch.linalg.svd(flat - mean, full_matrices=False)  # rows of vh: components, by variance
        self.mean.copy_(mean.float())
        self.components.copy_(vh[: self.out_dim].float())

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return (patches - self.mean) @ self.components.T  # (N, L, k)

    def to_pixels(self, pred: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return pred @ self.components + self.mean


class TokenTarget(nn.Module):
    """Discrete token ids from a patch codebook, predicted with cross-entropy.

    The paper used DALL-E's dVAE tokenizer, which cannot be downloaded here; the built-in tokenizer
    is a k-means codebook of `codebook_size` centroids fitted on training patches. A user's codebook
    (a (K, P) array in .npy or .pt, loaded without executing code) replaces it via `codebook_path`.
    """

    needs_fit = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.out_dim = cfg.codebook_size
        self.register_buffer("codebook", torch.zeros(cfg.codebook_size, cfg.patch_dim))
        if cfg.codebook_path:
            self.codebook.copy_(load_codebook(Path(cfg.codebook_path), cfg.codebook_size, cfg.patch_dim))
            self.needs_fit = False

    @torch.no_grad()
    def fit(self, patches: torch.Tensor, generator: torch.Generator | None = None, iters: int = 25) -> None:
        self.codebook.copy_(kmeans(patches.reshape(-1, patches.shape[-1]).float(), self.out_dim, iters, generator))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        n, num, p = patches.shape
        dist = torch.cdist(patches.reshape(-1, p).float(), self.codebook)  # (N*L, K)
        return dist.argmin(dim=1).reshape(n, num)  # (N, L) ids

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, num, k = pred.shape
        return F.cross_entropy(pred.reshape(n * num, k).float(), target.reshape(-1), reduction="none").reshape(n, num)

    def to_pixels(self, pred: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return self.codebook[pred.argmax(dim=-1)]


def kmeans(points: torch.Tensor, k: int, iters: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; an emptied cluster is re-seeded at the worst-fit point."""
    m = points.shape[0]
    if m < k:
        raise ConfigError(f"k-means needs at least {k} patches to fit {k} tokens, got {m}")
    centroids = points[torch.randint(0, m, (1,), generator=generator)]
    closest = torch.cdist(points, centroids).squeeze(1) ** 2
    for _ in range(1, k):  # k-means++: sample proportional to squared distance
        pick = torch.multinomial(closest + 1e-12, 1, generator=generator)
        centroids = torch.cat([centroids, points[pick]])
        closest = torch.minimum(closest, torch.cdist(points, points[pick]).squeeze(1) ** 2)
    for _ in range(iters):
        dist = torch.cdist(points, centroids)  # (M, K)
        assign = dist.argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            worst = dist.min(dim=1).values.topk(int(empty.sum())).indices
            centroids[empty] = points[worst]
    return centroids


def load_codebook(path: Path, k: int, p: int) -> torch.Tensor:
    if not path.is_file():
        raise MissingFile(f"codebook_path {path}: no such file (expected a ({k}, {p}) array in .npy or .pt)")
    if path.suffix == ".npy":
        book = torch.from_numpy(np.load(path, allow_pickle=False))
    else:
        book = torch.load(path, map_location="cpu", weights_only=True)
    if tuple(book.shape) != (k, p):
        raise ConfigError(f"codebook_path {path}: shape {tuple(book.shape)}, expected (codebook_size={k}, patch_dim={p})")
    return book.float()


TARGETS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "pixel": PixelTarget,
    "norm_pixel": NormPixelTarget,
    "pca": PCATarget,
    "token": TokenTarget,
}


def build_target(cfg: ModelConfig) -> nn.Module:
    if cfg.target not in TARGETS:
        raise ConfigError(f"unknown target {cfg.target!r}; valid: {sorted(TARGETS)}")
    return TARGETS[cfg.target](cfg)
