"""Checkpoints: the release's format, weights-only loading, checksums, timm export."""
from __future__ import annotations

import argparse
import pickle

import pytest
import timm
import torch

from core.checkpoint import (LAST, CheckpointError, encoder_for_timm, load_encoder, load_latest, load_official,
                             safe_load, save_checkpoint, save_encoder)
from core.config import ModelConfig
from core.model import MaskedAutoencoder


def tiny(**kw) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(ModelConfig(variant="vit_test", **kw))


def test_checkpoint_has_the_release_layout_and_round_trips(tmp_path):
    model = tiny()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 32, 32))[0].backward()
    opt.step()
    path = save_checkpoint(tmp_path, model=model, optimizer=opt, epoch=3, config={"model": {"mask_ratio": 0.75}})
    state = safe_load(path)
    assert {"model", "optimizer", "epoch", "scaler", "args", "config"} <= set(state)
    assert isinstance(state["args"], argparse.Namespace) and state["args"].model_mask_ratio == 0.75
    again = tiny()
    again.load_state_dict(state["model"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert state["epoch"] == 3


def test_truncated_checkpoint_is_detected_and_the_previous_one_used(tmp_path):
    model = tiny()
    save_checkpoint(tmp_path, model=model, optimizer=None, epoch=0, config={})
    save_checkpoint(tmp_path, model=model, optimizer=None, epoch=1, config={})
    last = tmp_path / LAST
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.warns(UserWarning, match="checksum mismatch"):
        state = load_latest(tmp_path)
    assert state["epoch"] == 0


def test_loading_never_executes_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("import pathlib; pathlib.Path('%s').write_text('pwned')" % (tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"model": Evil()}, f)
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        safe_load(path)
    assert not (tmp_path / "pwned").exists()


def test_official_release_files_load(tmp_path):
    """A file shaped like `mae_pretrain_vit_*.pth` (encoder only) and like `*_full.pth` (with decoder)."""
    source = tiny()
    full = {"model": source.state_dict(), "args": argparse.Namespace(norm_pix_loss=True), "epoch": 799}
    torch.save(full, tmp_path / "full.pth")
    torch.save({"model": source.encoder_state_dict()}, tmp_path / "enc.pth")
    target = MaskedAutoencoder(ModelConfig(variant="vit_test"))
    assert load_official(tmp_path / "full.pth", target) == []
    assert torch.equal(target.decoder_pred.weight, source.decoder_pred.weight)
    missing = load_official(tmp_path / "enc.pth", MaskedAutoencoder(ModelConfig(variant="vit_test")))
    assert missing and all(k.startswith(("decoder", "mask_token")) for k in missing)
    assert set(load_encoder(tmp_path / "enc.pth")) == set(source.encoder_state_dict())


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_encoder_export_loads_strictly_into_timm_vit_base(tmp_path, pool):
    with torch.device("meta"):
        mae = MaskedAutoencoder(ModelConfig(variant="vit_base_patch16"))
        vit = timm.create_model("vit_base_patch16_224", global_pool=pool, num_classes=0, pretrained=False)
    vit.load_state_dict(encoder_for_timm(mae.encoder_state_dict(), pool), strict=True, assign=True)


def test_encoder_export_gives_timm_the_same_features(tmp_path):
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    mae = tiny()
    save_encoder(mae, tmp_path)
    cfg = mae.cfg
    vit = VisionTransformer(img_size=32, patch_size=8, in_chans=3, embed_dim=cfg.embed_dim, depth=cfg.depth,
                            num_heads=cfg.num_heads, num_classes=0, global_pool="token", qkv_bias=True,
                            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    vit.load_state_dict(encoder_for_timm(load_encoder(tmp_path), "token"), strict=True)
    imgs = torch.randn(3, 3, 32, 32)
    noise = torch.arange(16.0).expand(3, -1)  # ratio 0: the MAE encoder sees every patch, in order
    latent = mae.eval().forward_encoder(imgs, 0.0, noise).latent
    torch.testing.assert_close(vit(imgs), latent[:, 0], rtol=1e-5, atol=1e-5)


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    """core/files.py, the one atomic write every layer uses: a write that fails part-way (here: an
    error after half the bytes) leaves the previous file as it was and no temporary file; one that
    succeeds replaces it; a private temporary file is named after its process."""
    import os

    from core.files import replacing, write_text

    path = tmp_path / "report.html"
    write_text(path, "old")
    with pytest.raises(OSError):
        with replacing(path) as tmp:
            tmp.write_text("half of the new")
            raise OSError(28, "No space left on device")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    with replacing(path, sync=True) as tmp:
        tmp.write_text("new")
        assert path.read_text() == "old"  # nothing visible until the block ends
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    with replacing(path, private=True) as tmp:
        assert tmp.name == f"report.html.{os.getpid()}.tmp"
        tmp.write_text("mine")
    assert path.read_text() == "mine"
