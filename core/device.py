"""Where a job runs and in which precision."""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import ContextManager

import torch

from core.errors import ConfigError, Mismatch


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when there is one; asking for `cuda` without one is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise Mismatch("device 'cuda' requested but no CUDA device is visible; use device: auto or cpu")
    return torch.device(name)


def warn_if_nondeterministic(device: torch.device) -> None:
    """Say so when a run cannot be reproduced bit for bit: on CPU the same seed gives the same
    numbers (tested); on CUDA some kernels (atomic adds in backward passes, cuDNN/cuBLAS algorithm
    choice) differ from run to run in the last bits, and training amplifies that."""
    if device.type == "cuda":
        warnings.warn(f"runs on {device}: GPU kernels are not bit-for-bit deterministic, so the same seed gives "
                      "slightly different numbers from run to run (on CPU it gives the same numbers)")


def autocast(device: torch.device, precision: str) -> ContextManager:
    """bf16 autocast on CPU and GPU (on the 2-core avx512_bf16 VM a 4096^3 bf16 matmul is 2.1x fp32); fp32 runs as is."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ConfigError(f"unknown precision {precision!r}; valid: ['bf16', 'fp32']")
    return nullcontext()


def choose_attention(model: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    """Give every timm attention layer in `model` the faster of its two kernels for this device and
    precision, and return `model`.

    Both compute softmax(q k^T / sqrt(d)) v. On CPU under bf16 autocast torch's fused kernel (flash
    attention for CPU) is the bottleneck: its backward took 57% of a vit_fmnist step, and the plain
    path (two batched matmuls and a softmax, which autocast runs in fp32: the release's own
    attention) made the whole step 2.3x faster at batch 256 and 1.5x at batch 64 on one thread
    (benchmarks/NOTES.md). In fp32 on CPU the two are level, and on GPUs the fused kernels are the
    fast ones, so everything else keeps them.
    """
    fused = not (device.type == "cpu" and precision == "bf16")
    for module in attention_layers(model):
        module.fused_attn = fused
    return model


def attention_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """timm's attention layers in `model`: those with a `fused_attn` switch, read on every forward."""
    return [m for m in model.modules() if hasattr(m, "fused_attn")]
