"""Augmentation presets of the paper's Table 1e: none, fixed-size crop, random-size crop, + colour jitter.

Two implementations of the same four presets:

- `AUGMENTATIONS`: batched, for datasets held in memory. A whole batch is cropped, flipped and
  resized by one bicubic `grid_sample` over per-sample sampling grids, on the images' own device,
  so the data path never becomes the bottleneck of a training step (no per-image Python loop,
  no DataLoader).
- `PIL_TRANSFORMS`: per-image torchvision pipelines, for datasets read from disk (imagefolder).

Shared contract of the batched presets: `(images (B, C, H, W) uint8 or float in [0, 1], size,
generator) -> float32 (B, C, size, size) in [0, 1]`. All randomness is drawn from `generator`
(on the generator's device, then moved to the images), so the same generator state gives the same
crops on CPU and GPU.

Choices where the paper leaves room:
- `none` for in-memory datasets shows the whole image (its largest centred square, resized to
  `size`): the standard evaluation view of Fashion-MNIST and CIFAR. For imagefolder it is the
  ImageNet evaluation view, resize to size/0.875 then centre crop, as in the reference.
- `crop_fixed` crops a square of 0.875 of the shorter side at a uniform random position (the
  reference's 224 of 256), resizes it to `size`, and flips. The same ratio at every image size,
  so the arm means the same thing on 28 px and on 224 px images; we do not pad-and-crop.
- Crops are resampled from the full image, so bicubic taps just outside a crop see the real
  neighbouring pixels (torchvision's crop-then-resize clamps at the crop border instead); and
  `grid_sample` does not antialias, which only matters when a crop is shrunk.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import transforms as T

from core.errors import ConfigError

Augment = Callable[[Tensor, int, torch.Generator], Tensor]
CropScale = tuple[float, float]

RESIZED_CROP_SCALE: CropScale = (0.2, 1.0)  # MAE pre-training recipe
EVAL_CROP_SCALE: CropScale = (0.08, 1.0)  # the release's fine-tune and linear-probe transforms (torchvision's default)
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)
RESIZED_CROP_TRIES = 10  # torchvision's RandomResizedCrop tries 10 times, then falls back to a centre crop
FIXED_CROP_FRACTION = 0.875  # 224 / 256
JITTER_STRENGTH = 0.4  # brightness, contrast and saturation factors uniform in [0.6, 1.4]
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


class CropBoxes(NamedTuple):
    """Per-sample crop boxes in source pixels, each an int64 tensor of shape (B,)."""

    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float input is taken to be in [0, 1] already."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64) * (high - low) + low


def sample_resized_crops(batch: int, height: int, width: int, generator: torch.Generator,
                         scale: tuple[float, float] = RESIZED_CROP_SCALE,
                         ratio: tuple[float, float] = RESIZED_CROP_RATIO) -> CropBoxes:
    """torchvision's RandomResizedCrop.get_params for a whole batch at once.

    Area fraction uniform in `scale`, aspect ratio log-uniform in `ratio`; the first of 10 tries
    that fits the image wins, and samples where none fits take the centre crop of the fallback.
    """
    area = height * width
    target_area = area * _uniform((batch, RESIZED_CROP_TRIES), *scale, generator)
    aspect = torch.exp(_uniform((batch, RESIZED_CROP_TRIES), math.log(ratio[0]), math.log(ratio[1]), generator))
    w = torch.round(torch.sqrt(target_area * aspect)).long()
    h = torch.round(torch.sqrt(target_area / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # argmax returns the first maximal index
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    any_fits = fits.any(dim=1)
    fallback_h, fallback_w = _fallback_crop(height, width, ratio)
    h = torch.where(any_fits, h, fallback_h)
    w = torch.where(any_fits, w, fallback_w)
    # randint(0, n + 1) as floor(u * (n + 1)): one uniform draw per sample, vectorised.
    u = torch.rand((batch, 2), generator=generator, device=generator.device, dtype=torch.float64)
    top = torch.where(any_fits, (u[:, 0] * (height - h + 1)).long(), (height - h) // 2)
    left = torch.where(any_fits, (u[:, 1] * (width - w + 1)).long(), (width - w) // 2)
    return CropBoxes(top, left, h, w)


def _fallback_crop(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def sample_fixed_crops(batch: int, height: int, width: int, generator: torch.Generator,
                       fraction: float = FIXED_CROP_FRACTION) -> CropBoxes:
    """Squares of `fraction` of the shorter side at uniform random integer positions."""
    side = max(1, int(round(min(height, width) * fraction)))
    u = torch.rand((batch, 2), generator=generator, device=generator.device, dtype=torch.float64)
    top = (u[:, 0] * (height - side + 1)).long()
    left = (u[:, 1] * (width - side + 1)).long()
    full = torch.full((batch,), side, dtype=torch.long, device=generator.device)
    return CropBoxes(top, left, full, full.clone())


def sample_flips(batch: int, generator: torch.Generator) -> Tensor:
    """(B,) bool: True flips horizontally, with probability 1/2 as RandomHorizontalFlip."""
    return torch.rand(batch, generator=generator, device=generator.device) < 0.5


def resized_crop(images: Tensor, boxes: CropBoxes, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop each image to its box, optionally mirror it, and resize to (size, size), bicubic.

    In grid_sample's normalised coordinates (align_corners=False: -1 and 1 are the outer edges of
    the border pixels) a box [left, left + w) spans [2 left / W - 1, 2 (left + w) / W - 1], so output
    column j of `size` samples x = centre + (w / W) * ((2 j + 1) / size - 1). A crop of exactly
    `size` pixels at an integer position lands on pixel centres and copies pixels unchanged.
    """
    images = to_unit_float(images)
    batch, _, height, width = images.shape
    top, left, h, w = (t.to(images.device, torch.float32).view(batch, 1) for t in boxes)
    steps = (2 * torch.arange(size, device=images.device, dtype=torch.float32) + 1) / size - 1  # (size,)
    half_x = w / width
    if flip is not None:
        half_x = torch.where(flip.to(images.device).view(batch, 1), -half_x, half_x)
    xs = (2 * left + w) / width - 1 + half_x * steps  # (B, size)
    ys = (2 * top + h) / height - 1 + (h / height) * steps
    # The grid is separable; built by broadcasting, it costs a fraction of affine_grid's batched matmul.
    grid = torch.stack(torch.broadcast_tensors(xs.view(batch, 1, size), ys.view(batch, size, 1)), dim=-1)
    out = F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out.clamp_(0.0, 1.0)  # bicubic overshoots at edges


