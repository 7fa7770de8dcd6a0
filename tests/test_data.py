"""Datasets, splits, batching and the augmentation presets (core/data.py, core/augment.py).

Real Fashion-MNIST where it is installed; every other format from tiny files written here.
"""
from __future__ import annotations

import gzip
import math
import pickle
import typing
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from core import data as data_module
from core.augment import (AUGMENTATIONS, PIL_TRANSFORMS, CropBoxes, Jitter, apply_jitter, get_augmentation,
                          get_pil_transform, resized_crop, sample_flips, sample_resized_crops)
from core.config import Augmentation, DataConfig
from core.data_files import train_images
from core.errors import ConfigError
from core.data import (DataNotFoundError, DataSource, carve_splits, epoch_generator, open_dataset, read_idx,
                       synthetic_images)

FMNIST = Path(data_module.FASHION_MNIST_ROOT)
FMNIST_PRESENT = (FMNIST / "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                                  reason="apt-get install dataset-fashion-mnist")
CPU = torch.device("cpu")


def collect(source: DataSource, split: str = "train", **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    args = dict(batch_size=8, augmentation="crop_random", shuffle=True, seed=0, epoch=0, device=CPU) | kwargs
    batches = list(source.batches(split, **args))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def denormalise(source: DataSource, images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(source.mean).view(1, -1, 1, 1)
    std = torch.tensor(source.std).view(1, -1, 1, 1)
    return images * std + mean


# ---- IDX ----------------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, code: int, compress: bool = True) -> None:
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    ints = np.array([-7, 0, 70000], dtype=np.int32)
    write_idx(tmp_path / "images", images, 0x08, compress)
    write_idx(tmp_path / "ints", ints, 0x0C, compress)
    np.testing.assert_array_equal(read_idx(tmp_path / "images"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "ints"), ints)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x08\x03\x00\x00" + bytes(16)))
    with pytest.raises(ValueError, match="not an IDX file") as info:
        read_idx(bad)
    assert str(bad) in str(info.value)
    short = tmp_path / "short"
    write_idx(short, np.zeros((2, 3), np.uint8), 0x08, compress=False)
    short.write_bytes(short.read_bytes()[:-1])
    with pytest.raises(ValueError, match="IDX header says shape"):
        read_idx(short)


# ---- real Fashion-MNIST -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fmnist() -> DataSource:
    return open_dataset(DataConfig(dataset="fashion_mnist"), img_size=28, in_chans=1)


@needs_fmnist
def test_fashion_mnist_files_have_the_official_sizes() -> None:
    assert read_idx(FMNIST / "train-images-idx3-ubyte.gz").shape == (60000, 28, 28)
    assert read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz").shape == (10000,)


@needs_fmnist
def test_fashion_mnist_splits_and_statistics(fmnist: DataSource) -> None:
    assert (fmnist.name, fmnist.num_classes, fmnist.in_chans) == ("fashion_mnist", 10, 1)
    assert [fmnist.num_samples(s) for s in ("train", "val", "test")] == [54000, 6000, 10000]
    # Known statistics of the Fashion-MNIST training set.
    assert fmnist.mean[0] == pytest.approx(0.2860, abs=1e-4)
    assert fmnist.std[0] == pytest.approx(0.3530, abs=1e-4)
    _, labels = fmnist.fixed_images("test", 10000, CPU)
    assert torch.bincount(labels).tolist() == [1000] * 10  # the whole t10k, balanced


@needs_fmnist
def test_fashion_mnist_batches(fmnist: DataSource) -> None:
    images, labels = next(iter(fmnist.batches("train", batch_size=256, augmentation="crop_random", shuffle=True,
                                              seed=0, epoch=0, device=CPU)))
    assert images.shape == (256, 1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() <= 9
    assert abs(float(images.mean())) < 0.3 and 0.7 < float(images.std()) < 1.3  # normalised


@needs_fmnist
def test_fashion_mnist_at_32_pixels() -> None:
    source = open_dataset(DataConfig(train_limit=64, test_limit=32), img_size=32, in_chans=1)
    assert [source.num_samples(s) for s in ("train", "val", "test")] == [64, 6000, 32]
    for augmentation in AUGMENTATIONS:
        images, _ = collect(source, augmentation=augmentation, batch_size=32)
        assert images.shape == (64, 1, 32, 32)


def test_val_carve_is_fixed_disjoint_and_independent_of_limits() -> None:
    full = carve_splits(60000, 10000, DataConfig(val_fraction=0.1))
    train, val = set(full["train"].rows.tolist()), set(full["val"].rows.tolist())
    assert (len(train), len(val)) == (54000, 6000) and not train & val and train | val == set(range(60000))
    assert full["test"].part == "test" and sorted(full["test"].rows.tolist()) == list(range(10000))
    limited = carve_splits(60000, 10000, DataConfig(val_fraction=0.1, train_limit=100, test_limit=10))
    assert torch.equal(limited["val"].rows, full["val"].rows)
    assert torch.equal(limited["train"].rows, full["train"].rows[:100])
    assert torch.equal(limited["test"].rows, full["test"].rows[:10])
    assert torch.equal(carve_splits(60000, 10000, DataConfig())["val"].rows, full["val"].rows)
    assert len(carve_splits(100, 10, DataConfig(val_fraction=0.0))["val"].rows) == 0


def test_fashion_mnist_missing_names_the_paths(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        open_dataset(DataConfig(root=str(tmp_path / "nowhere")), img_size=28, in_chans=1)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError) and "\n" not in message
    assert str(tmp_path / "nowhere" / "train-images-idx3-ubyte.gz") in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.root" in message


def test_fashion_mnist_from_any_root(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 10)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), np.uint8), 0x08)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10, 0x08, compress=False)
    source = open_dataset(DataConfig(root=str(tmp_path)), img_size=28, in_chans=1)
    assert [source.num_samples(s) for s in ("train", "val", "test")] == [36, 4, 10]


