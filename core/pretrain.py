"""MAE pre-training: an importable `pretrain(job, out_dir, report)`, no Ray or MLflow inside.

As the release's `main_pretrain.py` / `engine_pretrain.py`: AdamW (0.9, 0.95) with weight decay
on all but 1-D parameters and biases, `lr = blr * effective_batch / 256`, per-iteration warmup
then cosine, gradient accumulation. Added: bf16 autocast on CPU and GPU, optional torch.compile,
exact resume at epoch boundaries (data order and masks are functions of seed and epoch), a
checksum on every checkpoint, a clear error on a non-finite loss.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from timm.optim import param_groups_weight_decay

from core.checkpoint import load_latest, save_checkpoint, save_encoder
from core.config import PretrainJob
from core.data import DataSource, open_dataset
from core.device import autocast, resolve_device, seed_everything
from core.flops import train_flops_per_image
from core.model import MaskedAutoencoder
from core.progress import EpochProgress
from core.schedule import adjust_learning_rate

Report = Callable[[dict], None]
RECON_FILE = "reconstructions.npz"


def pretrain(job: PretrainJob, out_dir: Path, report: Report | None = None) -> dict:
    """Pre-train, checkpointing into `out_dir` and resuming from a good checkpoint found there.

    Calls `report(metrics)` once per epoch; returns the final metrics: pretrain_loss, img_per_s,
    pretrain_wall_clock_s, train_flops_per_img, epochs.
    """
    cfg = job.pretrain
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    source = open_dataset(job.data, img_size=job.model.img_size, in_chans=job.model.in_chans)
    model = MaskedAutoencoder(job.model).to(device)
    # fused: one kernel for all parameters (the per-tensor loop cost ~10% of a small model's step on CPU)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=cfg.lr(), betas=cfg.betas,
                                  fused=True)

    start_epoch, wall_clock = 0, 0.0
    state = load_latest(out_dir)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, wall_clock = state["epoch"] + 1, float(state.get("wall_clock_s", 0.0))
    elif model.target.needs_fit:
        fit_target(model, source, cfg.seed, device)

    step_fn = torch.compile(model) if cfg.compile else model
    flops = train_flops_per_image(model, device)
    metrics: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        metrics = train_one_epoch(step_fn, optimizer, source, job, epoch, device)
        wall_clock += metrics["epoch_time_s"]
        metrics.update(pretrain_wall_clock_s=wall_clock, train_flops_per_img=flops)
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
            save_checkpoint(out_dir, model=model, optimizer=optimizer, epoch=epoch, config=job.model_dump(mode="json"),
                            extra={"wall_clock_s": wall_clock, "metrics": metrics})
        if report is not None:
            report(metrics)
    if not metrics and state is not None:  # already finished: report what the checkpoint holds
        metrics = dict(state.get("metrics", {}))
    save_encoder(model, out_dir)
    save_reconstructions(model, source, out_dir / RECON_FILE, device)
    result = {"pretrain_loss": metrics.get("loss", float("nan")), "img_per_s": metrics.get("img_per_s", float("nan")),
              "pretrain_wall_clock_s": wall_clock, "train_flops_per_img": flops, "epochs": cfg.epochs}
    (out_dir / "pretrain_result.json").write_text(json.dumps(result, indent=2))
    return result


def train_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, source: DataSource,
                    job: PretrainJob, epoch: int, device: torch.device) -> dict:
    """One epoch; returns averaged metrics. Masks are drawn from a generator seeded by (seed, epoch)."""
    cfg = job.pretrain
    model.train()
    steps = source.steps_per_epoch("train", cfg.batch_size)
    if steps == 0:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the {source.num_samples('train')} training images")
    torch.manual_seed(cfg.seed * 100_003 + epoch)  # masks: a function of (seed, epoch), so resume is exact
    batches = source.batches("train", batch_size=cfg.batch_size, augmentation=job.data.augmentation, shuffle=True,
                             seed=cfg.seed, epoch=epoch, device=device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    lr = 0.0
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with EpochProgress(f"pretrain epoch {epoch + 1}/{cfg.epochs}", steps) as progress:
        for step, (imgs, _) in enumerate(batches):
            if step % cfg.accum_iter == 0:
                lr = adjust_learning_rate(optimizer, step / steps + epoch, cfg)
            with autocast(device, cfg.precision):
                loss, _, _ = model(imgs)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"non-finite pre-training loss {loss_value} at epoch {epoch}, step {step}")
            (loss / cfg.accum_iter).backward()
            if (step + 1) % cfg.accum_iter == 0:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss_value
            progress.update(loss=loss_value)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return {"epoch": epoch, "loss": float(loss_sum) / steps, "lr": lr, "img_per_s": steps * cfg.batch_size / elapsed,
            "epoch_time_s": elapsed}


@torch.no_grad()
def fit_target(model: MaskedAutoencoder, source: DataSource, seed: int, device: torch.device,
               max_images: int = 4096) -> None:
    """Fit a stateful target (PCA basis, k-means codebook) on un-augmented training patches."""
    n = min(max_images, source.num_samples("train"))
    imgs, _ = source.fixed_images("train", n, device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    model.target.fit(model.patchify(imgs).cpu(), generator=generator)
    model.target.to(device)


@torch.no_grad()
def save_reconstructions(model: MaskedAutoencoder, source: DataSource, path: Path, device: torch.device,
                         n: int = 8) -> Path:
    """Masked / reconstruction / original of `n` test images at the trained ratio and higher ones
    (the paper's Figures 2 and 4), as [0, 1] arrays (n, H, W, C) for the dashboards."""
    model.eval()
    imgs, _ = source.fixed_images("test", min(n, source.num_samples("test")), device)
    ratio = model.cfg.mask_ratio
    ratios = [ratio] + [r for r in (0.85, 0.95) if r > ratio + 1e-6]
    mean = torch.tensor(source.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(source.std, device=device).view(1, -1, 1, 1)

    def to_unit(x: torch.Tensor) -> torch.Tensor:
        return (x.float() * std + mean).clamp(0, 1)

    def to_image(x: torch.Tensor) -> np.ndarray:
        return x.permute(0, 2, 3, 1).cpu().numpy()  # (n, H, W, C)

    generator = torch.Generator(device="cpu").manual_seed(0)
    masked, recon = [], []
    for r in ratios:
        sampling = None if r == ratio else "random"  # other strategies may not honour other ratios
        noise = model.mask_noise(imgs.shape[0], device, r, generator, sampling)
        removed, pasted = model.reconstruct(imgs, noise, r)
        masked.append(to_image(to_unit(imgs) * (1 - removed) + 0.5 * removed))  # removed patches grey
        recon.append(to_image(to_unit(pasted)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, ratios=np.array(ratios), original=to_image(to_unit(imgs)), masked=np.stack(masked),
                        recon=np.stack(recon))
    tmp.replace(path)
    model.train()
    return path


def main(argv: list[str] | None = None) -> None:
    """`python -m core.pretrain [out_dir] [epochs]`: pre-train the Fashion-MNIST MAE and draw its reconstructions."""
    from core.config import DataConfig, PretrainConfig

    args = argv if argv is not None else sys.argv[1:]
    out_dir = Path(args[0] if args else "runs/pretrain-fmnist")
    epochs = int(args[1]) if len(args) > 1 else 5
    job = PretrainJob(data=DataConfig(dataset="fashion_mnist"),
                      pretrain=PretrainConfig(epochs=epochs, warmup_epochs=1, batch_size=256, blr=1.5e-4 * 4))
    print(f"pre-training {job.model.variant} on Fashion-MNIST for {epochs} epochs into {out_dir}")
    result = pretrain(job, out_dir, report=lambda m: print(
        f"epoch {m['epoch'] + 1}: loss {m['loss']:.4f}  lr {m['lr']:.2e}  {m['img_per_s']:.0f} img/s"))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
