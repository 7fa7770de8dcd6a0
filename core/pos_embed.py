"""Fixed 2-D sin-cos positional embeddings, numerically as the official MAE release.

For the token at grid row i, column j the vector is [sin(j w) | cos(j w) | sin(i w) | cos(i w)],
each quarter D/4 wide, w_k = 10000^(-k / (D/4)). The first half encodes the column (the
reference's variable names say otherwise). timm's and Hugging Face's builders order the quarters
differently, so they are not substitutes.
"""
from __future__ import annotations

import torch

from core.errors import ConfigError


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) as [sin(p w) | cos(p w)]."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    out = positions.to(torch.float64)[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """(grid_size**2 [+1], dim) float32 table; the cls row (first) is zeros."""
    if dim % 4:
        raise ConfigError(f"sin-cos embedding width {dim} must be divisible by 4")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (g, g) each, row-major tokens
    emb = torch.cat([sincos_1d(dim // 2, cols.reshape(-1)), sincos_1d(dim // 2, rows.reshape(-1))], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb], dim=0)
    return emb.float()