def test_channel_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="1 channel"):
        open_dataset(DataConfig(dataset="fashion_mnist"), img_size=28, in_chans=3)


# ---- CIFAR --------------------------------------------------------------------------------------

def write_cifar(root: Path, per_batch: int = 4, n_test: int = 6) -> None:
    """The real layout: pickled dicts with b'data' (N, 3072) uint8 rows of R, G, B planes."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    start = 0
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        index = np.arange(start, start + n)
        # Pixel value encodes (image index, channel): 8 * index + 2 * channel.
        planes = (8 * index[:, None, None] + 2 * np.arange(3)[None, :, None]).repeat(1024, axis=2)
        batch = {b"batch_label": name.encode(), b"labels": (index % 10).tolist(),
                 b"data": planes.reshape(n, 3072).astype(np.uint8), b"filenames": [b"x.png"] * n}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        start += n


def test_cifar_reads_the_pickle_layout(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    source = open_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), val_fraction=0.1), img_size=32, in_chans=3)
    assert (source.num_classes, source.in_chans) == (10, 3)
    assert [source.num_samples(s) for s in ("train", "val", "test")] == [18, 2, 6]
    images, labels = source.fixed_images("test", 6, CPU)
    pixels = torch.round(denormalise(source, images) * 255)
    index = pixels[:, 0, 0, 0] / 8
    assert sorted(index.tolist()) == list(range(20, 26))  # the test batch comes after the five train batches
    for c in range(3):
        assert torch.equal(pixels[:, c], (8 * index + 2 * c).view(-1, 1, 1).expand(6, 32, 32))
    assert torch.equal(labels, index.long() % 10)


def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 10), ("test", 5)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": np.zeros((n, 3072), np.uint8), b"fine_labels": list(range(90, 90 + n)),
                         b"coarse_labels": [0] * n}, f)
    source = open_dataset(DataConfig(dataset="cifar100", root=str(tmp_path), val_fraction=0.0), img_size=32,
                          in_chans=3)
    assert source.num_classes == 100 and source.num_samples("train") == 10
    assert sorted(source.fixed_images("test", 5, CPU)[1].tolist()) == list(range(90, 95))


def test_cifar_missing_and_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Offline:
        url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

        def __init__(self, *args: object, **kwargs: object) -> None:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setitem(data_module.CIFAR, "cifar10", data_module.CIFAR["cifar10"]._replace(dataset=Offline))
    with pytest.raises(DataNotFoundError) as info:
        open_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)), img_size=32, in_chans=3)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and Offline.url in message and "\n" not in message


# ---- imagefolder --------------------------------------------------------------------------------

@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("val", 2)):
        for label, name in enumerate(("cat", "dog")):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (30, 40, 3), np.uint8)
                pixels[..., 0] = 200 * label  # red channel tells the class
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
    return tmp_path


def test_imagefolder_batches(image_root: Path) -> None:
    cfg = DataConfig(dataset="imagefolder", root=str(image_root), val_fraction=0.25, num_workers=0)
    source = open_dataset(cfg, img_size=16, in_chans=3)
    assert (source.num_classes, source.mean) == (2, data_module.IMAGENET_MEAN)
    assert [source.num_samples(s) for s in ("train", "val", "test")] == [9, 3, 4]
    for augmentation in AUGMENTATIONS:
        images, labels = collect(source, augmentation=augmentation, batch_size=4, drop_last=False)
        assert images.shape == (9, 3, 16, 16) and labels.dtype == torch.int64
    images, labels = source.fixed_images("test", 4, CPU)
    red = denormalise(source, images)[:, 0].mean(dim=(1, 2))
    assert torch.equal(red > 0.5, labels == 1)


def test_train_images_counts_what_the_data_source_trains_on(image_root: Path) -> None:
    """The planner's count (no torch, no file read) is the data source's train split, for an image
    folder (counted), synthetic data and Fashion-MNIST's fixed size, with limits and val carving."""
    cases = [DataConfig(dataset="imagefolder", root=str(image_root), val_fraction=0.25, num_workers=0),
             DataConfig(dataset="imagefolder", root=str(image_root), val_fraction=0.0, train_limit=5, num_workers=0),
             DataConfig(dataset="synthetic", synthetic_size=100, val_fraction=0.1)]
    if FMNIST_PRESENT:
        cases += [DataConfig(dataset="fashion_mnist", val_fraction=0.02, train_limit=4096),
                  DataConfig(dataset="fashion_mnist", val_fraction=0.02)]
    for cfg in cases:
        size, chans = (16, 3) if cfg.dataset == "imagefolder" else (28, 1)
        source = open_dataset(cfg, img_size=size, in_chans=chans)
        counted = train_images(cfg.dataset, cfg.root, cfg.synthetic_size, cfg.val_fraction, cfg.train_limit)
        assert counted == source.num_samples("train"), cfg
    assert train_images("imagefolder", str(image_root / "nowhere"), 0, 0.1, None) is None


