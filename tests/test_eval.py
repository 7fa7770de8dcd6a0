"""Evaluation protocols: LARS, layer decay, the lr schedule, top-k, the classifier, linear probing, fine-tuning.

Tiny models (vit_test: 32 px, width 32, depth 2) on the synthetic dataset; optimisers and metrics
against hand-written references; invariants (frozen parameters bit-equal, cached == live features,
interrupted + resumed == uninterrupted).
"""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from core.checkpoint import encoder_for_timm, load_latest
from core.classifier import accuracy, build_classifier, topk_correct
from core.config import DataConfig, ModelConfig
from core.eval_config import (FinetuneConfig, FinetuneJob, LinearProbeConfig,
                              LinearProbeJob)
from core.augment import _posterize_any_bits
from core.finetune import BatchAugment, RandAugmentBatch, build_finetune_model, finetune, param_groups
from core.lars import LARS
from core.linear_probe import linear_probe
from core.model import MaskedAutoencoder
from core.schedule import adjust_learning_rate, cosine_lr

MODEL = ModelConfig(variant="vit_test")
DATA = DataConfig(dataset="synthetic", synthetic_size=128, val_fraction=0.125)  # 112 train, 16 val, 32 test
TIMING = {"img_per_s", "epoch_time_s"}


@pytest.fixture(scope="module")
def encoder() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return MaskedAutoencoder(MODEL).encoder_state_dict()


def probe_job(**probe) -> LinearProbeJob:
    defaults = dict(epochs=2, warmup_epochs=1, batch_size=16, device="cpu")
    return LinearProbeJob(model=MODEL, data=DATA, probe=LinearProbeConfig(**{**defaults, **probe}))


def finetune_job(**finetune) -> FinetuneJob:
    defaults = dict(epochs=1, warmup_epochs=0, batch_size=16, device="cpu")
    return FinetuneJob(model=MODEL, data=DATA, finetune=FinetuneConfig(**{**defaults, **finetune}))


# ---- LARS ------------------------------------------------------------------------------------------

def test_lars_matches_a_hand_written_update():
    torch.manual_seed(0)
    params = [torch.randn(4, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64),
              torch.zeros(2, 2, dtype=torch.float64)]  # matrix, vector, and a zero-norm matrix
    ours = [torch.nn.Parameter(p.clone()) for p in params]
    lr, wd, momentum, trust = 0.5, 0.1, 0.9, 0.001
    opt = LARS(ours, lr=lr, weight_decay=wd)
    ref = [p.clone() for p in params]
    mus = [torch.zeros_like(p) for p in params]
    for step in range(5):
        grads = [torch.sin(p * (step + 1)) + 0.1 * (step + 1) for p in ref]
        for p, g in zip(ours, grads):
            p.grad = g.clone()
        opt.step()
        for i, (p, g) in enumerate(zip(ref, grads)):
            if p.ndim > 1:  # decay and trust ratio only for matrices
                g = g + wd * p
                p_norm, g_norm = p.norm().item(), g.norm().item()
                if p_norm > 0 and g_norm > 0:
                    g = g * (trust * p_norm / g_norm)
            mus[i] = momentum * mus[i] + g
            ref[i] = p - lr * mus[i]
    for p, r in zip(ours, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-12)


# ---- layer-wise lr decay ---------------------------------------------------------------------------

