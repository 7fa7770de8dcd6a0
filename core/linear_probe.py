"""Linear probing: an importable `linear_probe(job, encoder, out_dir, report)`, no Ray or MLflow inside.

As the release's `main_linprobe.py`: the encoder is frozen and runs in eval mode; the feature is
the class token after the final norm (or the average-pooled tokens after `fc_norm`); the head is
BatchNorm1d(affine=False, eps 1e-6) + Linear (trunc-normal std 0.01), trained with LARS
(momentum 0.9, trust 0.001) at `lr = blr * effective_batch / 256`, per-iteration warmup then
cosine, plain cross-entropy. The encoder runs under bf16 autocast when asked; the head always
runs in fp32 (it is tiny, and this makes the cached and live paths compute the same thing).

Fast path: with augmentation "none" every image's feature is the same in every epoch, so with
`cache_features` the frozen encoder runs once per split and the head trains on cached features.
The data source still draws each epoch's shuffled batches (cheap without the encoder) and each
image is matched to its cached feature by the hash of its exact pixels; so the head sees the same
batches in the same order as on the live path, without depending on how the source shuffles.
Hashing costs about a second per epoch for 50k small images, against an encoder pass saved.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.augment import EVAL_CROP_SCALE
from core.classifier import ClassifierViT, accuracy, build_classifier, features, probe_head
from core.data import DataSource, open_dataset
from core.device import autocast, choose_attention
from core.engine import Report, Run
from core.errors import ConfigError, Mismatch, NonFiniteLoss
from core.eval_config import TIMM_POOL, LinearProbeConfig, LinearProbeJob
from core.lars import LARS
from core.progress import EpochProgress
from core.schedule import adjust_learning_rate

Batches = Iterator[tuple[Tensor, Tensor]]
PROTOCOL = "linear_probe"
EVAL_BATCH_SIZE = 512  # inference only: any size gives the same numbers


def linear_probe(job: LinearProbeJob, encoder: Mapping[str, Tensor] | None, out_dir: Path,
                 report: Report | None = None) -> dict:
    """Train a linear head on the frozen `encoder` (None: a randomly initialised one).

    Checkpoints the head into `out_dir` every `checkpoint_every` epochs and resumes from a good
    checkpoint found there. Calls `report(metrics)` once per epoch with epoch, train_loss, lr,
    lin_top1, lin_top5 (test split, percent), lin_val_top1, img_per_s, epoch_time_s; returns the
    last epoch's metrics.
    """
    cfg = job.probe
    run = Run.start(PROTOCOL, job, cfg, out_dir)  # a random encoder and the head's init: from the seed
    device = run.device
    source = open_dataset(job.data, img_size=job.model.img_size, in_chans=job.model.in_chans)
    net = choose_attention(build_probe(job, source.num_classes, encoder).to(device), device, cfg.precision)
    optimizer = LARS(net.head.parameters(), lr=cfg.lr(), weight_decay=cfg.weight_decay)
    steps = source.steps_per_epoch("train", cfg.batch_size)
    if steps == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {source.num_samples('train')} training images")

    run.resume(net.head, optimizer, cfg.effective_batch)
    if run.done:
        return run.metrics

    setup_start = time.perf_counter()
    encode = _encoder_fn(net, device, cfg)
    fast = cfg.augmentation == "none" and cfg.cache_features
    feed = CachedFeatures(encode, source, cfg, device) if fast else LiveFeatures(encode, source, cfg, device)
    setup_time = time.perf_counter() - setup_start

    def one_epoch(epoch: int) -> dict:
        nonlocal setup_time
        start = time.perf_counter()
        train_loss, lr, train_time = train_head_one_epoch(net.head, optimizer, feed.train(epoch), cfg, epoch, steps)
        net.head.eval()
        with torch.no_grad():
            top1, top5 = accuracy((net.head(f), y) for f, y in feed.split("test"))
            val_top1, _ = accuracy((net.head(f), y) for f, y in feed.split("val"))
        metrics = {"epoch": epoch, "train_loss": train_loss, "lr": lr, "lin_top1": top1, "lin_top5": top5,
                   "lin_val_top1": val_top1, "img_per_s": steps * cfg.batch_size / train_time,
                   "epoch_time_s": time.perf_counter() - start + setup_time}
        setup_time = 0.0
        return metrics

    return run.epochs(one_epoch, model=net.head, optimizer=optimizer, effective_batch=cfg.effective_batch,
                      report=report)


def build_probe(job: LinearProbeJob, num_classes: int, encoder: Mapping[str, Tensor] | None) -> ClassifierViT:
    """The classifier with a BatchNorm + Linear head; everything but the head frozen, encoder in eval mode."""
    net = build_classifier(job.model, num_classes, global_pool=TIMM_POOL[job.probe.pool], drop_path=0.0,
                           encoder=encoder)
    net.head = probe_head(net.embed_dim, num_classes)
    net.requires_grad_(False)
    net.head.requires_grad_(True)
    net.eval()
    return net


def _encoder_fn(net: ClassifierViT, device: torch.device, cfg: LinearProbeConfig) -> Callable[[Tensor], Tensor]:
    trunk = (lambda images: features(net, images))
    if cfg.compile:
        trunk = torch.compile(trunk)

    @torch.no_grad()
    def encode(images: Tensor) -> Tensor:
        with autocast(device, cfg.precision):
            return trunk(images).float()

    return encode


def train_head_one_epoch(head: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches,
                         cfg: LinearProbeConfig, epoch: int, steps: int) -> tuple[float, float, float]:
    """One epoch of the head on (features, labels) batches; returns mean loss, last lr and seconds."""
    head.train()
    loss_sum, lr = 0.0, 0.0
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with EpochProgress(f"linear probe epoch {epoch + 1}/{cfg.epochs}", steps) as progress:
        for step, (feats, labels) in enumerate(batches):
            if step % cfg.accum_iter == 0:
                lr = adjust_learning_rate(optimizer, step / steps + epoch, cfg)
            loss = F.cross_entropy(head(feats), labels)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLoss(f"non-finite linear-probe loss {value} at epoch {epoch}, step {step}")
            (loss / cfg.accum_iter).backward()
            if (step + 1) % cfg.accum_iter == 0:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += value
            progress.update(loss=value)
    return loss_sum / steps, lr, time.perf_counter() - start


class LiveFeatures:
    """Every batch goes through the frozen encoder: the path for augmented training."""

    def __init__(self, encode: Callable[[Tensor], Tensor], source: DataSource, cfg: LinearProbeConfig,
                 device: torch.device) -> None:
        self.encode, self.source, self.cfg, self.device = encode, source, cfg, device

    def train(self, epoch: int) -> Batches:
        for images, labels in self.source.batches("train", batch_size=self.cfg.batch_size,
                                                  augmentation=self.cfg.augmentation, shuffle=True,
                                                  seed=self.cfg.seed, epoch=epoch, device=self.device,
                                                  crop_scale=EVAL_CROP_SCALE):
            yield self.encode(images), labels

    def split(self, split: str) -> Batches:
        for images, labels in _eval_batches(self.source, split, self.cfg.seed, self.device):
            yield self.encode(images), labels


class CachedFeatures:
    """Features of every split computed once; training batches follow the source's shuffled order."""

    def __init__(self, encode: Callable[[Tensor], Tensor], source: DataSource, cfg: LinearProbeConfig,
                 device: torch.device) -> None:
        self.source, self.cfg, self.device = source, cfg, device
        self.cache: dict[str, tuple[Tensor, Tensor]] = {}
        self.rows: dict[bytes, int] = {}
        for split in ("train", "val", "test"):
            feats, labels, seen = [], [], 0
            for images, y in _eval_batches(source, split, cfg.seed, device):
                if split == "train":
                    for row, key in enumerate(_content_keys(images), seen):
                        self.rows.setdefault(key, row)  # duplicates share the first copy's (equal) feature
                feats.append(encode(images))
                labels.append(y)
                seen += y.shape[0]
            self.cache[split] = (torch.cat(feats) if feats else torch.empty(0), torch.cat(labels) if labels else
                                 torch.empty(0, dtype=torch.long))

    def train(self, epoch: int) -> Batches:
        feats = self.cache["train"][0]
        for images, labels in self.source.batches("train", batch_size=self.cfg.batch_size, augmentation="none",
                                                  shuffle=True, seed=self.cfg.seed, epoch=epoch, device=self.device):
            try:
                rows = [self.rows[key] for key in _content_keys(images)]
            except KeyError:
                raise Mismatch("the data source's 'none' augmentation is not deterministic, so cached features "
                                   "cannot be matched to its batches; set cache_features: false") from None
            yield feats[torch.tensor(rows, device=feats.device)], labels

    def split(self, split: str) -> Batches:
        feats, labels = self.cache[split]
        for i in range(0, labels.shape[0], EVAL_BATCH_SIZE):
            yield feats[i:i + EVAL_BATCH_SIZE], labels[i:i + EVAL_BATCH_SIZE]


def _eval_batches(source: DataSource, split: str, seed: int, device: torch.device) -> Batches:
    if source.num_samples(split) == 0:
        return iter(())
    return source.batches(split, batch_size=EVAL_BATCH_SIZE, augmentation="none", shuffle=False, seed=seed, epoch=0,
                          device=device, drop_last=False)


def _content_keys(images: Tensor) -> list[bytes]:
    """A digest of each image's exact values: identical images share a key, and so a feature."""
    flat = images.detach().to("cpu", torch.float32).contiguous().view(images.shape[0], -1).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]
