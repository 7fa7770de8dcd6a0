"""Datasets and batching: `open_dataset(cfg) -> DataSource`, then `source.batches(...)` per epoch.

Small datasets (Fashion-MNIST, CIFAR, synthetic) are held in memory as uint8 tensors, moved once
to the training device and augmented there a whole batch at a time (core/augment.py): the loader
runs at tens of thousands of images per second on two CPU cores, far above an MAE train step.
ImageNet-layout folders do not fit in memory and go through torchvision's ImageFolder and a
DataLoader with per-image transforms.

Splits, fixed for every run: `val` is carved from the training file by a seeded permutation
(`val_fraction` of it), `train` is the rest, `test` is the dataset's held-out split. Every split
is listed in a fixed seeded order, so `train_limit` / `test_limit` take a prefix that mixes the
classes even where the files are sorted by class (ImageNet folders); the val carve never depends
on the limits.

Everything random in an epoch is a function of (seed, epoch, split) and of the position in the
epoch, never of which process draws it: the order is one permutation per epoch (the same on every
rank), micro-batch g holds rows [g*B, (g+1)*B) of it, and its crops, flips and jitter come from a
generator seeded by (seed, epoch, split, g) (ImageFolder: each image from a seed of its own row).
So a run resumed at an epoch boundary sees exactly the same batches, and data-parallel training
is exact: with `shard=(rank, world)` micro-batch i of a rank is g = i*world + rank, so the global
batch of an optimizer step (B x world x accumulation rows) is the same images, augmented the same
way, whether it is split across ranks or across accumulation micro-steps.
"""
from __future__ import annotations

import gzip
import math
import pickle
import random
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Iterator, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets as tv_datasets

from core.augment import (RESIZED_CROP_SCALE, CropScale, PerImageSteps, get_augmentation, get_pil_transform,
                          release_finetune_transform)
from core.config import DataConfig, check_channels
from core.data_files import CACHE_ROOT, FASHION_MNIST_FILES, FASHION_MNIST_ROOT
from core.errors import ConfigError, DataError, MissingFile
from core.seeding import Stream, generator, seed_everything

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
Part = Literal["train", "test"]  # which file of the dataset a split indexes into

SPLIT_SEED = 2111_06377  # the paper's arXiv id; changing it changes every val carve
FIXED_IMAGES_BATCH = 1024

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataNotFoundError(MissingFile):
    """The dataset's files are not where we looked; the message says where and how to get them."""


# ---- splits and per-epoch randomness -------------------------------------------------------------

class SplitRows(NamedTuple):
    """Rows of one split: indices into the dataset's `part` file, in the split's fixed order."""

    part: Part
    rows: Tensor  # int64 (n,)


def carve_splits(n_train: int, n_test: int, cfg: DataConfig) -> dict[Split, SplitRows]:
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = int(round(n_train * cfg.val_fraction))
    test_order = torch.randperm(n_test, generator=torch.Generator().manual_seed(SPLIT_SEED + 1))
    return {
        "train": SplitRows("train", order[n_val:][:cfg.train_limit]),
        "val": SplitRows("train", order[:n_val]),
        "test": SplitRows("test", test_order[:cfg.test_limit]),
    }


def epoch_generator(seed: int, epoch: int, split: Split) -> torch.Generator:
    """A CPU generator that depends on (seed, epoch, split) only (core/seeding.py)."""
    return generator(seed, Stream.DATA, epoch, SPLITS.index(split))


def batch_generator(seed: int, epoch: int, split: Split, index: int) -> torch.Generator:
    """The generator of micro-batch `index` of an epoch: its augmentation does not depend on the
    rank or the accumulation step that processes it."""
    return generator(seed, Stream.BATCH, epoch, SPLITS.index(split), index)


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    rank, world = shard
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
    return rank, world


