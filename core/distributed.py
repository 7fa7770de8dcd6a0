"""The process-group view a training engine needs: who am I, how many are we, where do I compute.

A launcher (Ray Train's TorchTrainer, torchrun) initialises `torch.distributed` before the engine
runs; `Dist.current(device)` reads that, or gives the single-process default when nothing is
initialised. No Ray import here: the engine stays an importable function.

With one process every helper is a no-op (no DDP wrapper, no collectives), so the single-process
path runs exactly as before.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.errors import NonFiniteLoss


@dataclass(frozen=True)
class Dist:
    """This process's rank among `world_size` data-parallel processes and its compute device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def current(cls, device: torch.device) -> Dist:
        """The initialised process group's view, else one process on `device`.

        On CUDA each rank computes on the device its launcher made current (Ray Train and
        torchrun call `torch.cuda.set_device` per worker), not on `cuda:0` for all.
        """
        if not (torch_dist.is_available() and torch_dist.is_initialized()):
            return cls(device=device)
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        return cls(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size(), device=device)

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world_size), as `DataSource.batches(shard=...)` takes it."""
        return self.rank, self.world_size

    def is_main(self) -> bool:
        """Rank 0 writes files and reports metrics; the others only train."""
        return self.rank == 0

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over all ranks (a new tensor; the input is left as is)."""
        out = tensor.detach().clone()
        if self.world_size > 1:
            torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
            out /= self.world_size
        return out

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all ranks (a new tensor; the input is left as is)."""
        out = tensor.detach().clone()
        if self.world_size > 1:
            torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
        return out

    def average_buffers(self, model: nn.Module) -> None:
        """Replace every floating-point buffer (BatchNorm running statistics) by its mean over the
        ranks, in place: DDP here does not broadcast buffers, so each rank's drift with its own data."""
        if self.world_size == 1:
            return
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.copy_(self.all_reduce_mean(buffer))

    def barrier(self) -> None:
        if self.world_size > 1:
            torch_dist.barrier()

    def wrap_ddp(self, model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """DistributedDataParallel around `model` with more than one rank; `model` itself otherwise.

        Buffers are not re-broadcast on every forward: the only ones in our models (sin-cos tables
        are parameters; PCA basis and codebook are fitted identically on every rank from the same
        seed) never change during training. DDP broadcasts rank 0's parameters once here.
        """
        if self.world_size == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False,
                                       find_unused_parameters=find_unused_parameters)

    def backward(self, loss: torch.Tensor, accum_iter: int, what: str, epoch: int, step: int) -> float:
        """Back-propagate `loss / accum_iter` and return the loss as a float; a non-finite loss
        raises NonFiniteLoss naming the epoch, the step and (with several) the rank."""
        value = loss.item()
        if not math.isfinite(value):
            where = f" on rank {self.rank}" if self.world_size > 1 else ""
            raise NonFiniteLoss(f"non-finite {what} loss {value} at epoch {epoch}, step {step}{where}")
        (loss / accum_iter).backward()
        return value

    def no_sync(self, model: nn.Module, sync: bool) -> ContextManager:
        """Skip DDP's gradient all-reduce for this backward unless `sync` (the last accumulation micro-step)."""
        if sync or not isinstance(model, DistributedDataParallel):
            return nullcontext()
        return model.no_sync()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (its methods and state-dict names), or `model` itself."""
    return model.module if isinstance(model, DistributedDataParallel) else model
