"""Fine-tuning, end to end or partial: an importable `finetune(job, encoder, out_dir, report)`, no Ray or MLflow.

As the release's `main_finetune.py` / `engine_finetune.py`: AdamW (0.9, 0.999) over timm's
layer-decay parameter groups (`lr_scale = decay^(num_layers - layer_id)`, no weight decay on 1-D
parameters, cls token and pos embed), `lr = blr * effective_batch / 256`, per-iteration warmup then
cosine to `min_lr`, drop path, RandAugment, random erasing, mixup/cutmix with label smoothing
(SoftTargetCrossEntropy), bf16 autocast when asked. `init="random"` trains the same recipe from
timm's random initialisation: the from-scratch baseline.

The in-memory data path yields normalised float batches on the device, already cropped and
flipped by the data source's `augmentation` preset; the release's per-image PIL steps that follow
the crop run on those batches in the release's order: RandAugment (timm's own PIL ops, image by
image, on the batch denormalised to uint8 as the release sees it), then random erasing (timm's,
on the normalised batch), then mixup/cutmix (timm's, on the batch).

Partial fine-tuning (Figure 9): `tune_blocks` k trains the last k blocks, the final norm (or
fc_norm) and the head; 0.5 trains the MLP sub-block of the last block (norm2 + mlp) with them; 0
trains only a BatchNorm + Linear head as linear probing does. Frozen blocks run in eval mode (no
drop path: they are a fixed feature extractor) and are left out of the optimiser, so they stay
bit-equal.

Data-parallel, as core/pretrain.py: when a launcher has initialised torch.distributed
(ablate/execution/distributed.py), every rank trains its shard of each epoch's micro-batches under DDP;
the effective batch is batch_size x world_size x accum_iter (the lr rule uses it); gradients are
all-reduced once per optimizer step (`no_sync` on the other accumulation micro-steps); evaluation
is sharded and its hit counts summed; rank 0 alone checkpoints and calls `report`. Images and
their crops are functions of the position in the epoch (core/data.py), so without the random
steps after the crop (RandAugment, erasing, mixup/cutmix, drop path) N workers train exactly as
one worker with N x the accumulation. Those steps draw from the global RNGs, which rank 0 seeds
as a single process does and the other ranks from streams of their own, so their draws differ
from rank to rank (as the release's per-GPU ones do) and the run is reproducible for a given
worker count, not across worker counts. The probe head's BatchNorm (tune_blocks 0) keeps
running statistics per rank; they are averaged over the ranks after every epoch.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from torch import Tensor, nn

from core.augment import EVAL_CROP_SCALE, PerImageSteps, posterize_to_zero_bits
from core.classifier import ClassifierViT, build_classifier, probe_head, topk_correct
from core.data import DataSource, open_dataset
from core.device import autocast, choose_attention
from core.distributed import Dist
from core.engine import Report, Run
from core.errors import ConfigError
from core.eval_config import TIMM_POOL, FinetuneConfig, FinetuneJob
from core.progress import EpochProgress
from core.schedule import adjust_learning_rate

PROTOCOL = "finetune"
EVAL_BATCH_SIZE = 512  # inference only: any size gives the same numbers
BETAS = (0.9, 0.999)
MIXUP_SWITCH_PROB = 0.5  # with both mixup and cutmix on, cutmix for half the batches (the release)


def finetune(job: FinetuneJob, encoder: Mapping[str, Tensor] | None, out_dir: Path,
             report: Report | None = None) -> dict:
    """Fine-tune `encoder` (None or `init="random"`: timm's random initialisation) on `job.data`.

    Checkpoints into `out_dir` every `checkpoint_every` epochs and resumes from a good checkpoint
    found there. Calls `report(metrics)` once per epoch (on rank 0) with epoch, train_loss, lr,
    ft_val_top1, img_per_s, epoch_time_s, and at the last epoch ft_top1, ft_top5 (test split,
    percent: read once, at the end, so nothing during training looks at it); returns the last
    epoch's. Under torch.distributed every rank must see the same `out_dir`.
    """
    cfg = job.finetune
    run = Run.start(PROTOCOL, job, cfg, out_dir)  # random init and head init: from the seed, the same on every rank
    dist, device = run.dist, run.device
    source = open_dataset(job.data, img_size=job.model.img_size, in_chans=job.model.in_chans)
    net = build_finetune_model(job, source.num_classes, encoder if cfg.init == "pretrained" else None).to(device)
    net = choose_attention(net, device, cfg.precision)
    optimizer = torch.optim.AdamW(param_groups(net, cfg), lr=cfg.lr(workers=dist.world_size), betas=BETAS)
    micro_steps = source.steps_per_epoch("train", cfg.batch_size, shard=dist.shard)
    # Only whole optimizer steps: a tail that cannot fill batch_size x world x accum_iter images
    # would be lost to the next epoch's zero_grad anyway.
    steps = micro_steps - micro_steps % cfg.accum_iter
    if steps == 0:
        global_batch = cfg.batch_size * dist.world_size * cfg.accum_iter
        raise ConfigError(f"batch_size x workers x accum_iter = {cfg.batch_size} x {dist.world_size} x "
                         f"{cfg.accum_iter} = {global_batch} exceeds the {source.num_samples('train')} training images")

    effective_batch = cfg.effective_batch * dist.world_size
    run.resume(net, optimizer, effective_batch)
    if run.done:
        return run.metrics

    augment = BatchAugment(cfg, source, device)
    criterion = make_criterion(cfg)
    ddp = dist.wrap_ddp(net)  # frozen parameters (requires_grad False) are not DDP's concern
    forward = torch.compile(ddp) if cfg.compile else ddp
    # Evaluation runs the model itself: DDP's forward is for training, and ranks see different
    # numbers of evaluation batches.
    infer = forward if ddp is net else (torch.compile(net) if cfg.compile else net)

    def one_epoch(epoch: int) -> dict:
        start = time.perf_counter()
        train_loss, lr, train_time = train_one_epoch(net, forward, optimizer, source, augment, criterion, job, epoch,
                                                     dist, steps, ddp=ddp)
        dist.average_buffers(net)  # the probe head's BatchNorm statistics: one model to evaluate and save
        val_top1, _ = evaluate(infer, net, source, "val", cfg, dist)
        metrics = {"epoch": epoch, "train_loss": train_loss, "lr": lr, "ft_val_top1": val_top1,
                   "img_per_s": steps * cfg.batch_size * dist.world_size / train_time}
        if epoch + 1 == cfg.epochs:  # the test split is read once, at the end: what is watched per epoch is val
            metrics["ft_top1"], metrics["ft_top5"] = evaluate(infer, net, source, "test", cfg, dist)
        metrics["epoch_time_s"] = time.perf_counter() - start
        return metrics

    return run.epochs(one_epoch, model=net, optimizer=optimizer, effective_batch=effective_batch, report=report)


# ---- the model and what trains ---------------------------------------------------------------------

def build_finetune_model(job: FinetuneJob, num_classes: int, encoder: Mapping[str, Tensor] | None) -> ClassifierViT:
    cfg = job.finetune
    net = build_classifier(job.model, num_classes, global_pool=TIMM_POOL[cfg.pool], drop_path=cfg.drop_path,
                           encoder=encoder)
    if cfg.tune_blocks == 0:
        net.head = probe_head(net.embed_dim, num_classes)
    set_trainable(net, cfg.tune_blocks)
    return net


def set_trainable(net: ClassifierViT, tune_blocks: float | None) -> None:
    """requires_grad for what `tune_blocks` trains (see the module docstring); everything else frozen."""
    if tune_blocks is None:
        net.requires_grad_(True)
        return
    net.requires_grad_(False)
    trainable: list[nn.Module] = [net.head]
    if tune_blocks > 0:
        trainable += [net.norm, net.fc_norm]  # whichever this pooling has; the other is an Identity
    if tune_blocks == 0.5:
        trainable += [net.blocks[-1].norm2, net.blocks[-1].mlp]
    elif tune_blocks >= 1:
        trainable += list(net.blocks[len(net.blocks) - int(tune_blocks):])
    for module in trainable:
        module.requires_grad_(True)


def train_mode(net: nn.Module) -> None:
    """Train mode, except blocks with nothing to train: those run as the fixed extractor they are."""
    net.train()
    for block in net.blocks:
        if not any(p.requires_grad for p in block.parameters()):
            block.eval()


def param_groups(net: ClassifierViT, cfg: FinetuneConfig) -> list[dict]:
    """timm's layer-decay groups over the trainable parameters; each carries its `lr_scale`."""
    return param_groups_layer_decay(net, weight_decay=cfg.weight_decay, no_weight_decay_list=net.no_weight_decay(),
                                    layer_decay=cfg.layer_decay)


def make_criterion(cfg: FinetuneConfig) -> nn.Module:
    if cfg.mixup > 0 or cfg.cutmix > 0:
        return SoftTargetCrossEntropy()  # mixup's targets carry the label smoothing
    if cfg.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing)
    return nn.CrossEntropyLoss()


