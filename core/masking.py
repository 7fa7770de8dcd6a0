"""Mask sampling strategies of Table 1f, each a pure function behind a name.

Shared contract: a strategy returns per-patch `noise` of shape (N, L). The model keeps the
`len_keep` patches of lowest noise (argsort, as the reference's random masking), so every
strategy keeps exactly `len_keep(L, ratio)` patches per sample. A strategy that cannot honour
a ratio raises a ValueError that says which ratios it can.
"""
from __future__ import annotations

import math
import random
from typing import Callable

import torch

from core.config import lattice_stride
from core.errors import ConfigError

MaskNoise = Callable[[int, int, float, torch.Generator | None, torch.device], torch.Tensor]


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U[0, 1) drawn on the generator's own device, returned on `device`."""
    if generator is None:  # no generator argument at all: torch.compile traces rand with a dynamic batch then
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    where = generator.device if generator is not None else device
    return torch.randint(0, high, shape, generator=generator, device=where).to(device)


def len_keep(num_patches: int, ratio: float) -> int:
    """Patches kept, `int(L * (1 - ratio))` as the reference; the epsilon only absorbs float error
    such as 81 * (1 - 8/9) = 8.999... so lattice ratios keep their exact count."""
    return int(num_patches * (1.0 - ratio) + 1e-6)


def random_noise(n: int, grid: int, ratio: float, generator: torch.Generator | None,
                 device: torch.device) -> torch.Tensor:
    """Uniform per-sample shuffle: the reference's `noise ~ U[0, 1)`."""
    return _rand((n, grid * grid), generator, device)


def grid_noise(n: int, grid: int, ratio: float, generator: torch.Generator | None,
               device: torch.device) -> torch.Tensor:
    """Keep a regular lattice of stride s (one patch of every s*s); its offset is random per sample."""
    stride = lattice_stride(grid, ratio)
    offsets = _randint(stride, (n, 2), generator, device)
    coords = torch.arange(grid, device=device)
    row_kept = (coords[None, :] - offsets[:, :1]) % stride == 0  # (N, g)
    col_kept = (coords[None, :] - offsets[:, 1:]) % stride == 0  # (N, g)
    kept = (row_kept[:, :, None] & col_kept[:, None, :]).reshape(n, grid * grid)  # (N, L) row-major
    return _rand((n, grid * grid), generator, device) + (~kept).float()  # kept in [0, 1), removed in [1, 2)


def block_noise(n: int, grid: int, ratio: float, generator: torch.Generator | None,
                device: torch.device) -> torch.Tensor:
    """BEiT-style block-wise masking: remove random rectangles (area >= min_patches, aspect ratio
    log-uniform in [0.3, 1/0.3]) until exactly L - len_keep patches are removed.

    BEiT's minimum block is 16 patches on a 14x14 grid; it is scaled with the grid's area here.
    Blocks that cannot add a patch after 10 tries stop the loop, and the remainder (rare) is
    removed at random, so the count is always exact.
    """
    num = grid * grid
    to_remove = num - len_keep(num, ratio)
    min_patches = max(1, round(16 * num / 196))
    rng = random.Random(int(_randint(2**62, (1,), generator, torch.device("cpu"))))
    removed = torch.zeros(n, grid, grid, dtype=torch.bool)
    log_lo, log_hi = math.log(0.3), math.log(1 / 0.3)
    for b in range(n):
        count = 0
        while count < to_remove:
            added = 0
            for _ in range(10):
                target = rng.uniform(min_patches, max(min_patches, to_remove - count))
                aspect = math.exp(rng.uniform(log_lo, log_hi))
                h = int(round(math.sqrt(target * aspect)))
                w = int(round(math.sqrt(target / aspect)))
                if not (0 < h < grid and 0 < w < grid):
                    continue
                top = rng.randrange(grid - h + 1)
                left = rng.randrange(grid - w + 1)
                window = removed[b, top:top + h, left:left + w]
                fresh = int((~window).sum())
                if 0 < fresh <= to_remove - count:
                    window[:] = True
                    added = fresh
                    break
            if added == 0:
                break
            count += added
        if count < to_remove:  # top up at random so the count is exact
            free = (~removed[b]).reshape(-1).nonzero().squeeze(1)
            pick = free[rng.sample(range(free.numel()), to_remove - count)]
            removed[b].view(-1)[pick] = True
    return _rand((n, num), generator, device) + removed.reshape(n, num).to(device).float()


MASKING: dict[str, MaskNoise] = {"random": random_noise, "block": block_noise, "grid": grid_noise}


def get_masking(name: str) -> MaskNoise:
    if name not in MASKING:
        raise ConfigError(f"unknown mask sampling {name!r}; valid: {sorted(MASKING)}")
    return MASKING[name]


def check_ratio(name: str, grid: int, ratio: float) -> None:
    """Raise now, at construction, if a strategy cannot honour `ratio` on this grid."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"mask_ratio {ratio} is outside [0, 1)")
    if name == "grid":
        grid_noise(1, grid, ratio, None, torch.device("cpu"))
    else:
        get_masking(name)
