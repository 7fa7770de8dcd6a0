"""What every engine (pre-training, linear probing, fine-tuning) does around its own epoch: where
it runs, its seeds, resuming, checkpoints and reports. An engine builds its model and optimiser
and says what one epoch is; `Run` does the rest the same way for all three:

    run = Run.start("finetune", job, job.finetune, out_dir)  # device, threads, the seed (core/seeding.py)
    model, optimizer = ...                                    # built from the seed
    run.resume(model, optimizer, effective_batch)             # the newest good checkpoint of this config
    metrics = run.epochs(one_epoch, model=model, optimizer=optimizer, effective_batch=..., report=report)

One resume scheme: a checkpoint holds the model (or the probe's head), the optimiser, the epoch,
the job's config, the protocol, the global RNG states, the numerics version and the metrics of its
epoch. A run resumes from it only when all of these match what it would compute; a checkpoint of
another stage or config is an error (each stage needs its own folder), one of another numerics
version is set aside with a warning and the run starts afresh.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core import NUMERICS_VERSION
from core.checkpoint import load_latest, save_checkpoint
from core.device import resolve_device, warn_if_nondeterministic
from core.distributed import Dist
from core.errors import ConfigError
from core.seeding import rng_state, seed_epoch, seed_everything, set_rng_state

Report = Callable[[dict], None]
# Fields that say where and how fast a job runs, not what it computes: a resume may change them.
# accum_iter too: a checkpoint of N workers resumes on M with accum_iter scaled by N / M, the same
# effective batch (`Run.resume` warns when the effective batch changes).
RUN_ONLY_FIELDS = frozenset({"device", "threads", "checkpoint_every", "compile", "num_workers", "accum_iter"})
FIRST_NUMERICS = 1  # a checkpoint written before checkpoints recorded their numerics version


@dataclass
class Run:
    """One engine's run in `out_dir`: `cfg` is its recipe (seed, epochs, device, threads,
    checkpoint_every), `config` the whole job as a checkpoint records it."""

    protocol: str  # "pretrain", "linear_probe" or "finetune": which engine, and its NUMERICS_VERSION
    cfg: Any
    config: dict[str, Any]
    out_dir: Path
    dist: Dist
    start_epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)  # the last epoch's (a resumed run: its checkpoint's)

    @classmethod
    def start(cls, protocol: str, job: Any, cfg: Any, out_dir: Path) -> Run:
        """Pick the device, set the threads, seed everything from `cfg.seed`: call before building."""
        out_dir = Path(out_dir)
        dist = Dist.current(resolve_device(cfg.device))
        warn_if_nondeterministic(dist.device)
        if dist.is_main():
            out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
        return cls(protocol, cfg, job.model_dump(mode="json"), out_dir, dist)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def done(self) -> bool:
        return self.start_epoch >= self.cfg.epochs

    def resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, effective_batch: int) -> bool:
        """Load the newest good checkpoint of this run into `model` and `optimizer`; False: none."""
        state = load_resume_state(self.out_dir, self.protocol, self.config)
        if state is None:
            return False
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("rng"):
            set_rng_state(state["rng"])
        self.start_epoch, self.metrics = state["epoch"] + 1, dict(state.get("metrics", {}))
        before = state.get("effective_batch")
        if before is not None and before != effective_batch and self.dist.is_main():
            warnings.warn(f"{self.out_dir}: resuming a run trained with an effective batch of {before} at "
                          f"{effective_batch} (batch_size x workers x accum_iter): its peak lr and images per step "
                          f"change; keep the product to continue the same run", stacklevel=2)
        return True

    def epochs(self, one_epoch: Callable[[int], dict], *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               effective_batch: int, report: Report | None = None) -> dict[str, Any]:
        """Run the epochs left: seed each (`seed_epoch`), run it, checkpoint every
        `checkpoint_every` epochs and at the last, then report its metrics
        (on rank 0). Returns the last epoch's metrics."""
        for epoch in range(self.start_epoch, self.cfg.epochs):
            seed_epoch(self.cfg.seed, epoch, self.dist.rank)
            self.metrics = one_epoch(epoch)
            due = (epoch + 1) % self.cfg.checkpoint_every == 0 or epoch + 1 == self.cfg.epochs
            if self.dist.is_main() and due:
                save_checkpoint(self.out_dir, model=model, optimizer=optimizer, epoch=epoch, config=self.config,
                                extra={"protocol": self.protocol, "numerics": NUMERICS_VERSION[self.protocol],
                                       "metrics": self.metrics, "rng": rng_state(), "workers": self.dist.world_size,
                                       "effective_batch": effective_batch})
            self.dist.barrier()  # nobody runs ahead of a checkpoint that is still being written
            if report is not None and self.dist.is_main():
                report(self.metrics)
        return self.metrics


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _comparable(v) if isinstance(v, Mapping) else v
            for k, v in config.items() if k not in RUN_ONLY_FIELDS}


def load_resume_state(out_dir: Path, protocol: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The newest good checkpoint of this protocol, config and numerics version in `out_dir`, or
    None to start afresh (none there, or one of another numerics version: a warning says so).

    A checkpoint of another stage or of a different config is an error, not a silent restart:
    each stage needs its own `out_dir`. Pre-training checkpoints written before checkpoints named
    their protocol (numerics version 1) count as pre-training's.
    """
    state = load_latest(out_dir)
    if state is None:
        return None
    found = state.get("protocol", "pretrain")
    if found != protocol:
        raise ConfigError(f"{out_dir} holds a checkpoint of {found!r}, not of {protocol!r}: give each stage its "
                          f"own out_dir")
    if _comparable(state["config"]) != _comparable(config):
        raise ConfigError(f"{out_dir} holds a {protocol} checkpoint of a different config; use a fresh out_dir")
    numerics, now = state.get("numerics", FIRST_NUMERICS), NUMERICS_VERSION[protocol]
    if numerics != now:
        warnings.warn(f"{out_dir}: its {protocol} checkpoint (epoch {state['epoch']}) was computed by numerics "
                      f"version {numerics}, this code computes version {now}: starting afresh", stacklevel=2)
        return None
    return state