# ---- one epoch ------------------------------------------------------------------------------------

def train_one_epoch(net: ClassifierViT, forward: nn.Module, optimizer: torch.optim.Optimizer, source: DataSource,
                    augment: BatchAugment, criterion: nn.Module, job: FinetuneJob, epoch: int, dist: Dist,
                    steps: int, *, ddp: nn.Module | None = None) -> tuple[float, float, float]:
    """One epoch of this rank's `steps` micro-batches; returns the loss averaged over all ranks, the
    last lr and seconds. `forward` runs the step (possibly compiled), `ddp` is the DDP wrapper whose
    `no_sync` skips the all-reduce on non-final accumulation micro-steps (default: `forward`)."""
    cfg = job.finetune
    device = dist.device
    ddp = forward if ddp is None else ddp
    train_mode(net)
    loss_sum, lr = 0.0, 0.0
    optimizer.zero_grad(set_to_none=True)
    batches = source.batches("train", batch_size=cfg.batch_size, augmentation=cfg.augmentation, shuffle=True,
                             seed=cfg.seed, epoch=epoch, device=device, shard=dist.shard, crop_scale=EVAL_CROP_SCALE,
                             steps=augment.per_image)
    peak_lr = cfg.lr(workers=dist.world_size)
    start = time.perf_counter()
    with EpochProgress(f"fine-tune epoch {epoch + 1}/{cfg.epochs}", steps) as progress:
        for step, (images, labels) in zip(range(steps), batches):
            if step % cfg.accum_iter == 0:
                lr = adjust_learning_rate(optimizer, step / steps + epoch, cfg, lr=peak_lr)
            images, targets = augment(images, labels)
            last = (step + 1) % cfg.accum_iter == 0
            with dist.no_sync(ddp, sync=last):
                with autocast(device, cfg.precision):
                    loss = criterion(forward(images), targets)
                value = dist.backward(loss, cfg.accum_iter, "fine-tuning", epoch, step)
            if last:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += value
            progress.update(loss=value)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    mean_loss = float(dist.all_reduce_mean(torch.tensor(loss_sum / steps, dtype=torch.float64, device=device)))
    return mean_loss, lr, elapsed


