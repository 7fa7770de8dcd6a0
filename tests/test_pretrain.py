"""The pre-training engine: exact resume, clear failures, accumulation, reconstructions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.checkpoint import LAST, load_encoder
from core.config import DataConfig, ModelConfig, PretrainConfig, PretrainJob
from core.model import MaskedAutoencoder
from core.pretrain import RECON_FILE, pretrain


def job(epochs: int = 2, **pre) -> PretrainJob:
    return PretrainJob(model=ModelConfig(variant="vit_test"), data=DataConfig(dataset="synthetic", synthetic_size=96),
                       pretrain=PretrainConfig(**{**dict(epochs=epochs, warmup_epochs=1, batch_size=16, blr=1e-3,
                                                         device="cpu"), **pre}))


def test_finished_run_is_not_trained_again(tmp_path):
    pretrain(job(1), tmp_path)
    again = []
    result = pretrain(job(1), tmp_path, report=again.append)
    assert again == [] and np.isfinite(result["pretrain_loss"])


def test_non_finite_loss_names_epoch_and_step(tmp_path):
    with pytest.raises(FloatingPointError, match=r"at epoch 0, step 2$"):
        pretrain(job(1, blr=1e38), tmp_path)  # finite, as configs must be; the first update with lr > 0 overflows


def test_epoch_metrics_and_outputs(tmp_path):
    seen = []
    result = pretrain(job(2), tmp_path, report=seen.append)
    assert [m["epoch"] for m in seen] == [0, 1]
    for m in seen:
        assert {"loss", "lr", "img_per_s", "epoch_time_s", "pretrain_wall_clock_s", "train_flops_per_img"} <= set(m)
        assert m["img_per_s"] > 0 and np.isfinite(m["loss"])
    assert json.loads((tmp_path / "pretrain_result.json").read_text())["epochs"] == 2
    recon = np.load(tmp_path / RECON_FILE)
    assert recon["original"].shape == (8, 32, 32, 3)
    assert recon["masked"].shape == recon["recon"].shape == (len(recon["ratios"]), 8, 32, 32, 3)
    assert recon["recon"].min() >= 0 and recon["recon"].max() <= 1
    assert result["train_flops_per_img"] > 0


@pytest.mark.parametrize("target", ["pca", "token"])
def test_stateful_targets_are_fitted_and_saved(tmp_path, target):
    j = job(1).model_copy(update={"model": ModelConfig(variant="vit_test", target=target, pca_components=16,
                                                       codebook_size=16)})
    pretrain(j, tmp_path)
    state = torch.load(tmp_path / LAST, weights_only=False)["model"]
    key = "target.components" if target == "pca" else "target.codebook"
    assert state[key].abs().sum() > 0


def test_gradient_accumulation_equals_the_large_batch():
    torch.manual_seed(0)
    model = MaskedAutoencoder(ModelConfig(variant="vit_test"))
    imgs, noise = torch.randn(8, 3, 32, 32), torch.rand(8, 16)
    model(imgs, noise=noise)[0].backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    for half in (slice(0, 4), slice(4, 8)):
        (model(imgs[half], noise=noise[half])[0] / 2).backward()
    for n, g in full.items():
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_trains(tmp_path):
    result = pretrain(job(1, precision="bf16"), tmp_path)
    assert np.isfinite(result["pretrain_loss"])


def test_zero_epochs_is_the_random_encoder_baseline(tmp_path):
    """epochs 0 trains nothing: the saved encoder is the seeded initialisation, for the random-encoder probe."""
    result = pretrain(job(0), tmp_path)
    assert result["epochs"] == 0 and np.isnan(result["pretrain_loss"])
    torch.manual_seed(0)  # what seed_everything(0) gives the model's init
    init = MaskedAutoencoder(ModelConfig(variant="vit_test")).encoder_state_dict()
    saved = load_encoder(tmp_path)
    assert saved.keys() == init.keys()
    assert all(torch.equal(saved[k], init[k]) for k in init)
    assert not (tmp_path / LAST).exists()  # nothing trained, nothing to resume


def test_a_run_that_cannot_be_reproduced_bit_for_bit_says_so(tmp_path):
    """On CUDA the engines warn (recorded in the stage folder, shown in the live view, `ablate
    status` and the MLflow run); on CPU, where the same seed gives the same numbers, they do not."""
    from ablate.execution import store
    from ablate.execution.stage_warnings import recording
    from core.device import warn_if_nondeterministic

    with recording(tmp_path):
        warn_if_nondeterministic(torch.device("cpu"))
        assert not (tmp_path / store.WARNINGS).exists()
        warn_if_nondeterministic(torch.device("cuda", 0))
    (note,) = [json.loads(line) for line in (tmp_path / store.WARNINGS).read_text().splitlines()]
    assert "cuda:0" in note["message"] and "not bit-for-bit deterministic" in note["message"]


@pytest.mark.parametrize("precision, fused", [("bf16", False), ("fp32", True)])
def test_cpu_bf16_pre_training_skips_the_fused_attention_kernel(tmp_path, sdpa_calls, precision, fused):
    """On CPU under bf16 the fused SDPA kernel is the slow one (core.device.choose_attention)."""
    result = pretrain(job(1, precision=precision), tmp_path)
    assert bool(sdpa_calls) == fused and np.isfinite(result["pretrain_loss"])