def test_imagefolder_augmentation_does_not_depend_on_workers(image_root: Path) -> None:
    def load(workers: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = DataConfig(dataset="imagefolder", root=str(image_root), num_workers=workers)
        return collect(open_dataset(cfg, img_size=16, in_chans=3), augmentation="crop_random_jitter", batch_size=3)

    serial, parallel = load(0), load(2)
    assert torch.equal(serial[0], parallel[0]) and torch.equal(serial[1], parallel[1])


def test_imagefolder_fine_tune_augments_each_image_through_timms_create_transform(image_root: Path) -> None:
    """Image folders get the release's fine-tune transform: timm's create_transform (bicubic crop at
    the evaluation scale, flip, RandAugment, normalise, random erasing), run image by image under the
    image's own seed. Checked against create_transform called here on each file with the same seeds
    (python, numpy and torch RNGs), for any number of loader workers; a source that augments whole
    batches refuses per-image steps."""
    import random

    from timm.data import create_transform

    from core.augment import EVAL_CROP_SCALE, PerImageSteps
    from core.data import epoch_generator as order_generator

    steps = PerImageSteps("rand-m9-mstd0.5-inc1", 0.25)
    got = {}
    for workers in (0, 2):
        cfg = DataConfig(dataset="imagefolder", root=str(image_root), val_fraction=0.25, num_workers=workers)
        source = open_dataset(cfg, img_size=16, in_chans=3)
        got[workers] = collect(source, batch_size=4, drop_last=False, crop_scale=EVAL_CROP_SCALE, steps=steps)
    assert torch.equal(got[0][0], got[2][0]) and torch.equal(got[0][1], got[2][1])

    reference = create_transform(input_size=16, is_training=True, scale=EVAL_CROP_SCALE, auto_augment=steps.rand_augment,
                                 interpolation="bicubic", re_prob=steps.reprob, re_mode="pixel", re_count=1,
                                 mean=data_module.IMAGENET_MEAN, std=data_module.IMAGENET_STD)
    part, rows = source._split("train")
    generator = order_generator(0, 0, "train")
    rows = rows[torch.randperm(len(rows), generator=generator)]
    seeds = torch.randint(2**62, (len(rows),), generator=generator)
    folder = source._folders[part]
    expected = []
    for row, seed in zip(rows.tolist(), seeds.tolist()):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        expected.append(reference(folder.loader(folder.samples[row][0])))
    torch.testing.assert_close(got[0][0], torch.stack(expected), rtol=0, atol=1e-6)
    plain = collect(source, batch_size=4, drop_last=False, crop_scale=EVAL_CROP_SCALE)[0]
    assert not torch.allclose(plain, got[0][0])  # RandAugment and erasing changed the images

    synthetic = open_dataset(DataConfig(dataset="synthetic", synthetic_size=16), img_size=16, in_chans=3)
    with pytest.raises(ConfigError, match="augments whole batches"):
        collect(synthetic, steps=steps)


def test_imagefolder_missing_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="data.root") as info:
        open_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path)), img_size=16, in_chans=3)
    assert str(tmp_path / "train") in str(info.value)