@torch.no_grad()
def evaluate(forward: nn.Module, net: nn.Module, source: DataSource, split: str, cfg: FinetuneConfig,
             dist: Dist) -> tuple[float, float]:
    """Top-1 and top-5 (percent) on the un-augmented `split`, each rank counting its shard of the
    batches and the counts summed over ranks; NaN when the split is empty."""
    if source.num_samples(split) == 0:
        return float("nan"), float("nan")
    net.eval()
    device = dist.device
    hits = torch.zeros(3, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, images
    for images, labels in source.batches(split, batch_size=EVAL_BATCH_SIZE, augmentation="none", shuffle=False,
                                         seed=cfg.seed, epoch=0, device=device, drop_last=False, shard=dist.shard):
        with autocast(device, cfg.precision):
            logits = forward(images)
        top1, top5 = topk_correct(logits.float(), labels, (1, 5))
        hits += torch.tensor([top1, top5, labels.shape[0]], dtype=torch.float64, device=device)
    top1, top5, total = dist.all_reduce_sum(hits).tolist()
    return 100.0 * top1 / total, 100.0 * top5 / total


# ---- augmentation after the crop -------------------------------------------------------------------

class BatchAugment:
    """RandAugment, random erasing, then mixup/cutmix on a normalised batch: (images, labels) -> (images, targets).

    Every draw comes from the global RNGs (python, numpy, torch), which `seed_epoch` seeds. A source
    that transforms image by image (an image folder, `source.per_image`) runs RandAugment and
    erasing in its own per-image transform (timm's `create_transform`, as the release does; its
    draws seeded per image): `per_image` says which, and only mixup/cutmix run here.
    """

    def __init__(self, cfg: FinetuneConfig, source: DataSource, device: torch.device) -> None:
        self.per_image = None
        self.rand_augment = self.erasing = None
        if source.per_image and cfg.augmentation == "crop_random":
            self.per_image = PerImageSteps(cfg.rand_augment, cfg.reprob)
        else:
            self.rand_augment = (RandAugmentBatch(cfg.rand_augment, source.mean, source.std, source.img_size)
                                 if cfg.rand_augment else None)
            self.erasing = (RandomErasing(probability=cfg.reprob, mode="pixel", max_count=1, num_splits=0,
                                          device=str(device)) if cfg.reprob > 0 else None)
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:  # FinetuneConfig checked that the batch size is even
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=1.0, switch_prob=MIXUP_SWITCH_PROB,
                               mode="batch", label_smoothing=cfg.label_smoothing, num_classes=source.num_classes)

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if self.rand_augment is not None:
            images = self.rand_augment(images)
        if self.erasing is not None:
            images = self.erasing(images)
        if self.mixup is not None:
            return self.mixup(images, labels)
        return images, labels


