"""Where a job runs and in which precision."""
from __future__ import annotations

import random
from contextlib import nullcontext
from typing import ContextManager

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when there is one; asking for `cuda` without one is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is visible; use device: auto or cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> ContextManager:
    """bf16 autocast on CPU and GPU (on a 2-core CPU bf16 matmul is about 3x fp32); fp32 runs as is."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}; valid: ['bf16', 'fp32']")
    return nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