# ---- batching and determinism -------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic() -> DataSource:
    return open_dataset(DataConfig(dataset="synthetic", synthetic_size=200, val_fraction=0.1), img_size=16,
                        in_chans=3)


def test_synthetic_is_deterministic_and_follows_the_model() -> None:
    images, labels = synthetic_images(50, 2, 20, seed=0)
    assert images.shape == (50, 2, 20, 20) and images.dtype == torch.uint8
    again = synthetic_images(50, 2, 20, seed=0)
    assert torch.equal(again[0], images) and torch.equal(again[1], labels)
    assert set(synthetic_images(500, 1, 8, seed=1)[1].tolist()) == set(range(10))
    assert images.float().std() > 20  # gratings, not a flat image


def test_same_seed_and_epoch_give_identical_batches(synthetic: DataSource) -> None:
    for augmentation in AUGMENTATIONS:
        first, second = collect(synthetic, augmentation=augmentation), collect(synthetic, augmentation=augmentation)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_other_epoch_or_seed_changes_order_and_augmentation(synthetic: DataSource) -> None:
    base = collect(synthetic, drop_last=False)
    for other in (collect(synthetic, epoch=1, drop_last=False), collect(synthetic, seed=1, drop_last=False)):
        assert not torch.equal(other[1], base[1])
    # Without shuffling the order is the split's own, and only the augmentation changes.
    still = collect(synthetic, shuffle=False, drop_last=False), collect(synthetic, shuffle=False, epoch=1,
                                                                         drop_last=False)
    assert torch.equal(still[0][1], still[1][1]) and not torch.equal(still[0][0], still[1][0])
    # Every training image is seen once per epoch.
    assert torch.equal(torch.sort(base[1]).values, torch.sort(still[0][1]).values)


