"""Typed, frozen configuration of the two evaluation protocols: linear probing and fine-tuning.

Defaults are the paper's recipes (appendix A.1-A.3; mae-reference.md section 2). The presets
are named field overrides for smaller data, each scale change stated next to it.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.config import (MAX_EPOCHS, Augmentation, DataConfig, Frozen, ModelConfig, OptimConfig,
                         check_channels)

Pool = Literal["cls", "avg"]

# Our pool names -> timm VisionTransformer(global_pool=...).
TIMM_POOL: dict[str, Literal["token", "avg"]] = {"cls": "token", "avg": "avg"}


class LinearProbeConfig(OptimConfig):
    """Linear probing: frozen encoder, BatchNorm1d(affine=False) + Linear head, LARS."""

    epochs: int = Field(90, ge=1, le=MAX_EPOCHS)
    warmup_epochs: float = Field(10, ge=0)
    batch_size: int = Field(16384, ge=1)
    blr: float = Field(0.1, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    pool: Pool = "cls"  # the paper's feature: the class token after the final norm
    augmentation: Augmentation = "crop_random"  # RandomResizedCrop (0.08, 1) + flip, as the release
    # Fast path, used only when augmentation == "none": the frozen encoder's features of every
    # split are computed once and the head trains on them, in the same shuffled order.
    cache_features: bool = True


class FinetuneConfig(OptimConfig):
    """End-to-end (or partial) fine-tuning with layer-wise lr decay, as the paper's ViT-L recipe."""

    epochs: int = Field(100, ge=1, le=MAX_EPOCHS)  # the paper: 100 for ViT-B, 50 for ViT-L/H
    warmup_epochs: float = Field(5, ge=0)
    batch_size: int = Field(1024, ge=1)
    blr: float = Field(1e-3, gt=0)  # the release uses 5e-4 for ViT-B
    min_lr: float = Field(1e-6, ge=0)  # the release's main_finetune default
    weight_decay: float = Field(0.05, ge=0)
    layer_decay: float = Field(0.75, gt=0, le=1)  # 0.65 for ViT-B in the release
    drop_path: float = Field(0.1, ge=0, lt=1)  # 0.2 for ViT-H
    mixup: float = Field(0.8, ge=0)  # Beta(alpha, alpha); 0 disables
    cutmix: float = Field(1.0, ge=0)  # 0 disables; with both on, one of the two per batch (p = 0.5)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    rand_augment: str | None = "rand-m9-mstd0.5-inc1"  # timm config string; None disables
    reprob: float = Field(0.25, ge=0, le=1)  # random erasing probability (pixel mode, one box)
    pool: Pool = "avg"
    augmentation: Augmentation = "crop_random"  # the crop preset under RandAugment, scale (0.08, 1) as the release
    # None: all blocks (end-to-end). k >= 1: the last k blocks, the rest frozen. 0.5: only the MLP
    # sub-block of the last block. 0: the head alone, as a BatchNorm1d + Linear probe (Figure 9).
    tune_blocks: float | None = None
    init: Literal["pretrained", "random"] = "pretrained"  # random: the from-scratch baseline

    @field_validator("tune_blocks")
    @classmethod
    def _check_tune_blocks(cls, value: float | None) -> float | None:
        if value is None or value == 0.5 or (value >= 0 and float(value).is_integer()):
            return value
        raise ValueError(f"tune_blocks must be None, 0, 0.5 or a whole number of blocks, got {value}")

    @field_validator("rand_augment")
    @classmethod
    def _check_rand_augment(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("rand-"):
            raise ValueError(f"rand_augment must be a timm RandAugment string like 'rand-m9-mstd0.5-inc1', got "
                             f"{value!r}")
        return value

    @model_validator(mode="after")
    def _check_mixup_batch(self) -> FinetuneConfig:
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ValueError(f"mixup/cutmix pair the samples of a batch: batch_size must be even, got "
                             f"{self.batch_size}")
        return self


class LinearProbeJob(Frozen):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    probe: LinearProbeConfig = LinearProbeConfig()

    @model_validator(mode="after")
    def _check(self) -> LinearProbeJob:
        check_channels(self.data.dataset, self.model.in_chans)
        return self


class FinetuneJob(Frozen):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    finetune: FinetuneConfig = FinetuneConfig()

    @model_validator(mode="after")
    def _check(self) -> FinetuneJob:
        check_channels(self.data.dataset, self.model.in_chans)
        k = self.finetune.tune_blocks
        if k is not None and k > self.model.depth:
            raise ValueError(f"tune_blocks {k} exceeds the encoder depth {self.model.depth}")
        if self.finetune.rand_augment is not None and self.model.in_chans not in (1, 3):
            raise ValueError(f"RandAugment works on 1- or 3-channel images, not {self.model.in_chans}; "
                             f"set rand_augment: null")
        return self
