"""Training FLOPs, counted by torch's FLOP counter rather than estimated by hand."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


@contextmanager
def _counting() -> Iterator[FlopCounterMode]:
    """A FLOP counter that sees attention whichever kernel the model runs: torch's counter has no
    formula for the CPU flash-attention ops (it counted no attention there, 5% of a vit_fmnist
    step), so SDPA is counted through its math backend, as the plain path is."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        yield counter


def train_flops_per_image(model: torch.nn.Module, device: torch.device, batch: int = 2,
                          loss_only: bool = True) -> float:
    """FLOPs of one forward and backward pass per image at the model's mask ratio (matmuls and
    attention, as the counter counts them; the paper's Table 1c ratio is of the same kind): the
    training step's (`loss_only`, as the engine runs it), or the full pass's with every prediction."""
    cfg = model.cfg
    imgs = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)
    was_training = model.training
    model.train()
    with _counting() as counter:
        loss, _, _ = model(imgs, loss_only=loss_only)
        loss.backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return counter.get_total_flops() / batch


def forward_flops_per_image(module: torch.nn.Module, *inputs: torch.Tensor) -> float:
    with _counting() as counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops() / inputs[0].shape[0]