def test_steps_per_epoch_matches_the_batches(synthetic: DataSource) -> None:
    assert synthetic.num_samples("train") == 180
    for drop_last, steps in ((True, 11), (False, 12)):
        assert synthetic.steps_per_epoch("train", 16, drop_last) == steps
        batches = list(synthetic.batches("train", batch_size=16, augmentation="none", shuffle=True, seed=0, epoch=0,
                                         device=CPU, drop_last=drop_last))
        assert len(batches) == steps and all(len(x) == len(y) for x, y in batches)
    assert len(batches[-1][0]) == 180 - 11 * 16


def test_fixed_images_are_the_split_head_without_augmentation(synthetic: DataSource) -> None:
    images, labels = synthetic.fixed_images("test", 20, CPU)
    head = collect(synthetic, "test", augmentation="none", shuffle=False, seed=5, epoch=3, batch_size=7,
                   drop_last=False)
    assert torch.equal(images, head[0][:20]) and torch.equal(labels, head[1][:20])
    assert len(synthetic.fixed_images("val", 10_000, CPU)[0]) == synthetic.num_samples("val")


def test_bad_names_raise_at_the_call(synthetic: DataSource) -> None:
    with pytest.raises(ValueError, match="crop_random_jitter"):
        synthetic.batches("train", batch_size=4, augmentation="bogus", shuffle=True, seed=0, epoch=0, device=CPU)
    with pytest.raises(ValueError, match="valid"):
        synthetic.batches("holdout", batch_size=4, augmentation="none", shuffle=True, seed=0, epoch=0, device=CPU)


def test_epoch_generator_mixes_all_inputs() -> None:
    draws = {tuple(torch.rand(4, generator=epoch_generator(s, e, split)).tolist())
             for s in (-1, 0, 1) for e in (0, 1) for split in ("train", "val")}
    assert len(draws) == 12


# ---- augmentation presets -----------------------------------------------------------------------

def test_unknown_augmentation_lists_the_valid_names() -> None:
    for lookup in (get_augmentation, lambda name: get_pil_transform(name, 32)):
        with pytest.raises(ValueError) as info:
            lookup("crop_huge")
        assert all(name in str(info.value) for name in AUGMENTATIONS)
    assert set(PIL_TRANSFORMS) == set(AUGMENTATIONS) == set(typing.get_args(Augmentation))


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
@pytest.mark.parametrize("shape,size", [((16, 1, 28, 28), 28), ((16, 3, 32, 32), 28), ((16, 3, 24, 40), 32)])
def test_preset_shape_and_range(name: str, shape: tuple[int, ...], size: int) -> None:
    images = torch.randint(0, 256, shape, dtype=torch.uint8)  # noise: the worst case for bicubic overshoot
    out = get_augmentation(name)(images, size, torch.Generator().manual_seed(0))
    assert out.shape == (shape[0], shape[1], size, size) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    float_out = get_augmentation(name)(images.float() / 255, size, torch.Generator().manual_seed(0))
    torch.testing.assert_close(float_out, out)


