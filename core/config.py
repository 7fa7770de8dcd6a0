"""Typed, frozen configuration of one MAE job, validated once at the edge.

`core/` receives these objects, never dicts. Every model field is explicit after
validation: a named `variant` fills the fields the user did not set, so the
resolved config of a trial says exactly what ran.
"""
from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.errors import ConfigError


class Frozen(BaseModel):
    # allow_inf_nan=False: an infinite lr or a NaN ratio is refused here, not found in a trial.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


# Upper bounds that keep numbers within what runs: an epoch is an MLflow step (int64), and a
# run's seed also seeds numpy's global generator (core/seeding.py), which takes 32 bits.
MAX_EPOCHS = 100_000
MAX_SEED = 2**32 - 1


# Named model sizes. Encoder (embed_dim, depth, num_heads) and decoder
# (decoder_embed_dim, decoder_depth, decoder_num_heads) as in the release.
MODEL_VARIANTS: dict[str, dict[str, Any]] = {
    "vit_base_patch16": dict(img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                             decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "vit_large_patch16": dict(img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
                              decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "vit_huge_patch14": dict(img_size=224, patch_size=14, in_chans=3, embed_dim=1280, depth=32, num_heads=16,
                             decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    # ViT-Tiny at CIFAR size (environment.md's benchmark config).
    "vit_tiny_cifar": dict(img_size=32, patch_size=4, in_chans=3, embed_dim=192, depth=12, num_heads=3,
                           decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4),
    # Fashion-MNIST size (environment.md's benchmark config): 7x7 patches of 4x4.
    "vit_fmnist": dict(img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=4, num_heads=4,
                       decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4),
    # Test-sized: forward and backward well under a second.
    "vit_test": dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2,
                     decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2),
}

MaskSampling = Literal["random", "block", "grid"]


def grid_ratios(grid: int) -> list[float]:
    """Ratios a regular lattice can honour on a grid x grid patch grid: keep one of every s*s for s dividing grid."""
    return [1.0 - 1.0 / (s * s) for s in range(2, grid + 1) if grid % s == 0]


def lattice_stride(grid: int, ratio: float) -> int:
    """The stride s of the regular lattice (one patch kept of every s*s) that masks `ratio` of a
    grid x grid patch grid; ConfigError naming the ratios that can, when none does. The one check
    behind the config's validation and grid masking itself (core/masking.py)."""
    stride = next((s for s in range(2, grid + 1) if grid % s == 0 and math.isclose(ratio, 1.0 - 1.0 / (s * s))), None)
    if stride is None:
        valid = ", ".join(f"{r:.4g}" for r in grid_ratios(grid)) or "none"
        raise ConfigError(f"grid masking cannot keep a regular lattice at mask_ratio {ratio} on a {grid}x{grid} "
                          f"patch grid; valid ratios: {valid}")
    return stride


def check_channels(dataset: str, in_chans: int, channels: int | None = None) -> None:
    """ConfigError unless a model of `in_chans` channels fits `dataset` (its `channels`, by default
    as DATASET_CHANNELS says; `synthetic` follows the model). The one channel check of the configs
    and of the data openers (core/data.py)."""
    expected = DATASET_CHANNELS.get(dataset) if channels is None else channels
    if expected is not None and in_chans != expected:
        raise ConfigError(f"dataset {dataset!r} has {expected} channel(s) but model.in_chans is {in_chans}")
Target = Literal["pixel", "norm_pixel", "pca", "token"]
# model fields read only for one target: left at their defaults (so out of a stage's identity) for the others
IRRELEVANT_UNLESS = {"pca_components": "pca", "codebook_size": "token", "codebook_path": "token"}


class ModelConfig(Frozen):
    """The MAE architecture plus every pre-training ablation knob of Table 1."""

    variant: str = "vit_fmnist"
    img_size: int = Field(gt=0)
    patch_size: int = Field(gt=0)
    in_chans: int = Field(gt=0)
    embed_dim: int = Field(gt=0)
    depth: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    decoder_embed_dim: int = Field(gt=0)
    decoder_depth: int = Field(ge=1)
    decoder_num_heads: int = Field(ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    norm_eps: float = Field(1e-6, gt=0)
    mask_ratio: float = Field(0.75, ge=0.0, lt=1.0)
    mask_sampling: MaskSampling = "random"
    mask_token_in_encoder: bool = False
    loss_on: Literal["masked", "all"] = "masked"
    target: Target = "pixel"
    pca_components: int = Field(96, ge=1)
    codebook_size: int = Field(512, ge=2)
    codebook_path: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_from_variant(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        variant = data.get("variant", "vit_fmnist")
        if variant not in MODEL_VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; valid: {sorted(MODEL_VARIANTS)}")
        merged = {**MODEL_VARIANTS[variant], **data, "variant": variant}
        # Knobs of a target the arm does not use are set back to their defaults: they change nothing
        # it computes, so they must not split its stage from the same arm of another study (a
        # study of targets sets pca_components for every arm, also the pixel one).
        target = merged.get("target", "pixel")
        for key, used_by in IRRELEVANT_UNLESS.items():
            if target != used_by:
                merged.pop(key, None)
        return merged

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(f"decoder_embed_dim {self.decoder_embed_dim} is not divisible by "
                             f"decoder_num_heads {self.decoder_num_heads}")
        for name in ("embed_dim", "decoder_embed_dim"):
            if getattr(self, name) % 4:
                raise ValueError(f"{name} {getattr(self, name)} must be divisible by 4 (2-D sin-cos table)")
        if self.target == "pca" and self.pca_components > self.patch_dim:
            raise ValueError(f"pca_components {self.pca_components} exceeds the patch dimension {self.patch_dim}")
        if self.mask_sampling == "grid":
            lattice_stride(self.grid_size, self.mask_ratio)
        return self

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def patch_dim(self) -> int:
        return self.patch_size ** 2 * self.in_chans


Dataset = Literal["fashion_mnist", "cifar10", "cifar100", "imagefolder", "synthetic"]
Augmentation = Literal["none", "crop_fixed", "crop_random", "crop_random_jitter"]


class DataConfig(Frozen):
    """Which images, which split sizes and which augmentation preset (Table 1e)."""

    dataset: Dataset = "fashion_mnist"
    root: str | None = None  # None: the dataset's default location
    augmentation: Augmentation = "crop_random"
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # carved from train, for tuning only
    train_limit: int | None = Field(None, ge=1)  # first N training images, for quick runs
    test_limit: int | None = Field(None, ge=1)
    synthetic_size: int = Field(2048, ge=16)
    num_workers: int = Field(4, ge=0)  # loader processes, for datasets that do not fit in memory


class OptimConfig(Frozen):
    """Shared schedule fields: `lr = blr * effective_batch / 256`, warmup then cosine."""

    epochs: int = Field(ge=1, le=MAX_EPOCHS)
    warmup_epochs: float = Field(ge=0)
    batch_size: int = Field(ge=1)  # per step, per worker
    accum_iter: int = Field(1, ge=1)
    blr: float = Field(gt=0)
    min_lr: float = Field(0.0, ge=0)
    weight_decay: float = Field(ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = Field(1, ge=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; None: leave as is
    # At least this many optimizer steps: where the training split is small, the study planner
    # raises `epochs` to ceil(min_steps / steps per epoch) (ablate.planning.plan.with_min_steps), so a short
    # schedule still trains on a small dataset and a stage's identity holds the epochs it runs.
    min_steps: int = Field(0, ge=0)

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.accum_iter

    def lr(self, workers: int = 1) -> float:
        return self.blr * self.effective_batch * workers / 256


class PretrainConfig(OptimConfig):
    # 0: no pre-training; the encoder stays as initialised, so its probe and fine-tune are the
    # random-encoder baseline through the very same evaluation stages.
    epochs: int = Field(800, ge=0, le=MAX_EPOCHS)
    warmup_epochs: float = Field(40, ge=0)
    batch_size: int = Field(4096, ge=1)
    blr: float = Field(1.5e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)


class PretrainJob(Frozen):
    """Everything one pre-training stage needs."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    pretrain: PretrainConfig = PretrainConfig()

    @model_validator(mode="after")
    def _check_channels(self) -> PretrainJob:
        check_channels(self.data.dataset, self.model.in_chans)
        return self


# Channels of each dataset; `synthetic` follows the model.
DATASET_CHANNELS: dict[str, int] = {"fashion_mnist": 1, "cifar10": 3, "cifar100": 3, "imagefolder": 3}