def reference_layer_id(name: str, num_layers: int) -> int:
    """The release's util/lr_decay.get_layer_id_for_vit."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


@pytest.mark.parametrize("pool", ["cls", "avg"])
def test_layer_decay_scales_follow_the_reference_rule(pool):
    cfg = FinetuneConfig(layer_decay=0.75, weight_decay=0.05, pool=pool)
    net = build_finetune_model(FinetuneJob(model=MODEL, data=DATA, finetune=cfg), 10, None)
    num_layers = MODEL.depth + 1
    got = {id(p): (g["lr_scale"], g["weight_decay"]) for g in param_groups(net, cfg) for p in g["params"]}
    names = [name for name, _ in net.named_parameters()]
    assert len(got) == len(names)
    for name, p in net.named_parameters():
        scale = 0.75 ** (num_layers - reference_layer_id(name, num_layers))
        decay = 0.0 if p.ndim <= 1 or name in ("cls_token", "pos_embed") else 0.05
        assert got[id(p)] == (pytest.approx(scale), decay), name


def test_layer_decay_groups_hold_only_trainable_parameters():
    job = finetune_job(tune_blocks=1)
    net = build_finetune_model(job, 10, None)
    grouped = {id(p) for g in param_groups(net, job.finetune) for p in g["params"]}
    assert grouped == {id(p) for p in net.parameters() if p.requires_grad}


# ---- lr schedule -----------------------------------------------------------------------------------

def test_schedule_warmup_then_half_cosine():
    kw = dict(lr=2.0, min_lr=0.1, warmup_epochs=4, epochs=20)
    assert cosine_lr(0, **kw) == 0.0
    assert cosine_lr(1, **kw) == pytest.approx(0.5)  # linear from 0
    assert cosine_lr(3.5, **kw) == pytest.approx(2.0 * 3.5 / 4)
    assert cosine_lr(4, **kw) == pytest.approx(2.0)  # peak at the end of warmup
    assert cosine_lr(12, **kw) == pytest.approx(0.1 + 1.9 * 0.5)  # half-way down the cosine
    t = (17 - 4) / 16
    assert cosine_lr(17, **kw) == pytest.approx(0.1 + 1.9 * 0.5 * (1 + math.cos(math.pi * t)))
    assert cosine_lr(20, **kw) == pytest.approx(0.1)
    assert cosine_lr(3, lr=1.0, min_lr=0.0, warmup_epochs=0, epochs=10) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.3)))


def test_adjust_learning_rate_scales_groups_per_iteration():
    cfg = LinearProbeConfig(epochs=10, warmup_epochs=2, batch_size=512, blr=0.1)  # lr = 0.2
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w], "lr_scale": 0.5}, {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=1)
    steps = 8
    lr = adjust_learning_rate(opt, 3 / steps + 1, cfg)  # epoch 1, step 3 of 8: inside the warmup
    assert lr == pytest.approx(0.2 * (11 / 8) / 2)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(lr * 0.5), pytest.approx(lr)]


# ---- top-k -----------------------------------------------------------------------------------------

def test_topk_on_a_hand_made_example():
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5],   # label 0 ranked 1st: top-1 and top-5 hit
                           [1.0, 9, 8, 7, 2, 3],   # label 3 ranked 3rd: top-5 only
                           [6.0, 5, 4, 3, 2, 1],   # label 5 ranked 6th: miss
                           [1.0, 2, 3, 4, 5, 6]])  # label 1 ranked 5th: top-5 only
    labels = torch.tensor([0, 3, 5, 1])
    assert topk_correct(logits, labels, (1, 2, 5)) == [1, 1, 3]
    top1, top5 = accuracy([(logits[:3], labels[:3]), (logits[3:], labels[3:])])
    assert (top1, top5) == (25.0, 75.0)
    # Fewer than 5 classes: "top-5" is top-3, so every row hits.
    assert accuracy([(torch.tensor([[0.0, 1, 2], [2, 1, 0]]), torch.tensor([0, 0]))]) == (50.0, 100.0)
    assert all(math.isnan(v) for v in accuracy([]))


# ---- the classifier --------------------------------------------------------------------------------

@pytest.mark.parametrize("pool", ["token", "avg"])
def test_build_classifier_loads_the_encoder(encoder, pool):
    net = build_classifier(MODEL, 7, global_pool=pool, encoder=encoder)
    state = net.state_dict()
    for key, value in encoder_for_timm(encoder, pool).items():
        assert torch.equal(state[key], value), key
    assert net.head.weight.shape == (7, MODEL.embed_dim)
    assert net.head.weight.std() < 1e-4 and not net.head.bias.any()  # trunc-normal std 2e-5


def test_build_classifier_is_strict(encoder):
    renamed = {("blocks.0.mlp.fc_1.weight" if k == "blocks.0.mlp.fc1.weight" else k): v for k, v in encoder.items()}
    with pytest.raises(RuntimeError, match="fc_1"):
        build_classifier(MODEL, 7, global_pool="token", encoder=renamed)
    missing = {k: v for k, v in encoder.items() if k != "norm.weight"}
    with pytest.raises(RuntimeError, match="norm.weight"):
        build_classifier(MODEL, 7, global_pool="token", encoder=missing)


# ---- linear probing --------------------------------------------------------------------------------

def probe_state(out_dir) -> dict[str, torch.Tensor]:
    return load_latest(out_dir)["model"]


def test_cached_features_train_the_same_head_as_the_live_path(encoder, tmp_path):
    results = {}
    for cache in (True, False):
        job = probe_job(augmentation="none", cache_features=cache, blr=5.0)
        results[cache] = linear_probe(job, encoder, tmp_path / str(cache)), probe_state(tmp_path / str(cache))
    (fast, fast_head), (slow, slow_head) = results[True], results[False]
    assert fast_head.keys() == slow_head.keys()
    for key in fast_head:
        torch.testing.assert_close(fast_head[key], slow_head[key], rtol=1e-4, atol=1e-6)
    assert not torch.equal(fast_head["1.weight"], torch.zeros_like(fast_head["1.weight"]))
    for key in fast.keys() - TIMING:
        assert fast[key] == pytest.approx(slow[key], abs=1e-4), key


def test_probe_refuses_another_config_in_the_same_folder(encoder, tmp_path):
    linear_probe(probe_job(epochs=1, augmentation="none"), encoder, tmp_path)
    with pytest.raises(ValueError, match="different config"):
        linear_probe(probe_job(epochs=1, augmentation="none", blr=1.0), encoder, tmp_path)


def test_probe_learns_on_synthetic_data(tmp_path):
    # A wider random encoder: its class-token features separate the gratings well above chance.
    model = ModelConfig(variant="vit_test", embed_dim=128)
    data = DataConfig(dataset="synthetic", synthetic_size=1024, val_fraction=0.125)
    probe = LinearProbeConfig(epochs=30, warmup_epochs=2, batch_size=128, blr=40.0, augmentation="none",
                              device="cpu", checkpoint_every=30)
    result = linear_probe(LinearProbeJob(model=model, data=data, probe=probe), None, tmp_path)
    chance = 100 / 10
    assert result["lin_top1"] > 2 * chance and result["lin_val_top1"] > 2 * chance
    assert result["lin_top5"] >= result["lin_top1"]
    assert set(result) == {"epoch", "train_loss", "lr", "lin_top1", "lin_top5", "lin_val_top1", "img_per_s",
                           "epoch_time_s"}


def test_probe_raises_on_a_non_finite_loss(encoder, tmp_path):
    broken = {k: (torch.full_like(v, float("nan")) if k == "patch_embed.proj.weight" else v)
              for k, v in encoder.items()}
    with pytest.raises(FloatingPointError, match="epoch 0, step 0"):
        linear_probe(probe_job(augmentation="none"), broken, tmp_path)


# ---- fine-tuning -----------------------------------------------------------------------------------

TRAINED = {  # which of the encoder's tensors each partial fine-tune may change (avg pooling: norm -> fc_norm)
    1: ("blocks.1.", "fc_norm."),
    0.5: ("blocks.1.norm2.", "blocks.1.mlp.", "fc_norm."),
    0: (),
}


@pytest.mark.parametrize("tune_blocks", [1, 0.5, 0])
def test_partial_finetune_leaves_frozen_parameters_bit_equal(encoder, tmp_path, tune_blocks):
    job = finetune_job(tune_blocks=tune_blocks, blr=1e-2)
    finetune(job, encoder, tmp_path)
    after = load_latest(tmp_path)["model"]
    changed = set()
    for key, before in encoder_for_timm(encoder, "avg").items():
        if key.startswith(TRAINED[tune_blocks]):
            changed.add(key) if not torch.equal(after[key], before) else None
        else:
            assert torch.equal(after[key], before), f"frozen {key} changed"
    expected = {k for k in encoder_for_timm(encoder, "avg") if k.startswith(TRAINED[tune_blocks])}
    assert changed == expected
    head = [k for k in after if k.startswith("head.")]
    assert (len(head) == 5) == (tune_blocks == 0)  # k = 0: BatchNorm (3 buffers) + Linear, as linear probing


def test_finetune_end_to_end_reports_every_epoch(encoder, tmp_path):
    reported = []
    result = finetune(finetune_job(epochs=2, warmup_epochs=1), encoder, tmp_path, report=reported.append)
    assert [m["epoch"] for m in reported] == [0, 1] and result == reported[-1]
    assert "ft_top1" not in reported[0] and "ft_val_top1" in reported[0]  # the test split: at the end only
    assert set(result) == {"epoch", "train_loss", "lr", "ft_top1", "ft_top5", "ft_val_top1", "img_per_s",
                           "epoch_time_s"}
    assert all(math.isfinite(v) for v in result.values())


def test_finetune_on_an_image_folder_augments_in_timms_per_image_transform(encoder, tmp_path):
    """RandAugment and erasing run in the folder's per-image transform (timm's create_transform),
    not again on the batch; in-memory data keeps them on the batch."""
    from core.data import open_dataset

    rng = np.random.default_rng(0)
    for label, name in enumerate(("a", "b")):
        for split in ("train", "val"):
            (tmp_path / "images" / split / name).mkdir(parents=True)
            for i in range(8):
                Image.fromarray(rng.integers(0, 256, (40, 36, 3), np.uint8)).save(
                    tmp_path / "images" / split / name / f"{i}.png")
    folder = DataConfig(dataset="imagefolder", root=str(tmp_path / "images"), val_fraction=0.25, num_workers=0)
    job = FinetuneJob(model=MODEL, data=folder, finetune=FinetuneConfig(epochs=1, warmup_epochs=0, batch_size=4,
                                                                        mixup=0, cutmix=0, device="cpu"))
    augment = BatchAugment(job.finetune, open_dataset(folder, img_size=32, in_chans=3), torch.device("cpu"))
    assert augment.per_image == (job.finetune.rand_augment, job.finetune.reprob)
    assert augment.rand_augment is None and augment.erasing is None
    in_memory = BatchAugment(job.finetune, open_dataset(DATA, img_size=32, in_chans=3), torch.device("cpu"))
    assert in_memory.per_image is None and in_memory.rand_augment is not None and in_memory.erasing is not None
    result = finetune(job, encoder, tmp_path / "run")
    assert all(math.isfinite(v) for v in result.values())


def test_finetune_from_scratch_ignores_the_encoder(encoder, tmp_path):
    job = finetune_job(init="random", tune_blocks=0)  # only the head trains: the trunk stays as initialised
    finetune(job, encoder, tmp_path)
    after = load_latest(tmp_path)["model"]
    assert not torch.equal(after["blocks.0.attn.qkv.weight"], encoder["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("precision, fused", [("bf16", False), ("fp32", True)])
@pytest.mark.parametrize("protocol", ["linear_probe", "finetune"])
def test_cpu_bf16_evaluation_skips_the_fused_attention_kernel(encoder, tmp_path, sdpa_calls, protocol, precision,
                                                              fused):
    """On CPU under bf16 the fused SDPA kernel is the slow one (core.device.choose_attention)."""
    if protocol == "linear_probe":
        result = linear_probe(probe_job(epochs=1, precision=precision), encoder, tmp_path)
    else:
        result = finetune(finetune_job(precision=precision), encoder, tmp_path)
    assert bool(sdpa_calls) == fused and all(math.isfinite(v) for v in result.values())


@pytest.mark.parametrize("channels", [1, 3])
def test_rand_augment_runs_on_normalised_batches(channels):
    mean, std = (0.5,) * channels, (0.25,) * channels
    augment = RandAugmentBatch("rand-m10-n3-mstd0.5-inc1", mean, std, 32)
    random.seed(0), np.random.seed(0)
    images = (torch.rand(16, channels, 32, 32) - 0.5) / 0.25
    out = augment(images)
    assert out.shape == images.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not torch.allclose(out, images, atol=0.01)
    assert out.min() >= -2.0 - 1e-5 and out.max() <= 2.0 + 1e-5  # still in the normalised [0, 255] range


def test_posterize_keeping_no_bits_gives_black():
    img = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    assert not np.asarray(_posterize_any_bits(img, 0)).any()
    assert np.array_equal(np.asarray(_posterize_any_bits(img, 3)), np.asarray(ImageOps.posterize(img, 3)))


# ---- configs ---------------------------------------------------------------------------------------

# The paper's recipes (ImageNet-1K, ViT-L; mae-reference.md), which the configs' defaults are.
PAPER_PROBE = dict(epochs=90, warmup_epochs=10, batch_size=16384, blr=0.1, weight_decay=0.0, pool="cls",
                   augmentation="crop_random")
PAPER_FINETUNE = dict(epochs=100, warmup_epochs=5, batch_size=1024, blr=1e-3, weight_decay=0.05, layer_decay=0.75,
                      drop_path=0.1, mixup=0.8, cutmix=1.0, label_smoothing=0.1, rand_augment="rand-m9-mstd0.5-inc1",
                      reprob=0.25, pool="avg")


def test_paper_recipes_are_the_defaults_and_config_checks():
    assert LinearProbeConfig() == LinearProbeConfig(**PAPER_PROBE)
    assert FinetuneConfig() == FinetuneConfig(**PAPER_FINETUNE)
    with pytest.raises(ValueError, match="tune_blocks"):
        FinetuneConfig(tune_blocks=0.3)
    with pytest.raises(ValueError, match="depth"):
        finetune_job(tune_blocks=3)
    with pytest.raises(ValueError, match="even"):
        FinetuneConfig(batch_size=15)
    FinetuneConfig(batch_size=15, mixup=0, cutmix=0)
    with pytest.raises(ValueError, match="channel"):
        LinearProbeJob(model=MODEL, data=DataConfig(dataset="fashion_mnist"))
