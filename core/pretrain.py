"""MAE pre-training: an importable `pretrain(job, out_dir, report)`, no Ray or MLflow inside.

As the release's `main_pretrain.py` / `engine_pretrain.py`: AdamW (0.9, 0.95) with weight decay
on all but 1-D parameters and biases, `lr = blr * effective_batch / 256`, per-iteration warmup
then cosine, gradient accumulation. Added: bf16 autocast on CPU and GPU, optional torch.compile,
exact resume at epoch boundaries (data order and masks are functions of seed and epoch), a
checksum on every checkpoint, a clear error on a non-finite loss.

Data-parallel: when a launcher has initialised torch.distributed (ablate/execution/distributed.py runs this
function under Ray Train's TorchTrainer), the same function trains one shard per rank under DDP.
The effective batch is batch_size x world_size x accum_iter (the lr rule uses it); gradients are
all-reduced once per optimizer step (`no_sync` on the other accumulation micro-steps, which the
release did not do); rank 0 alone writes checkpoints, the encoder and reconstructions, and calls
`report`. Images, augmentation and masks are functions of the position in the epoch (core/data.py),
so N workers with accumulation A train exactly as one worker with accumulation N x A, and a
checkpoint resumes on any number of workers (the lr rule keeps the effective batch's peak lr only
if batch_size x workers x accum_iter is kept).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from timm.optim import param_groups_weight_decay

from core.checkpoint import save_encoder
from core.config import PretrainJob
from core.data import DataSource, open_dataset
from core.device import autocast, choose_attention
from core.distributed import Dist, unwrap
from core.engine import Report, Run
from core.errors import ConfigError
from core.flops import train_flops_per_image
from core.model import MaskedAutoencoder
from core.progress import EpochProgress
from core.schedule import adjust_learning_rate
from core.seeding import Stream, generator

PROTOCOL = "pretrain"
RECON_FILE = "reconstructions.npz"


def pretrain(job: PretrainJob, out_dir: Path, report: Report | None = None) -> dict:
    """Pre-train, checkpointing into `out_dir` and resuming from a good checkpoint found there.

    Calls `report(metrics)` once per epoch (on rank 0); returns the final metrics: pretrain_loss,
    img_per_s, pretrain_wall_clock_s, train_flops_per_img, epochs, workers. Under torch.distributed
    every rank must see the same `out_dir` (one machine, or storage shared by the nodes).
    """
    cfg = job.pretrain
    run = Run.start(PROTOCOL, job, cfg, out_dir)
    dist, device, out_dir = run.dist, run.device, run.out_dir
    source = open_dataset(job.data, img_size=job.model.img_size, in_chans=job.model.in_chans)
    model = choose_attention(MaskedAutoencoder(job.model).to(device), device, cfg.precision)
    peak_lr = cfg.lr(workers=dist.world_size)
    # fused: one kernel for all parameters (the per-tensor loop cost ~10% of a small model's step on CPU)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=peak_lr, betas=cfg.betas,
                                  fused=True)
    effective_batch = cfg.effective_batch * dist.world_size
    # saved from the unwrapped model: a checkpoint loads on any number of workers
    if not run.resume(model, optimizer, effective_batch) and model.target.needs_fit:
        fit_target(model, source, cfg.seed, device)  # identical on every rank: same seed, same images
    wall_clock = float(run.metrics.get("pretrain_wall_clock_s", 0.0))  # the resumed checkpoint's epoch's

    flops = train_flops_per_image(model, device)  # before DDP: its backward must not reach the reducer
    # A parameter without a gradient (the decoder's mask token when the encoder takes the mask
    # tokens or nothing is masked) would stall DDP's reducer unless it looks for unused ones.
    unused = job.model.mask_token_in_encoder or job.model.mask_ratio == 0
    ddp = dist.wrap_ddp(model, find_unused_parameters=unused)
    step_fn = torch.compile(ddp) if cfg.compile else ddp

    def one_epoch(epoch: int) -> dict:
        nonlocal wall_clock
        metrics = train_one_epoch(step_fn, optimizer, source, job, epoch, dist, ddp=ddp, peak_lr=peak_lr)
        wall_clock += metrics["epoch_time_s"]
        return {**metrics, "pretrain_wall_clock_s": wall_clock, "train_flops_per_img": flops}

    metrics = run.epochs(one_epoch, model=model, optimizer=optimizer, effective_batch=effective_batch, report=report)
    result = {"pretrain_loss": metrics.get("loss", float("nan")), "img_per_s": metrics.get("img_per_s", float("nan")),
              "pretrain_wall_clock_s": wall_clock, "train_flops_per_img": flops, "epochs": cfg.epochs,
              "workers": dist.world_size}
    if dist.is_main():
        save_encoder(model, out_dir)
        save_reconstructions(model, source, out_dir / RECON_FILE, device)
        (out_dir / "pretrain_result.json").write_text(json.dumps(result, indent=2))
    dist.barrier()
    return result


def mask_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The mask noise of global micro-batch `index` of an epoch: the same on any rank that processes it."""
    return generator(seed, Stream.MASK, epoch, index)