class RandAugmentBatch:
    """timm's `rand_augment_transform` (the release's RandAugment, PIL ops) applied image by image.

    Chosen over torchvision's tensor RandAugment, whose op set and magnitudes differ from the
    paper's `rand-m9-mstd0.5-inc1`. The batch is denormalised and rounded to uint8, as the
    release's PIL images are, and normalised again afterwards. One-channel images run as PIL
    "L" images, where the colour op is a no-op. Costs a few tens of microseconds per small image.
    """

    def __init__(self, config: str, mean: tuple[float, ...], std: tuple[float, ...], img_size: int) -> None:
        if len(mean) not in (1, 3):
            raise ConfigError(f"RandAugment works on 1- or 3-channel images, not {len(mean)}; set rand_augment: null")
        fill = tuple(min(255, round(255 * m)) for m in mean)
        hparams = dict(translate_const=int(img_size * 0.45), img_mean=fill if len(fill) == 3 else fill[0],
                       interpolation=Image.Resampling.BICUBIC)  # as timm's create_transform for the release
        self.transform = rand_augment_transform(config, hparams)
        posterize_to_zero_bits(self.transform)
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        device, channels = images.device, images.shape[1]
        pixels = (images.detach().float().cpu() * self.std + self.mean).mul_(255).round_().clamp_(0, 255)
        pixels = pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
        # (H, W, 3) uint8 opens as an RGB image, (H, W) as an L image.
        out = np.stack([np.asarray(self.transform(Image.fromarray(p if channels == 3 else p[..., 0])))
                        for p in pixels])
        out = torch.from_numpy(out.reshape(pixels.shape)).permute(0, 3, 1, 2).float().div_(255)
        return ((out - self.mean) / self.std).to(device)
