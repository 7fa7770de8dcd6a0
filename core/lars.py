"""LARS, the linear-probing optimiser, as the release's `util/lars.py`.

SGD with momentum where the update of every matrix-shaped parameter (ndim > 1) is
weight-decayed and rescaled by the trust ratio `trust * ||p|| / ||update||`. Biases and
normalisation parameters (ndim <= 1) get neither decay nor adaptation. No global rate
scaling: the schedule sets `lr` directly.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch


class LARS(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                update = p.grad
                if update is None:
                    continue
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(update)
                    one = torch.ones_like(param_norm)
                    # A zero norm on either side leaves the update unscaled.
                    q = torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0.0,
                                                group["trust_coefficient"] * param_norm / update_norm, one),
                                    one)
                    update = update.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss
