"""The one seeding rule of every engine.

A run has one seed. What is built before training (the initial weights, a random encoder, a probe
head, a fitted target's sample) comes from the seed itself: `seed_everything(seed)` before anything
is built. Every draw during training comes from a stream `derive(seed, stream, *path)` (numpy's
SeedSequence of the seed, the stream and the path, 64 bits):

| stream  | path                  | what draws                                           | where                     |
|---------|-----------------------|------------------------------------------------------|---------------------------|
| DATA    | (epoch, split)        | an epoch's order, and the generator of its draws     | core.data.epoch_generator |
| BATCH   | (epoch, split, index) | one micro-batch's augmentation                       | core.data.batch_generator |
| MASK    | (epoch, index)        | one micro-batch's mask noise (any rank, same mask)   | core.pretrain             |
| GLOBALS | (epoch, rank)         | the global RNGs during an epoch (mixup, cutmix,      | `seed_epoch`, called by   |
|         |                       | erasing, drop path): different on every rank         | core.engine for all three |

So a run resumed at an epoch boundary repeats the uninterrupted one bit for bit on CPU, and a
stream does not depend on the number of loader processes. The stream comes first: SeedSequence
ignores trailing zeros, so paths alone collide ((e, 0) and (e, 0, 0) are one seed: before this
rule, an epoch's order and its first batch's augmentation were). The evaluations also carry the
global RNG states in their checkpoints (`rng_state`).
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from enum import IntEnum
from typing import Any

import numpy as np
import torch



class Stream(IntEnum):
    DATA = 1
    BATCH = 2
    MASK = 3
    GLOBALS = 4


def derive(seed: int, stream: Stream, *path: int) -> int:
    """The 64-bit seed of `stream` at `path` in a run seeded `seed`."""
    return int(np.random.SeedSequence([seed % 2**64, int(stream), *path]).generate_state(1, dtype=np.uint64)[0])


def generator(seed: int, stream: Stream, *path: int) -> torch.Generator:
    """A CPU generator of `stream` at `path` (see the table above)."""
    return torch.Generator().manual_seed(derive(seed, stream, *path))


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """The global generators for epoch `epoch` on worker `rank`."""
    seed_everything(derive(seed, Stream.GLOBALS, epoch, rank))


def rng_state() -> dict[str, Any]:
    """The global RNG states, in types a weights-only load accepts."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
