"""Loader-only throughput: images per second out of `DataSource.batches`, no model.

The data path must never be the bottleneck of training: an MAE train step at Fashion-MNIST size
does about 600 img/s on two CPU cores, so the loader should do many thousands.

    .venv/bin/python benchmarks/bench_data.py                      # Fashion-MNIST, crop_random, batch 256
    .venv/bin/python benchmarks/bench_data.py --augmentation crop_random_jitter --threads 1
"""
from __future__ import annotations

import argparse
import time

import torch

from core.augment import AUGMENTATIONS
from core.config import DataConfig
from core.data import open_dataset

CHANNELS = {"fashion_mnist": 1, "cifar10": 3, "cifar100": 3, "imagefolder": 3, "synthetic": 3}


def images_per_second(dataset: str, augmentation: str, batch_size: int, img_size: int, epochs: int,
                      device: torch.device) -> float:
    source = open_dataset(DataConfig(dataset=dataset), img_size=img_size, in_chans=CHANNELS[dataset])
    # Warm-up: the first call copies the dataset to the device.
    next(iter(source.batches("train", batch_size=batch_size, augmentation=augmentation, shuffle=True, seed=0,
                             epoch=0, device=device)))
    seen = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        for images, _ in source.batches("train", batch_size=batch_size, augmentation=augmentation, shuffle=True,
                                        seed=0, epoch=epoch, device=device):
            seen += len(images)
    if device.type == "cuda":
        torch.cuda.synchronize()  # kernels run asynchronously: time the work, not the launches
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=sorted(CHANNELS))
    parser.add_argument("--augmentation", default="crop_random", choices=sorted(AUGMENTATIONS))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--img-size", type=int, default=28)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rate = images_per_second(args.dataset, args.augmentation, args.batch_size, args.img_size, args.epochs,
                             torch.device(args.device))
    print(f"{args.dataset} {args.augmentation} batch {args.batch_size} at {args.img_size} px on {args.device} "
          f"({torch.get_num_threads()} threads): {rate:,.0f} img/s")


if __name__ == "__main__":
    main()
