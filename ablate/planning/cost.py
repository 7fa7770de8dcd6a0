"""A rough cost per stage for `ablate plan`: images processed and minutes, nothing run.

Minutes come from the profile's measured MAE pre-training speed of a model variant (img/s at
its default mask ratio and decoder, one worker at the profile's per-worker resources), scaled by
the transformer FLOPs of the stage against that reference: a ratio-0.9 arm encodes fewer tokens, a
fine-tune runs the encoder on all of them forward and backward, a probe forward only. A
data-parallel stage on N workers is counted N times as fast (linear scaling: a lower bound on its
time), a single-worker stage at one worker's speed.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

from core.config import ModelConfig
from core.data_files import carve, test_file_images, train_file_images
from ablate.planning.plan import Plan, Stage
from ablate.spec.profiles import Profile

# An image folder that is not on this machine (a cluster's data) is costed as ImageNet-1K.
IMAGENET_SIZES = (1_281_167, 50_000)
BACKWARD = 2.0  # a backward pass costs about twice the forward


@dataclass(frozen=True)
class Cost:
    images: int  # images through the network (training and evaluation passes)
    seconds: float | None  # None: no measured speed for this model variant in the profile


def split_sizes(data: Mapping[str, Any]) -> tuple[int, int, int]:
    """(train, val, test) images after the val carve and the limits, as core.data makes them."""
    counted = [f(data["dataset"], data.get("root"), data["synthetic_size"]) for f in (train_file_images,
                                                                                       test_file_images)]
    n_train, n_test = counted if None not in counted else IMAGENET_SIZES
    train, n_val = carve(n_train, data["val_fraction"], data.get("train_limit"))
    if data.get("test_limit"):
        n_test = min(n_test, data["test_limit"])
    return train, n_val, n_test


def blocks_flops(width: int, depth: int, tokens: float, mlp_ratio: float) -> float:
    """Forward FLOPs of `depth` pre-norm transformer blocks on `tokens` tokens (2 per multiply-add)."""
    per_token = 2 * (4 + 2 * mlp_ratio) * width ** 2  # qkv, proj, two MLP layers
    attention = 4 * tokens ** 2 * width  # QK^T and attention x V
    return depth * (per_token * tokens + attention)


def encoder_flops(m: Mapping[str, Any], tokens: float | None = None) -> float:
    tokens = tokens if tokens is not None else (m["img_size"] // m["patch_size"]) ** 2 + 1
    return blocks_flops(m["embed_dim"], m["depth"], tokens, m["mlp_ratio"])


def mae_train_flops(m: Mapping[str, Any]) -> float:
    """One MAE training image: encoder on the visible tokens, decoder on all, forward + backward."""
    patches = (m["img_size"] // m["patch_size"]) ** 2
    visible = patches + 1 if m["mask_token_in_encoder"] else int(patches * (1 - m["mask_ratio"])) + 1
    forward = encoder_flops(m, visible) + blocks_flops(m["decoder_embed_dim"], m["decoder_depth"], patches + 1,
                                                       m["mlp_ratio"])
    return forward * (1 + BACKWARD)


def flops_per_second(profile: Profile, variant: str) -> float | None:
    speed = profile.throughput.get(variant)
    if not speed:
        return None
    return speed * mae_train_flops(ModelConfig(variant=variant).model_dump())


def estimate(stage: Stage, profile: Profile) -> Cost:
    m, data, recipe = stage.config["model"], stage.config["data"], stage.recipe
    train, val, test = split_sizes(data)
    epochs, batch = recipe["epochs"], recipe["batch_size"]
    seen = (train // batch) * batch  # full batches only
    forward = encoder_flops(m)
    if stage.runner == "pretrain":
        images, flops = epochs * seen, epochs * seen * mae_train_flops(m)
    elif stage.runner == "linear_probe":
        if recipe["augmentation"] == "none" and recipe["cache_features"]:
            images = train + val + test  # features computed once
        else:
            images = epochs * (seen + val + test)
        flops = images * forward
    else:
        k = recipe.get("tune_blocks")
        tuned = 1.0 if k is None or recipe.get("init") == "random" else min(1.0, k / m["depth"])
        images = epochs * (seen + val) + test  # the test split is read once, at the end
        flops = epochs * (seen * forward * (1 + BACKWARD * tuned) + val * forward) + test * forward
    rate = flops_per_second(profile, m["variant"])
    return Cost(images, flops / (rate * stage.workers) if rate else None)


def parallel_trials(plan: Plan, workers: int = 1) -> int:
    """Trials of `workers` workers at once on this machine (gpu trials: on one GPU, as fractions
    allow; a data-parallel trial whose workers need more than the machine has counts as one)."""
    r = plan.resources
    if r.gpu > 0:
        return max(1, math.floor(1 / (r.gpu * workers) + 1e-9))
    return max(1, math.floor(len(os.sched_getaffinity(0)) / (r.cpu * workers) + 1e-9))
