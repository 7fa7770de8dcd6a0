"""Loader-only throughput: images per second out of `DataSource.batches`, no model.

The data path must never be the bottleneck of training: an MAE train step at Fashion-MNIST size
does about 600 img/s on two CPU cores, so the loader should do many thousands.

    .venv/bin/python benchmarks/bench_data.py                      # Fashion-MNIST, every preset, batch 256
    .venv/bin/python benchmarks/bench_data.py --augmentation crop_random_jitter --threads 1
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import save  # noqa: E402
from core.augment import AUGMENTATIONS  # noqa: E402
from core.config import DataConfig  # noqa: E402
from core.data import open_dataset  # noqa: E402

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


def train_step_rate(batch_size: int, steps: int = 5) -> float:
    """The MAE train step it has to keep up with: vit_fmnist as the laptop profile trains it (bf16
    autocast, the attention kernel the engine picks), AdamW, 75% masking."""
    from bench_pretrain import make_step, ours_model
    from core.config import ModelConfig

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    imgs = torch.randn(batch_size, 1, 28, 28)
    step = make_step(ours_model(ModelConfig(variant="vit_fmnist"), cpu, "bf16"), imgs, "bf16", hf=False)
    rates = []
    for i in range(steps + 2):
        start = time.perf_counter()
        step()
        if i >= 2:
            rates.append(batch_size / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=sorted(CHANNELS))
    parser.add_argument("--augmentation", default=None, choices=sorted(AUGMENTATIONS),
                        help="one preset (default: every preset, written to benchmarks/results/data.md)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--img-size", type=int, default=28)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    presets = [args.augmentation] if args.augmentation else sorted(AUGMENTATIONS)
    step = train_step_rate(args.batch_size) if args.dataset == "fashion_mnist" and device.type == "cpu" else None
    lines = ["### Data path alone", "",
             f"{args.dataset}, batch {args.batch_size} at {args.img_size} px, in-memory tensors augmented in "
             f"batches on {args.device} ({torch.get_num_threads()} threads), {args.epochs} epoch(s) of the training split."
             + (f" The vit_fmnist train step it feeds (bf16, as the laptop profile) runs **{step:,.0f} img/s** on the same threads." if step else ""),
             "", "| augmentation | loader img/s | loader / train step |", "|---|---|---|"]
    for preset in presets:
        rate = images_per_second(args.dataset, preset, args.batch_size, args.img_size, args.epochs, device)
        lines.append(f"| {preset} | {rate:,.0f} | {f'{rate / step:.0f}x' if step else '-'} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if not args.augmentation:
        save("data", text)


if __name__ == "__main__":
    main()