class Jitter(NamedTuple):
    """Per-sample colour jitter: factors (B, 3) for brightness, contrast, saturation, and the
    order (B, 3) in which the three ops (0, 1, 2 as listed) are applied."""

    factors: Tensor
    order: Tensor


def sample_jitter(batch: int, generator: torch.Generator, strength: float = JITTER_STRENGTH) -> Jitter:
    factors = _uniform((batch, 3), 1 - strength, 1 + strength, generator).float()
    order = torch.argsort(torch.rand((batch, 3), generator=generator, device=generator.device), dim=1)
    return Jitter(factors, order)


def apply_jitter(images: Tensor, jitter: Jitter) -> Tensor:
    """torchvision's adjust_brightness / contrast / saturation, each sample in its own order.

    Each op blends the image with a reference and clamps: brightness with black, contrast with the
    mean of the grayscale image, saturation with the grayscale image. So one blend per step, its
    reference picked per sample, runs all orders at once. The grayscale of one channel is the
    image itself, so 1-channel images get brightness and contrast only.
    """
    batch = images.shape[0]
    factors = jitter.factors.to(images.device)
    order = jitter.order.to(images.device)
    for step in range(3):
        op = order[:, step].view(batch, 1, 1, 1)
        factor = factors.gather(1, order[:, step:step + 1]).view(batch, 1, 1, 1)
        gray = _grayscale(images)
        reference = torch.where(op == 0, torch.zeros_like(gray),
                                torch.where(op == 1, gray.mean(dim=(1, 2, 3), keepdim=True), gray))
        images = (factor * images + (1 - factor) * reference).clamp_(0.0, 1.0)
    return images


def _grayscale(images: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 1, H, W): torchvision's luma weights for RGB, the channel mean otherwise."""
    if images.shape[1] == 3:
        weights = torch.tensor(GRAY_WEIGHTS, device=images.device).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True)
    return images.mean(dim=1, keepdim=True)


# ---- the presets -------------------------------------------------------------------------------

