"""Where each dataset's files are expected, and whether they are there, without reading them.

No torch here: `ablate run` checks that every stage's data is where its config says before
anything is created or started (core/data.py reads the files, in the trials).
"""
from __future__ import annotations

import functools
from pathlib import Path

CACHE_ROOT = "~/.cache/mae-ablate/data"
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
DEFAULT_ROOTS = {"fashion_mnist": FASHION_MNIST_ROOT, "cifar10": CACHE_ROOT, "cifar100": CACHE_ROOT,
                 "imagefolder": f"{CACHE_ROOT}/imagenet"}
IMAGEFOLDER_HINT = "a folder with train/<class>/<image> and val/<class>/<image> (ImageNet layout)"


def data_root(dataset: str, root: str | None) -> Path | None:
    """The folder a dataset is read from (`root`, or the dataset's default); None for synthetic data."""
    if dataset not in DEFAULT_ROOTS:
        return None
    return Path(root if root is not None else DEFAULT_ROOTS[dataset]).expanduser()


def describe(dataset: str, root: str | None) -> str:
    """'fashion_mnist from /usr/share/datasets/fashion-mnist', for the lines `ablate run` prints first."""
    where = data_root(dataset, root)
    if where is None:
        return f"{dataset} (generated in memory, no files)"
    if dataset in CIFAR_FOLDERS and not (where / CIFAR_FOLDERS[dataset]).is_dir():
        return f"{dataset} from {where.resolve()} (downloaded there by the first trial)"
    return f"{dataset} from {where.resolve()}"


def missing_data(dataset: str, root: str | None) -> str | None:
    """Why `dataset` cannot be read from `root` (None: its default folder) and how to get it; None
    when its files are there (CIFAR: or when torchvision will download them into `root`)."""
    where = data_root(dataset, root)
    if where is None:
        return None
    if dataset == "fashion_mnist":
        stems = [stem for pair in FASHION_MNIST_FILES.values() for stem in pair]
        missing = [f"{stem}.gz" for stem in stems if not any((where / n).is_file() for n in (f"{stem}.gz", stem))]
        if not missing:
            return None
        found = "does not exist" if not where.is_dir() else f"lacks {', '.join(missing)}"
        return (f"no Fashion-MNIST at {where}: the folder {found}; install it with `apt-get install "
                f"dataset-fashion-mnist` (into {FASHION_MNIST_ROOT}, the default) or set data.root to a folder "
                f"holding the four IDX files (.gz or not)")
    if dataset in CIFAR_FOLDERS:
        if where.exists() and not where.is_dir():
            return f"{where} is a file, not a folder; set data.root to the folder holding {CIFAR_FOLDERS[dataset]}/"
        return None  # present, or downloaded there by the first trial (core/data.py)
    if dataset == "imagefolder":
        for sub in ("train", "val"):
            folder = where / sub
            if not folder.is_dir():
                return f"no image folder at {folder}; set data.root to {IMAGEFOLDER_HINT}"
            if not any(p.is_dir() for p in folder.iterdir()):
                return f"no class folders in {folder}; set data.root to {IMAGEFOLDER_HINT}"
        return None
    return None


# Training-file sizes of the datasets whose size is fixed (images in the `train` part, before the
# validation split is carved from it); an image folder is counted, synthetic data is its setting.
TRAIN_FILE_IMAGES = {"fashion_mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000}
# torchvision.datasets.folder.IMG_EXTENSIONS, the files ImageFolder reads (no torch import here).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


TEST_FILE_IMAGES = {"fashion_mnist": 10_000, "cifar10": 10_000, "cifar100": 10_000}


@functools.lru_cache(maxsize=64)
def _count_images(folder: Path) -> int | None:
    """Counted once per process: planning asks for every arm and seed, and ImageNet has 1.3M files."""
    if not folder.is_dir():
        return None
    return sum(1 for path in folder.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS)


def train_file_images(dataset: str, root: str | None, synthetic_size: int) -> int | None:
    """Images in the dataset's training file or folder; None when an image folder is not there."""
    if dataset == "synthetic":
        return synthetic_size
    if dataset in TRAIN_FILE_IMAGES:
        return TRAIN_FILE_IMAGES[dataset]
    folder = data_root(dataset, root)
    return None if folder is None else _count_images(folder / "train")


def test_file_images(dataset: str, root: str | None, synthetic_size: int) -> int | None:
    """Images in the dataset's test file or folder (an image folder's `val/`); None when not there."""
    if dataset == "synthetic":
        return max(16, synthetic_size // 4)  # as core.data makes it
    if dataset in TEST_FILE_IMAGES:
        return TEST_FILE_IMAGES[dataset]
    folder = data_root(dataset, root)
    return None if folder is None else _count_images(folder / "val")


def train_images(dataset: str, root: str | None, synthetic_size: int, val_fraction: float,
                 train_limit: int | None) -> int | None:
    """Images in the `train` split a stage trains on: the training file less the validation share
    (as core.data.carve_splits carves it), at most `train_limit`; None when unknown."""
    total = train_file_images(dataset, root, synthetic_size)
    return None if total is None else carve(total, val_fraction, train_limit)[0]


def carve(total: int, val_fraction: float, train_limit: int | None) -> tuple[int, int]:
    """(train, val) images of a training file of `total`, as core.data.carve_splits cuts it."""
    val = int(round(total * val_fraction))
    train = total - val
    return (min(train, train_limit) if train_limit else train), val