def train_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, source: DataSource,
                    job: PretrainJob, epoch: int, dist: Dist, *, ddp: torch.nn.Module | None = None,
                    peak_lr: float | None = None) -> dict:
    """One epoch of this rank's shard; returns metrics averaged over all ranks.

    `model` is what runs the step (possibly compiled), `ddp` the DDP wrapper whose `no_sync` skips
    the all-reduce on non-final accumulation micro-steps (default: `model`). Only whole optimizer
    steps run: the epoch's tail that cannot fill batch_size x world x accum_iter images is
    skipped, as it would be lost to the next epoch's zero_grad anyway.
    """
    cfg = job.pretrain
    ddp = model if ddp is None else ddp
    device = dist.device
    model.train()
    micro_steps = source.steps_per_epoch("train", cfg.batch_size, shard=dist.shard)
    steps = micro_steps - micro_steps % cfg.accum_iter
    if steps == 0:
        global_batch = cfg.batch_size * dist.world_size * cfg.accum_iter
        raise ConfigError(f"batch_size x workers x accum_iter = {cfg.batch_size} x {dist.world_size} x "
                         f"{cfg.accum_iter} = {global_batch} exceeds the {source.num_samples('train')} training images")
    batches = source.batches("train", batch_size=cfg.batch_size, augmentation=job.data.augmentation, shuffle=True,
                             seed=cfg.seed, epoch=epoch, device=device, shard=dist.shard)
    base = unwrap(ddp)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    lr = 0.0
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with EpochProgress(f"pretrain epoch {epoch + 1}/{cfg.epochs}", steps) as progress:
        for step, (imgs, _) in zip(range(steps), batches):
            if step % cfg.accum_iter == 0:
                lr = adjust_learning_rate(optimizer, step / steps + epoch, cfg, lr=peak_lr)
            index = step * dist.world_size + dist.rank  # this micro-batch's position in the epoch (core/data.py)
            noise = base.mask_noise(imgs.shape[0], device, generator=mask_generator(cfg.seed, epoch, index))
            last = (step + 1) % cfg.accum_iter == 0
            with dist.no_sync(ddp, sync=last):
                with autocast(device, cfg.precision):
                    loss, _, _ = model(imgs, noise=noise, loss_only=True)
                loss_value = dist.backward(loss, cfg.accum_iter, "pre-training", epoch, step)
            if last:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss_value
            progress.update(loss=loss_value)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    mean_loss = float(dist.all_reduce_mean(loss_sum / steps))
    images = steps * cfg.batch_size * dist.world_size
    return {"epoch": epoch, "loss": mean_loss, "lr": lr, "img_per_s": images / elapsed, "epoch_time_s": elapsed}


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
    try:
        np.savez_compressed(tmp, ratios=np.array(ratios), original=to_image(to_unit(imgs)), masked=np.stack(masked),
                            recon=np.stack(recon))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