def shard_batches(n: int, batch_size: int, drop_last: bool, shard: tuple[int, int]) -> list[tuple[int, slice]]:
    """(global micro-batch index g, rows slice) of one rank: g = i*world + rank for its i-th micro-batch.

    With drop_last every rank gets the same number of full micro-batches (collectives stay in
    step); without it, for evaluation, the last rank(s) may get one fewer and the last one may be short.
    """
    rank, world = check_shard(shard)
    total = n // batch_size if drop_last else math.ceil(n / batch_size)
    if drop_last:
        total -= total % world
    return [(g, slice(g * batch_size, min((g + 1) * batch_size, n))) for g in range(rank, total, world)]


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std in [0, 1] units of uint8 (N, C, H, W), from 256-bin counts
    (no float copy of the whole dataset)."""
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        p = counts / counts.sum()
        mean = float((p * values).sum())
        means.append(mean)
        stds.append(math.sqrt(float((p * (values - mean) ** 2).sum())))
    return tuple(means), tuple(stds)


# ---- the opened dataset -------------------------------------------------------------------------

class DataSource(ABC):
    """One opened dataset: split sizes, normalisation statistics and per-epoch batches.
    `per_image`: it transforms image by image (an image folder), so the fine-tune's RandAugment and
    random erasing run inside its transform, as in the release, instead of on the batch."""

    per_image = False

    def __init__(self, name: str, num_classes: int, in_chans: int, img_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], splits: dict[Split, SplitRows]) -> None:
        self.name = name
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        self.mean = mean
        self.std = std
        self._splits = splits

    def num_samples(self, split: Split) -> int:
        return len(self._split(split).rows)

    def steps_per_epoch(self, split: Split, batch_size: int, drop_last: bool = True,
                        shard: tuple[int, int] = (0, 1)) -> int:
        """Micro-batches that `batches(...)` yields to this shard's rank."""
        return len(shard_batches(self.num_samples(split), batch_size, drop_last, shard))

    def batches(self, split: Split, *, batch_size: int, augmentation: str, shuffle: bool, seed: int, epoch: int,
                device: torch.device, drop_last: bool = True, shard: tuple[int, int] = (0, 1),
                crop_scale: CropScale = RESIZED_CROP_SCALE, steps: PerImageSteps | None = None
                ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yields (images float32 (B, C, img_size, img_size) normalised, labels int64 (B,)) on `device`.

        Deterministic in (seed, epoch): the order and every augmentation draw. `shard=(rank, world)`
        yields this rank's micro-batches g = rank, rank + world, ... of the epoch's sequence (see
        the module docstring); the default is the whole sequence. A random-resized crop samples its
        area fraction in `crop_scale` (pre-training's (0.2, 1) unless an evaluation asks for its own).
        `steps` (a `per_image` source only): the fine-tune's per-image steps after a random-resized
        crop, through timm's `create_transform` as the release builds it.
        """
        if steps is not None and not self.per_image:
            raise ConfigError(f"{self.name} augments whole batches: the fine-tune's RandAugment and erasing run on them")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        part, rows = self._split(split)
        generator = epoch_generator(seed, epoch, split)
        if shuffle:
            rows = rows[torch.randperm(len(rows), generator=generator)]
        micro = shard_batches(len(rows), batch_size, drop_last, shard)
        draws = EpochDraws(seed, epoch, split, generator)
        # Returned, not yielded from here: a bad split or augmentation name raises at the call.
        return self._iterate(part, rows, micro, augmentation, crop_scale, draws, torch.device(device), steps)

    def fixed_images(self, split: Split, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The first n images of the split (fewer if the split is smaller), evaluation view, normalised."""
        n = min(n, self.num_samples(split))
        if n < 1:
            raise ConfigError(f"no images to take: n={n} from split {split!r} of {self.num_samples(split)} images")
        images, labels = [], []
        for x, y in self.batches(split, batch_size=min(n, FIXED_IMAGES_BATCH), augmentation="none", shuffle=False,
                                 seed=0, epoch=0, device=device, drop_last=False):
            images.append(x)
            labels.append(y)
            if sum(len(b) for b in labels) >= n:
                break
        return torch.cat(images)[:n], torch.cat(labels)[:n]

    @abstractmethod
    def _iterate(self, part: Part, rows: Tensor, micro: list[tuple[int, slice]], augmentation: str,
                 crop_scale: CropScale, draws: EpochDraws, device: torch.device,
                 steps: PerImageSteps | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """One batch per (g, s) of `micro`: rows[s] of file `part`, augmented as micro-batch g of the epoch."""

    def _split(self, split: Split) -> SplitRows:
        if split not in self._splits:
            raise ConfigError(f"unknown split {split!r}; valid: {list(SPLITS)}")
        return self._splits[split]

    def _normaliser(self, device: torch.device) -> Callable[[Tensor], Tensor]:
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        return lambda images: (images - mean) / std


class EpochDraws(NamedTuple):
    """Where an epoch's augmentation randomness comes from: (seed, epoch, split) and the epoch's
    generator, already advanced past the permutation."""

    seed: int
    epoch: int
    split: Split
    generator: torch.Generator

    def for_batch(self, index: int) -> torch.Generator:
        return batch_generator(self.seed, self.epoch, self.split, index)


class TensorSource(DataSource):
    """A dataset held in memory as uint8 (N, C, H, W) tensors, augmented a batch at a time on the device."""

    def __init__(self, name: str, num_classes: int, img_size: int, cfg: DataConfig,
                 train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor]) -> None:
        mean, std = channel_stats(train[0])  # whole training file: independent of the limits
        splits = carve_splits(len(train[1]), len(test[1]), cfg)
        super().__init__(name, num_classes, train[0].shape[1], img_size, mean, std, splits)
        self._files: dict[Part, tuple[Tensor, Tensor]] = {"train": train, "test": test}
        self._on_device: dict[torch.device, dict[Part, tuple[Tensor, Tensor]]] = {}

    def _iterate(self, part: Part, rows: Tensor, micro: list[tuple[int, slice]], augmentation: str,
                 crop_scale: CropScale, draws: EpochDraws, device: torch.device,
                 steps: PerImageSteps | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        augment = get_augmentation(augmentation, crop_scale)
        images, labels = self._files_on(device)[part]
        rows = rows.to(device)
        normalise = self._normaliser(device)
        return ((normalise(augment(images[rows[s]], self.img_size, draws.for_batch(g))), labels[rows[s]])
                for g, s in micro)

    def _files_on(self, device: torch.device) -> dict[Part, tuple[Tensor, Tensor]]:
        """The whole dataset on `device`, copied once per device."""
        if device not in self._on_device:
            self._on_device[device] = {part: (x.to(device), y.to(device)) for part, (x, y) in self._files.items()}
        return self._on_device[device]


class _SeededImages(Dataset):
    """ImageFolder samples addressed by (index, seed): each image's transform runs under its own
    seed, so augmentation does not depend on num_workers or on which worker loads the image."""

    def __init__(self, folder: tv_datasets.ImageFolder, transform: Callable) -> None:
        self.folder = folder
        self.transform = transform

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        index, seed = key
        path, label = self.folder.samples[index]
        image = self.folder.loader(path)
        # torchvision's transforms draw from torch's global RNG, timm's (RandAugment, erasing) from
        # Python's and numpy's: all three seeded for this image, and restored afterwards
        python, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                seed_everything(seed)
                return self.transform(image), label
        finally:
            random.setstate(python)
            np.random.set_state(numpy_state)

    def __len__(self) -> int:
        return len(self.folder)


class FolderSource(DataSource):
    """ImageNet layout read from disk: torchvision transforms per image, a DataLoader per epoch."""

    per_image = True

    def __init__(self, img_size: int, cfg: DataConfig, train: tv_datasets.ImageFolder,
                 test: tv_datasets.ImageFolder) -> None:
        splits = carve_splits(len(train), len(test), cfg)
        super().__init__("imagefolder", len(train.classes), 3, img_size, IMAGENET_MEAN, IMAGENET_STD, splits)
        self._folders: dict[Part, tv_datasets.ImageFolder] = {"train": train, "test": test}
        self._num_workers = cfg.num_workers

    def _iterate(self, part: Part, rows: Tensor, micro: list[tuple[int, slice]], augmentation: str,
                 crop_scale: CropScale, draws: EpochDraws, device: torch.device,
                 steps: PerImageSteps | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        if steps is not None and augmentation != "crop_random":
            raise ConfigError(f"the fine-tune's per-image steps follow a random-resized crop, not {augmentation!r}")
        transform = (release_finetune_transform(self.img_size, crop_scale, steps, self.mean, self.std)
                     if steps is not None else get_pil_transform(augmentation, self.img_size, crop_scale))
        # One seed per row of the epoch's order, drawn for all rows: an image's augmentation does
        # not depend on the batch size, the rank or the loader worker that reads it.
        seeds = torch.randint(2**62, (len(rows),), generator=draws.generator)
        keys = [key for _, s in micro for key in zip(rows[s].tolist(), seeds[s].tolist())]
        # The micro-batches are consecutive and only the last may be short, so plain batching of
        # the concatenated keys reproduces them.
        batch_size = max((s.stop - s.start for _, s in micro), default=1)
        loader = DataLoader(_SeededImages(self._folders[part], transform), batch_size=batch_size, sampler=keys,
                            drop_last=False, num_workers=self._num_workers, pin_memory=device.type == "cuda")
        if steps is not None:  # timm's transform normalised them (random erasing works on normalised pixels)
            return ((images.to(device, non_blocking=True), labels.to(device)) for images, labels in loader)
        normalise = self._normaliser(device)
        return ((normalise(images.to(device, non_blocking=True).float().div_(255)), labels.to(device))
                for images, labels in loader)


# ---- Fashion-MNIST (IDX files) ------------------------------------------------------------------

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (LeCun's MNIST format), gzipped or not: two zero bytes, a dtype code,
    the number of dimensions, big-endian int32 sizes, then the data, big-endian."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()}, expected 0000 + dtype code "
                         f"in {[hex(c) for c in IDX_DTYPES]} + ndim)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">i4"))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _load_fashion_mnist(root: Path) -> dict[Part, tuple[Tensor, Tensor]]:
    found = {stem: _find_idx(root, stem) for stems in FASHION_MNIST_FILES.values() for stem in stems}
    missing = [str(root / f"{stem}.gz") for stem, path in found.items() if path is None]
    if missing:
        raise DataNotFoundError(f"fashion_mnist: missing {', '.join(missing)} (also looked for them without .gz); "
                                f"install with `apt-get install dataset-fashion-mnist` or set data.root to a folder "
                                f"holding the four IDX files")
    files: dict[Part, tuple[Tensor, Tensor]] = {}
    for part, (image_stem, label_stem) in FASHION_MNIST_FILES.items():
        images = torch.from_numpy(read_idx(found[image_stem])).unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28)
        labels = torch.from_numpy(read_idx(found[label_stem])).long()
        if len(images) != len(labels):
            raise DataError(f"fashion_mnist: {len(images)} images but {len(labels)} labels in {part} under {root}")
        files[part] = (images, labels)
    return files


# ---- CIFAR-10 / CIFAR-100 (python pickle batches) -----------------------------------------------

class CifarLayout(NamedTuple):
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    dataset: type[tv_datasets.CIFAR10]


CIFAR: dict[str, CifarLayout] = {
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           b"labels", 10, tv_datasets.CIFAR10),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), b"fine_labels", 100, tv_datasets.CIFAR100),
}


class _CifarUnpickler(pickle.Unpickler):
    """The CIFAR batch files are pickles; allow only what they contain (dicts, lists, numpy arrays), so a
    doctored file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")
        return super().find_class(module, name)


def _read_cifar_batches(folder: Path, names: tuple[str, ...], label_key: bytes) -> tuple[Tensor, Tensor]:
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))  # rows are R, G, B planes
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _download_cifar(name: str, root: Path) -> None:
    """torchvision's download, only when the folder is missing; no network becomes our error."""
    layout = CIFAR[name]
    folder = root / layout.folder
    try:
        layout.dataset(str(root), train=True, download=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad checksum is a RuntimeError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataNotFoundError(f"{name}: {folder} is missing and the download failed ({reason}); offline, fetch "
                                f"{layout.dataset.url} elsewhere and extract it under {root}, or set data.root") from exc


def _load_cifar(name: str, root: Path) -> dict[Part, tuple[Tensor, Tensor]]:
    layout = CIFAR[name]
    folder = root / layout.folder
    if not folder.is_dir():
        _download_cifar(name, root)
    missing = [str(folder / f) for f in layout.train_files + layout.test_files if not (folder / f).is_file()]
    if missing:
        raise DataNotFoundError(f"{name}: missing {', '.join(missing)}; extract {layout.dataset.url} under {root} "
                                f"again or set data.root")
    return {"train": _read_cifar_batches(folder, layout.train_files, layout.label_key),
            "test": _read_cifar_batches(folder, layout.test_files, layout.label_key)}


# ---- synthetic ----------------------------------------------------------------------------------

SYNTHETIC_CLASSES = 10
SYNTHETIC_SEEDS: dict[Part, int] = {"train": 0, "test": 1}
SYNTHETIC_CHUNK_PIXELS = 2**21  # bounds the float working memory (about 50 MB) at any image size


def synthetic_images(n: int, in_chans: int, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Labelled gratings plus noise, uint8 (n, in_chans, size, size) and int64 labels, deterministic in seed.

    Class = orientation (0, 22.5, 45, 67.5 or 90 degrees) x wave form (sine or square). Each image
    is mirrored at random (angle a or 180 - a), so a class is unchanged by a horizontal flip;
    frequency (1.5 to 4 cycles per image), phase, contrast, brightness and per-channel colour vary.
    """
    g = torch.Generator().manual_seed(seed)
    chunk = max(1, SYNTHETIC_CHUNK_PIXELS // (in_chans * size * size))
    parts = [_synthetic_chunk(min(chunk, n - start), in_chans, size, g) for start in range(0, n, chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _synthetic_chunk(n: int, in_chans: int, size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    labels = torch.randint(SYNTHETIC_CLASSES, (n,), generator=g)
    angle = (labels % 5).double() * math.pi / 8 + 0.04 * torch.randn(n, generator=g, dtype=torch.float64)
    angle = torch.where(torch.rand(n, generator=g) < 0.5, angle, math.pi - angle)
    square = (labels >= 5).view(n, 1, 1, 1)
    freq = torch.empty(n, dtype=torch.float64).uniform_(1.5, 4.0, generator=g)
    phase = torch.empty(n, dtype=torch.float64).uniform_(0, 2 * math.pi, generator=g)
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.25, 0.45, generator=g)
    brightness = torch.empty(n, 1, 1, 1).uniform_(0.35, 0.65, generator=g)
    colour = torch.empty(n, in_chans, 1, 1).uniform_(0.6, 1.0, generator=g)
    noise = 0.05 * torch.randn(n, in_chans, size, size, generator=g)

    coords = (torch.arange(size, dtype=torch.float64) + 0.5) / size - 0.5
    y, x = coords.view(1, size, 1), coords.view(1, 1, size)
    along = x * torch.cos(angle).view(n, 1, 1) + y * torch.sin(angle).view(n, 1, 1)  # (n, size, size)
    wave = torch.sin(2 * math.pi * freq.view(n, 1, 1) * along + phase.view(n, 1, 1)).float().unsqueeze(1)
    wave = torch.where(square, torch.sign(wave), wave)
    images = brightness + contrast * colour * wave + noise
    return images.clamp_(0, 1).mul_(255).round_().to(torch.uint8), labels


# ---- opening ------------------------------------------------------------------------------------

def _root(cfg: DataConfig, default: str) -> Path:
    return Path(cfg.root if cfg.root is not None else default).expanduser()


def _open_fashion_mnist(cfg: DataConfig, img_size: int, in_chans: int) -> DataSource:
    check_channels("fashion_mnist", in_chans, 1)
    files = _load_fashion_mnist(_root(cfg, FASHION_MNIST_ROOT))
    return TensorSource("fashion_mnist", 10, img_size, cfg, files["train"], files["test"])


def _open_cifar(cfg: DataConfig, img_size: int, in_chans: int) -> DataSource:
    check_channels(cfg.dataset, in_chans, 3)
    files = _load_cifar(cfg.dataset, _root(cfg, CACHE_ROOT))
    return TensorSource(cfg.dataset, CIFAR[cfg.dataset].num_classes, img_size, cfg, files["train"], files["test"])


def _open_synthetic(cfg: DataConfig, img_size: int, in_chans: int) -> DataSource:
    train = synthetic_images(cfg.synthetic_size, in_chans, img_size, SYNTHETIC_SEEDS["train"])
    test = synthetic_images(max(16, cfg.synthetic_size // 4), in_chans, img_size, SYNTHETIC_SEEDS["test"])
    return TensorSource("synthetic", SYNTHETIC_CLASSES, img_size, cfg, train, test)


def _open_imagefolder(cfg: DataConfig, img_size: int, in_chans: int) -> DataSource:
    check_channels("imagefolder", in_chans, 3)
    root = _root(cfg, f"{CACHE_ROOT}/imagenet")
    folders = {part: _image_folder(root / sub) for part, sub in (("train", "train"), ("test", "val"))}
    if folders["train"].classes != folders["test"].classes:
        raise DataError(f"imagefolder: the class folders of {root / 'train'} and {root / 'val'} differ "
                         f"({len(folders['train'].classes)} vs {len(folders['test'].classes)} classes)")
    return FolderSource(img_size, cfg, folders["train"], folders["test"])


def _image_folder(path: Path) -> tv_datasets.ImageFolder:
    hint = "set data.root to a folder with train/<class>/<image> and val/<class>/<image> (ImageNet layout)"
    if not path.is_dir():
        raise DataNotFoundError(f"imagefolder: {path} does not exist; {hint}")
    try:
        return tv_datasets.ImageFolder(str(path))
    except FileNotFoundError as exc:  # no class folders, or a class folder without images
        raise DataNotFoundError(f"imagefolder: no images under {path} ({exc}); {hint}") from exc


OPENERS: dict[str, Callable[[DataConfig, int, int], DataSource]] = {
    "fashion_mnist": _open_fashion_mnist,
    "cifar10": _open_cifar,
    "cifar100": _open_cifar,
    "synthetic": _open_synthetic,
    "imagefolder": _open_imagefolder,
}


def open_dataset(cfg: DataConfig, *, img_size: int, in_chans: int) -> DataSource:
    """Open `cfg.dataset` for a model of `img_size` pixels and `in_chans` channels."""
    if cfg.dataset not in OPENERS:
        raise ConfigError(f"unknown dataset {cfg.dataset!r}; valid: {sorted(OPENERS)}")
    return OPENERS[cfg.dataset](cfg, img_size, in_chans)
