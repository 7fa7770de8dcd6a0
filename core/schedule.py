"""The learning-rate schedule shared by pre-training, fine-tuning and linear probing.

As the release's `util/lr_sched.adjust_learning_rate`: set once per iteration (every
`accum_iter` steps) from the fractional epoch `step / steps_per_epoch + epoch`; linear
warmup from 0 to `lr` over `warmup_epochs`, then a half-cycle cosine from `lr` to
`min_lr` at `epochs`. Parameter groups carrying an `lr_scale` (layer-wise decay) get
`lr * lr_scale`.
"""
from __future__ import annotations

import math

import torch

from core.config import OptimConfig


def cosine_lr(epoch: float, *, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """The learning rate at fractional `epoch` (0 <= epoch <= epochs)."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    if epochs <= warmup_epochs:  # no room for a cosine phase: the release would divide by zero here
        return lr
    progress = (epoch - warmup_epochs) / (epochs - warmup_epochs)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def adjust_learning_rate(optimizer: torch.optim.Optimizer, epoch: float, cfg: OptimConfig,
                         lr: float | None = None) -> float:
    """Set every group's lr for fractional `epoch`; `lr` defaults to `cfg.lr()` (blr * batch / 256)."""
    peak = cfg.lr() if lr is None else lr
    value = cosine_lr(epoch, lr=peak, min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs)
    for group in optimizer.param_groups:
        group["lr"] = value * group.get("lr_scale", 1.0)
    return value