def none(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """The largest centred square, resized to `size`; no randomness, no flip."""
    images = to_unit_float(images)
    height, width = images.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    images = images[:, :, top:top + side, left:left + side]
    if side == size:
        return images.clone(memory_format=torch.contiguous_format)  # never a view of the caller's tensor
    # antialias: shrinking (e.g. 32 px CIFAR into a 28 px model) must not alias.
    out = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def crop_fixed(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    batch, _, height, width = images.shape
    boxes = sample_fixed_crops(batch, height, width, generator)
    return resized_crop(images, boxes, size, sample_flips(batch, generator))


def crop_random(images: Tensor, size: int, generator: torch.Generator, scale: CropScale = RESIZED_CROP_SCALE) -> Tensor:
    batch, _, height, width = images.shape
    boxes = sample_resized_crops(batch, height, width, generator, scale=scale)
    return resized_crop(images, boxes, size, sample_flips(batch, generator))


def crop_random_jitter(images: Tensor, size: int, generator: torch.Generator,
                       scale: CropScale = RESIZED_CROP_SCALE) -> Tensor:
    """crop_random, then ColorJitter(0.4, 0.4, 0.4) (no hue), as torchvision's pipeline order."""
    cropped = crop_random(images, size, generator, scale)
    return apply_jitter(cropped, sample_jitter(images.shape[0], generator))


AUGMENTATIONS: dict[str, Augment] = {
    "none": none,
    "crop_fixed": crop_fixed,
    "crop_random": crop_random,
    "crop_random_jitter": crop_random_jitter,
}


def _unknown(name: str, valid: dict[str, object]) -> ConfigError:
    return ConfigError(f"unknown augmentation {name!r}; valid: {sorted(valid)}")


RANDOM_CROPS = frozenset({"crop_random", "crop_random_jitter"})  # the presets whose crop takes a scale


def get_augmentation(name: str, scale: CropScale = RESIZED_CROP_SCALE) -> Augment:
    """The batched preset `name`; a random-resized crop samples its area fraction in `scale`."""
    if name not in AUGMENTATIONS:
        raise _unknown(name, AUGMENTATIONS)
    return partial(AUGMENTATIONS[name], scale=scale) if name in RANDOM_CROPS else AUGMENTATIONS[name]


# ---- per-image pipelines for datasets read from disk --------------------------------------------

def _eval_resize(size: int) -> T.Resize:
    return T.Resize(int(size / FIXED_CROP_FRACTION), interpolation=T.InterpolationMode.BICUBIC)


def _random_resized_crop(size: int, scale: CropScale) -> T.RandomResizedCrop:
    return T.RandomResizedCrop(size, scale=scale, ratio=RESIZED_CROP_RATIO, interpolation=T.InterpolationMode.BICUBIC)


# Each returns PIL image -> uint8 (C, size, size) tensor; scaling to [0, 1] and normalising happen
# on the target device after collation, as for the in-memory datasets.
PIL_TRANSFORMS: dict[str, Callable[[int, CropScale], T.Compose]] = {
    "none": lambda size, scale: T.Compose([_eval_resize(size), T.CenterCrop(size), T.PILToTensor()]),
    "crop_fixed": lambda size, scale: T.Compose([_eval_resize(size), T.RandomCrop(size), T.RandomHorizontalFlip(),
                                                 T.PILToTensor()]),
    "crop_random": lambda size, scale: T.Compose([_random_resized_crop(size, scale), T.RandomHorizontalFlip(),
                                                  T.PILToTensor()]),
    "crop_random_jitter": lambda size, scale: T.Compose([
        _random_resized_crop(size, scale), T.RandomHorizontalFlip(),
        T.ColorJitter(JITTER_STRENGTH, JITTER_STRENGTH, JITTER_STRENGTH), T.PILToTensor()]),
}


def get_pil_transform(name: str, size: int, scale: CropScale = RESIZED_CROP_SCALE) -> T.Compose:
    if name not in PIL_TRANSFORMS:
        raise _unknown(name, PIL_TRANSFORMS)
    return PIL_TRANSFORMS[name](size, scale)


class PerImageSteps(NamedTuple):
    """The fine-tune's random steps after the crop, for a source that transforms image by image
    (image folders): RandAugment (a timm string, or None) and the random-erasing probability."""

    rand_augment: str | None
    reprob: float


def release_finetune_transform(size: int, scale: CropScale, steps: PerImageSteps, mean: tuple[float, ...],
                               std: tuple[float, ...]) -> Callable:
    """The release's fine-tune training transform for images read from disk: timm's
    `create_transform(is_training=True)` as `util/datasets.py build_transform` calls it (bicubic
    random-resized crop at `scale`, flip, RandAugment, to tensor, normalise, random erasing in
    pixel mode, one box), giving normalised float32 (C, size, size)."""
    from timm.data import create_transform

    transform = create_transform(input_size=size, is_training=True, scale=scale, color_jitter=None,
                                 auto_augment=steps.rand_augment, interpolation="bicubic", re_prob=steps.reprob,
                                 re_mode="pixel", re_count=1, mean=mean, std=std)
    for step in transform.transforms:
        if hasattr(step, "ops"):  # timm's RandAugment
            posterize_to_zero_bits(step)
    return transform


def posterize_to_zero_bits(rand_augment) -> None:
    """Posterize in a timm RandAugment as Pillow < 10 did, which the release ran on: keeping 0 bits
    gives a black image (Pillow >= 10 refuses 0 bits, which RandAugment's top magnitude asks for)."""
    for op in rand_augment.ops:
        if op.name.startswith("Posterize"):
            op.aug_fn = _posterize_any_bits


def _posterize_any_bits(img, bits_to_keep: int, **kwargs):
    from PIL import Image
    from timm.data.auto_augment import posterize

    return Image.new(img.mode, img.size, 0) if bits_to_keep <= 0 else posterize(img, bits_to_keep, **kwargs)
