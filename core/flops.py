"""Training FLOPs, counted by torch's FLOP counter rather than estimated by hand."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def train_flops_per_image(model: torch.nn.Module, device: torch.device, batch: int = 2) -> float:
    """FLOPs of one forward and backward pass per image at the model's mask ratio (matmuls and
    attention, as the counter counts them; the paper's Table 1c ratio is of the same kind)."""
    cfg = model.cfg
    imgs = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)
    was_training = model.training
    model.train()
    with FlopCounterMode(display=False) as counter:
        loss, _, _ = model(imgs)
        loss.backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return counter.get_total_flops() / batch


def forward_flops_per_image(module: torch.nn.Module, *inputs: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops() / inputs[0].shape[0]