def test_none_is_the_centre_crop_and_deterministic() -> None:
    images = torch.randint(0, 256, (4, 3, 28, 36), dtype=torch.uint8)
    out = get_augmentation("none")(images, 28, torch.Generator().manual_seed(0))
    assert torch.equal(out, TF.center_crop(images, [28, 28]).float() / 255)
    assert torch.equal(out, get_augmentation("none")(images, 28, torch.Generator().manual_seed(1)))
    square = torch.rand(4, 1, 28, 28)
    resized = TF.resize(square, [32, 32], interpolation=T.InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    torch.testing.assert_close(get_augmentation("none")(square, 32, torch.Generator()), resized)


def test_resized_crop_at_output_size_copies_pixels() -> None:
    images = torch.rand(32, 2, 40, 40)
    g = torch.Generator().manual_seed(0)
    top, left = torch.randint(0, 13, (32,), generator=g), torch.randint(0, 13, (32,), generator=g)
    side = torch.full((32,), 28)
    flip = sample_flips(32, g)
    out = resized_crop(images, CropBoxes(top, left, side, side), 28, flip)
    for i in range(32):
        crop = images[i, :, top[i]:top[i] + 28, left[i]:left[i] + 28]
        torch.testing.assert_close(out[i], crop.flip(-1) if flip[i] else crop, atol=1e-5, rtol=0)


def test_random_resized_crop_matches_torchvision_statistics() -> None:
    boxes = sample_resized_crops(20000, 224, 224, torch.Generator().manual_seed(0))
    scale = (boxes.height * boxes.width).double() / 224**2
    log_ratio = torch.log(boxes.width.double() / boxes.height)
    assert scale.min() >= 0.2 - 0.01 and scale.max() <= 1  # 0.01: torchvision rounds w and h too
    assert log_ratio.abs().max() <= math.log(4 / 3) + 0.01
    assert (boxes.top >= 0).all() and (boxes.top + boxes.height <= 224).all()
    assert (boxes.left >= 0).all() and (boxes.left + boxes.width <= 224).all()
    torch.manual_seed(0)
    crop = T.RandomResizedCrop(224, scale=(0.2, 1.0))
    reference = torch.tensor([(lambda p: p[2] * p[3])(crop.get_params(torch.zeros(1, 224, 224), crop.scale,
                                                                        crop.ratio)) for _ in range(1000)])
    # 0.03 is four standard errors of the reference's mean.
    assert float(scale.mean()) == pytest.approx(float(reference.double().mean() / 224**2), abs=0.03)
    # Below the 0.6 of a uniform area: large crops with a non-square ratio do not fit and are redrawn.
    assert 0.5 < float(scale.mean()) < 0.6
    # A small image: the crops still stay inside it.
    small = sample_resized_crops(5000, 28, 28, torch.Generator().manual_seed(1))
    assert ((small.height * small.width) <= 28 * 28).all() and (small.top + small.height <= 28).all()


def test_random_resized_crop_falls_back_to_the_centre() -> None:
    boxes = sample_resized_crops(8, 4, 200, torch.Generator().manual_seed(0))  # no 0.2-area crop fits 4 rows
    top, left, height, width = T.RandomResizedCrop.get_params(torch.zeros(1, 4, 200), [0.2, 1.0], [3 / 4, 4 / 3])
    assert set(boxes.top.tolist()) == {top} and set(boxes.left.tolist()) == {left}
    assert set(boxes.height.tolist()) == {height} and set(boxes.width.tolist()) == {width}


@pytest.mark.parametrize("name", ["crop_fixed", "crop_random", "crop_random_jitter"])
def test_flip_happens_about_half_the_time(name: str) -> None:
    ramp = torch.linspace(0, 1, 32).expand(4000, 1, 32, 32)  # any crop of it rises left to right unless mirrored
    out = get_augmentation(name)(ramp, 32, torch.Generator().manual_seed(0))
    rows = out.mean(dim=2)[:, 0]  # jitter may flatten a row (clamping) but never reverses it
    flipped, kept = (rows[:, -1] < rows[:, 0]).sum(), (rows[:, -1] > rows[:, 0]).sum()
    assert flipped + kept > 3900 and 0.46 < float(flipped / (flipped + kept)) < 0.54


def test_jitter_matches_torchvision() -> None:
    for channels in (3, 1):
        images = torch.rand(6, channels, 8, 8)
        orders = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
        factors = torch.tensor([[0.6, 1.4, 0.8], [1.3, 0.7, 1.2], [1.0, 0.6, 1.4]] * 2)
        out = apply_jitter(images, Jitter(factors, orders))
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
        for i in range(6):
            expected = images[i]
            for op in orders[i].tolist():
                expected = ops[op](expected, float(factors[i, op]))
            torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


def test_a_doctored_cifar_batch_cannot_run_code(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.exec"):
        open_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)), img_size=32, in_chans=3)
    assert not marker.exists()
