"""Checkpoints in the official release's format, loaded without executing pickled code.

A file holds `{'model', 'optimizer', 'epoch', 'scaler', 'args'}` as the release (so its tools read
ours) plus `config` (our resolved config as plain data) and `rng`. Loading is weights-only, with
`argparse.Namespace` allow-listed because the release stores its arguments that way.

Each file is written atomically (temporary file, fsync, rename) with a sidecar `.sha256`; the
previous checkpoint is kept, so a file truncated on disk is detected and the one before it used.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Any, Literal, Mapping

import torch

from core.errors import ConfigError, MissingFile
from core.files import replacing, write_text

LAST = "checkpoint-last.pth"
PREVIOUS = "checkpoint-prev.pth"
ENCODER = "encoder.pth"


class CheckpointError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to `path` atomically (core/files.py), then its checksum sidecar. A crash between
    the two leaves a checkpoint whose sidecar does not match: the resume skips it for the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, sync=True) as tmp:
        try:
            with tmp.open("wb") as f:
                torch.save(obj, f)
        except RuntimeError as e:
            # torch's zip writer reports a failed write as RuntimeError('... unexpected pos ...'):
            # named here for what it is when the disk is full (asked before the partial file is
            # removed and frees some space)
            if _disk_full(path.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp)) from e
            raise
    write_text(path.with_name(path.name + ".sha256"), _sha256(path) + "\n")


def _disk_full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail == 0 or stats.f_favail == 0


def safe_load(path: Path, verify: bool = True, mmap: bool = False) -> Any:
    """Weights-only load (no code runs), verifying the checksum sidecar when there is one. `mmap`:
    tensors are mapped from the file, read only when used."""
    side = path.with_name(path.name + ".sha256")
    if verify and side.exists() and side.read_text().strip() != _sha256(path):
        raise CheckpointError(f"{path}: checksum mismatch (file truncated or corrupted)")
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as e:  # unpickling refused or file damaged: never fall back to full pickle
            first = re.sub(r"\x1b\[[0-9;]*m", "", str(e).splitlines()[0] if str(e) else "")  # no terminal colours
            raise CheckpointError(f"{path}: cannot be loaded as weights-only ({type(e).__name__}: "
                                  f"{first[:200]})") from e


def save_checkpoint(out_dir: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    epoch: int, config: Mapping[str, Any], scaler: Any = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write `checkpoint-last.pth` after moving the previous one to `checkpoint-prev.pth`."""
    out_dir = Path(out_dir)
    last = out_dir / LAST
    if last.exists():
        os.replace(last, out_dir / PREVIOUS)
        side = last.with_name(LAST + ".sha256")
        if side.exists():
            os.replace(side, out_dir / (PREVIOUS + ".sha256"))
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "scaler": scaler.state_dict() if hasattr(scaler, "state_dict") else scaler,
        "args": argparse.Namespace(**_flatten(config)),
        "config": dict(config),
        **(extra or {}),
    }
    atomic_save(state, last)
    return last


def load_latest(out_dir: Path) -> dict[str, Any] | None:
    """The newest good checkpoint in `out_dir`, or None. A damaged newest file is skipped with a warning."""
    names = [name for name in (LAST, PREVIOUS) if (Path(out_dir) / name).exists()]
    for i, name in enumerate(names):
        try:
            return safe_load(Path(out_dir) / name)
        except CheckpointError as e:
            then = "falling back to the previous checkpoint" if i + 1 < len(names) else \
                "no good checkpoint is left: starting from the beginning"
            warnings.warn(f"{e}; {then}", stacklevel=2)
    return None


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "_"))
        else:
            flat[name] = value
    return flat


# ----------------------------------------------------------------------------------- encoders
def save_encoder(model: torch.nn.Module, out_dir: Path) -> Path:
    path = Path(out_dir) / ENCODER
    atomic_save(model.encoder_state_dict(), path)
    return path


def load_encoder(path: Path) -> dict[str, torch.Tensor]:
    """Encoder tensors (timm names, token pooling) from a pre-training folder, our encoder file,
    or any checkpoint with a `model` entry (the official `mae_pretrain_vit_*.pth` and `*_full.pth`)."""
    path = Path(path)
    if path.is_dir():
        path = path / ENCODER
    if not path.exists():
        raise MissingFile(f"{path}: no encoder file (has the pre-training stage finished?)")
    state = safe_load(path)
    if isinstance(state, Mapping) and "model" in state:
        state = state["model"]
    prefixes = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def encoder_for_timm(encoder: Mapping[str, torch.Tensor], global_pool: Literal["token", "avg"]) -> dict[str, torch.Tensor]:
    """Our encoder tensors as a timm VisionTransformer with this pooling (and num_classes=0) loads them strictly.

    With average pooling timm replaces the final `norm` by `fc_norm` after pooling; the trained
    final norm's affine parameters move there.
    """
    if global_pool == "token":
        return dict(encoder)
    if global_pool != "avg":
        raise ConfigError(f"unknown global_pool {global_pool!r}; valid: ['avg', 'token']")
    return {("fc_norm." + k[len("norm."):] if k.startswith("norm.") else k): v for k, v in encoder.items()}


def load_official(path: Path, model: torch.nn.Module, strict_decoder: bool = True) -> list[str]:
    """Load an official release file into our MaskedAutoencoder.

    `mae_pretrain_vit_*.pth` holds the encoder only (the decoder keeps its initialisation);
    `*_full.pth` / `mae_visualize_*.pth` hold both. Returns the keys the file did not provide.
    """
    state = safe_load(Path(path))
    weights = state["model"] if isinstance(state, Mapping) and "model" in state else state
    result = model.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: keys not in this model: {result.unexpected_keys[:5]}")
    missing = [k for k in result.missing_keys if not k.startswith(("target.",))]
    encoder_missing = [k for k in missing if not k.startswith(("decoder", "mask_token", "enc_mask_token"))]
    if encoder_missing or (strict_decoder and any(k.startswith("decoder") for k in weights) and missing):
        raise CheckpointError(f"{path}: missing keys {missing[:5]}")
    return missing
