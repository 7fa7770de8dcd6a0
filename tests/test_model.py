"""The MAE model against naive references, the release's invariants and an independent implementation."""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from core.config import ModelConfig, grid_ratios
from core.device import attention_layers, choose_attention
from core.masking import len_keep
from core.model import MaskedAutoencoder
from core.pos_embed import sincos_2d

TEST = dict(variant="vit_test")


def make(**kw) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(ModelConfig(**{**TEST, **kw}))


# ----------------------------------------------------------------------------------- construction
def reference_keys(depth: int, decoder_depth: int) -> list[str]:
    """The official release's pre-training state-dict names."""
    block = [f"{m}.{t}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for t in ("weight", "bias")]
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    keys += [f"blocks.{i}.{b}" for i in range(depth) for b in block] + ["norm.weight", "norm.bias"]
    keys += ["mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias"]
    keys += [f"decoder_blocks.{i}.{b}" for i in range(decoder_depth) for b in block]
    keys += ["decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"]
    return keys


def test_vit_base_has_the_reference_254_tensors_with_reference_shapes():
    with torch.device("meta"):
        model = MaskedAutoencoder(ModelConfig(variant="vit_base_patch16"))
    sd = model.state_dict()
    assert len(sd) == 254
    assert sorted(sd) == sorted(reference_keys(12, 8))
    assert sd["pos_embed"].shape == (1, 197, 768) and sd["decoder_pos_embed"].shape == (1, 197, 512)
    assert sd["blocks.0.attn.qkv.weight"].shape == (2304, 768)
    assert sd["decoder_pred.weight"].shape == (16 * 16 * 3, 512)
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad


def test_layernorm_eps_is_the_releases_1e6_everywhere():
    model = make()
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    assert eps == {1e-6}


def test_initialisation_follows_the_reference():
    model = make(variant="vit_fmnist")
    w = model.patch_embed.proj.weight.view(model.cfg.embed_dim, -1)
    bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))  # xavier-uniform of the (D, C*p*p) view
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    qkv = model.blocks[0].attn.qkv.weight  # one (3D, D) matrix
    assert qkv.abs().max() <= math.sqrt(6 / (qkv.shape[0] + qkv.shape[1]))
    assert model.blocks[0].attn.qkv.bias.abs().sum() == 0
    assert 0.01 < model.cls_token.std() < 0.04 and 0.01 < model.mask_token.std() < 0.04
    assert torch.all(model.norm.weight == 1) and torch.all(model.norm.bias == 0)


@pytest.mark.parametrize("bad, field", [
    (dict(img_size=30), "divisible by patch_size"),
    (dict(num_heads=3), "divisible by num_heads"),
    (dict(decoder_num_heads=3), "decoder_num_heads"),
    (dict(decoder_depth=0), "decoder_depth"),
    (dict(mask_ratio=1.0), "mask_ratio"),
    (dict(variant="vit_giant"), "valid:"),
    (dict(target="hog"), "target"),
])
def test_bad_model_configs_are_refused_with_the_field(bad, field):
    with pytest.raises(ValidationError, match=field):
        ModelConfig(**{**TEST, **bad})


# ----------------------------------------------------------------------------------- patchify / sin-cos
@pytest.mark.parametrize("channels", [1, 3, 5])
def test_patchify_layout_and_round_trip(channels):
    model = make(in_chans=channels)
    p, c = 8, channels
    imgs = torch.randn(2, c, 32, 32)
    x = model.patchify(imgs)
    assert x.shape == (2, 16, p * p * c)
    g = 4
    for n, i, j, a, b, ch in [(0, 0, 0, 0, 0, 0), (1, 2, 3, 5, 7, c - 1), (0, 3, 1, 7, 0, c // 2)]:
        assert x[n, i * g + j, (a * p + b) * c + ch] == imgs[n, ch, i * p + a, j * p + b]
    assert torch.equal(model.unpatchify(x), imgs)


def test_sincos_table_matches_the_closed_form():
    dim, grid = 16, 3
    table = sincos_2d(dim, grid)
    assert table.shape == (grid * grid + 1, dim) and torch.all(table[0] == 0)
    q = dim // 4
    for i in range(grid):
        for j in range(grid):
            row = table[1 + i * grid + j]
            for k in range(q):
                w = 10000 ** (-k / q)
                expected = [math.sin(j * w), math.cos(j * w), math.sin(i * w), math.cos(i * w)]
                assert [row[k].item(), row[q + k].item(), row[2 * q + k].item(), row[3 * q + k].item()] == \
                    pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------------- masking
@pytest.mark.parametrize("sampling, ratio", [("random", 0.75), ("random", 0.1), ("block", 0.5), ("block", 0.75),
                                             ("grid", 0.75), ("random", 0.0)])
def test_every_sample_keeps_exactly_len_keep_patches(sampling, ratio):
    model = make(variant="vit_fmnist" if sampling != "grid" else "vit_test", mask_sampling=sampling, mask_ratio=ratio)
    num = model.cfg.num_patches
    noise = model.mask_noise(32, torch.device("cpu"), generator=torch.Generator().manual_seed(1))
    enc = model.forward_encoder(torch.randn(32, model.cfg.in_chans, model.cfg.img_size, model.cfg.img_size), ratio, noise)
    removed = num - len_keep(num, ratio)
    assert torch.all(enc.mask.sum(1) == removed)
    assert enc.latent.shape[1] == 1 + len_keep(num, ratio)
    assert set(enc.mask.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("sampling", ["random", "block", "grid"])
def test_same_seed_same_mask_other_seed_other_mask(sampling):
    model = make(img_size=64, mask_sampling=sampling)
    draw = lambda s: model.mask_noise(8, torch.device("cpu"), generator=torch.Generator().manual_seed(s)).argsort(1)[:, :16]
    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_grid_masking_keeps_a_regular_lattice():
    model = make(img_size=64, mask_sampling="grid", mask_ratio=0.75)  # 8x8 patches
    noise = model.mask_noise(16, torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    kept = noise.argsort(1)[:, :16]
    rows, cols = kept // 8, kept % 8
    for n in range(16):
        assert len(set((rows[n] % 2).tolist())) == 1 and len(set((cols[n] % 2).tolist())) == 1
        assert len(set(rows[n].tolist())) == 4 and len(set(cols[n].tolist())) == 4


def test_grid_masking_refuses_a_ratio_it_cannot_honour_and_names_the_valid_ones():
    assert grid_ratios(8) == pytest.approx([0.75, 1 - 1 / 16, 1 - 1 / 64])
    with pytest.raises(ValueError, match=r"valid ratios: 0\.75"):
        make(img_size=64, mask_sampling="grid", mask_ratio=0.5)
    with pytest.raises(ValueError, match="7x7"):
        MaskedAutoencoder(ModelConfig(variant="vit_fmnist", mask_sampling="grid"))


def _adjacent_removed_pairs(mask: torch.Tensor, grid: int) -> float:
    m = mask.view(-1, grid, grid)
    return float((m[:, 1:, :] * m[:, :-1, :]).sum() + (m[:, :, 1:] * m[:, :, :-1]).sum()) / m.shape[0]


def test_block_masking_removes_contiguous_blocks_unlike_random():
    cfg = dict(img_size=112, patch_size=8)  # 14x14 patches, BEiT's grid
    x = torch.randn(64, 3, 112, 112)
    masks = {}
    for s in ("block", "random"):
        model = make(**cfg, mask_sampling=s, mask_ratio=0.5)
        noise = model.mask_noise(64, torch.device("cpu"), generator=torch.Generator().manual_seed(0))
        masks[s] = model.random_masking(model.patch_embed(x), 0.5, noise)[1]
    assert _adjacent_removed_pairs(masks["block"], 14) > 1.3 * _adjacent_removed_pairs(masks["random"], 14)


def test_random_masking_matches_the_reference_argsort_rule():
    model = make()
    noise = torch.rand(3, 16)
    x = torch.randn(3, 16, 4)
    kept, mask, ids_restore, ids_shuffle = model.random_masking(x, 0.75, noise)
    for n in range(3):
        order = sorted(range(16), key=lambda i: noise[n, i].item())
        assert ids_shuffle[n].tolist() == order  # kept first
        assert [int(v) for v in mask[n]] == [0 if i in order[:4] else 1 for i in range(16)]
        assert torch.equal(kept[n], x[n, order[:4]])
    assert torch.equal(torch.gather(noise.argsort(1), 1, ids_restore), torch.arange(16).expand(3, -1))


# ----------------------------------------------------------------------------------- loss
def naive_loss(model: MaskedAutoencoder, imgs, pred, mask, norm_pix: bool) -> float:
    """The reference loss written as explicit loops over samples and patches."""
    p, c = model.cfg.patch_size, model.cfg.in_chans
    g = model.cfg.grid_size
    total, count = 0.0, 0.0
    for n in range(imgs.shape[0]):
        for i in range(g):
            for j in range(g):
                patch = [imgs[n, ch, i * p + a, j * p + b].item() for a in range(p) for b in range(p) for ch in range(c)]
                if norm_pix:
                    mu = sum(patch) / len(patch)
                    var = sum((v - mu) ** 2 for v in patch) / (len(patch) - 1)
                    patch = [(v - mu) / math.sqrt(var + 1e-6) for v in patch]
                err = sum((pred[n, i * g + j, k].item() - patch[k]) ** 2 for k in range(len(patch))) / len(patch)
                total += err * mask[n, i * g + j].item()
                count += mask[n, i * g + j].item()
    return total / count


@pytest.mark.parametrize("target", ["pixel", "norm_pixel"])
def test_loss_equals_an_explicit_loop(target):
    model = make(patch_size=4, img_size=16, target=target)
    imgs = torch.randn(2, 3, 16, 16)
    loss, pred, mask = model(imgs, 0.75)
    assert loss.item() == pytest.approx(naive_loss(model, imgs, pred, mask, target == "norm_pixel"), rel=1e-5)


def test_loss_on_all_patches_and_ratio_zero_are_finite():
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    masked_only = make()(imgs, 0.75, noise)
    everywhere = make(loss_on="all")(imgs, 0.75, noise)
    per_patch = ((masked_only[1] - make().patchify(imgs)) ** 2).mean(-1)
    assert everywhere[0].item() == pytest.approx(per_patch.mean().item(), rel=1e-5)
    zero = make(mask_ratio=0.0)(imgs)
    assert torch.isfinite(zero[0]) and zero[2].sum() == 0
    zero[0].backward()


# ----------------------------------------------------------------------------------- the training step's loss
LOSS_ONLY_CASES = {  # name -> ModelConfig overrides of vit_test (1 decoder block unless set)
    "norm pixels": {},
    "pixels, 2 decoder blocks": dict(target="pixel", decoder_depth=2),
    "pca": dict(target="pca", pca_components=8),
    "tokens": dict(target="token", codebook_size=16),
    "mask token in encoder": dict(mask_token_in_encoder=True),
    "block masking": dict(mask_sampling="block"),
    "grid masking": dict(mask_sampling="grid"),
}


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "plain"])
@pytest.mark.parametrize("case", list(LOSS_ONLY_CASES))
def test_training_step_gives_the_full_pass_loss_and_gradients(case, fused):
    """`loss_only` skips work, not terms: the same loss and the same gradient on every parameter."""
    full = make(**LOSS_ONLY_CASES[case])
    imgs = torch.randn(4, 3, 32, 32)
    if full.target.needs_fit:
        full.target.fit(full.patchify(torch.randn(64, 3, 32, 32)), torch.Generator().manual_seed(0))
    step = make(**LOSS_ONLY_CASES[case])
    step.load_state_dict(full.state_dict())
    for m in attention_layers(full) + attention_layers(step):
        m.fused_attn = fused
    noise = full.mask_noise(4, torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    expected = full(imgs, noise=noise)[0]
    loss, pred, mask = step(imgs, noise=noise, loss_only=True)
    assert pred is None and mask.sum() == 4 * 12
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    expected.backward()
    loss.backward()
    for (name, a), b in zip(full.named_parameters(), step.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_training_step_runs_the_last_decoder_block_and_prediction_for_removed_patches_only():
    from core.flops import train_flops_per_image

    model = make(decoder_depth=2)
    tokens: dict[str, int] = {}
    for name, module in [("first block", model.decoder_blocks[0].mlp), ("last block", model.decoder_blocks[1].mlp),
                         ("prediction", model.decoder_pred)]:
        module.register_forward_hook(lambda m, args, out, name=name: tokens.__setitem__(name, args[0].shape[1]))
    imgs = torch.randn(2, 3, 32, 32)
    model(imgs, 0.75, loss_only=True)
    assert tokens == {"first block": 17, "last block": 12, "prediction": 12}  # 1 + 16 tokens; 12 removed
    model(imgs, 0.75)  # the full pass (reconstructions) still predicts every patch
    assert tokens == {"first block": 17, "last block": 17, "prediction": 16}
    counted_step = train_flops_per_image(model, torch.device("cpu"))
    counted_full = train_flops_per_image(model, torch.device("cpu"), loss_only=False)
    assert counted_step < 0.97 * counted_full


def test_training_step_reads_every_patch_when_the_loss_does():
    """loss_on='all' and mask ratio 0 need every prediction: loss_only then runs the full pass."""
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    for model, ratio in [(make(loss_on="all"), 0.75), (make(mask_ratio=0.0), 0.0)]:
        loss, pred, _ = model(imgs, ratio, noise, loss_only=True)
        assert pred is None
        torch.testing.assert_close(loss, model(imgs, ratio, noise)[0], rtol=0, atol=0)


@pytest.mark.parametrize("target", ["pixel", "norm_pixel"])
def test_matches_hugging_face_vitmae_with_identical_weights_and_noise(target):
    from tests.hf_port import hf_from_ours

    model = make(variant="vit_fmnist", target=target).eval()
    hf = hf_from_ours(model, norm_pix=target == "norm_pixel")
    imgs = torch.randn(4, 1, 28, 28)
    noise = torch.rand(4, 49)
    loss, pred, mask = model(imgs, 0.75, noise)
    out = hf(pixel_values=imgs, noise=noise)
    assert torch.equal(mask, out.mask)
    torch.testing.assert_close(pred, out.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, out.loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device, precision, fused", [("cpu", "bf16", False), ("cpu", "fp32", True),
                                                      ("cuda", "bf16", True), ("cuda", "fp32", True)])
def test_attention_kernel_is_chosen_per_device_and_precision(device, precision, fused):
    model = choose_attention(make(), torch.device(device), precision)
    layers = attention_layers(model)
    assert len(layers) == 3  # 2 encoder blocks + 1 decoder block of vit_test
    assert [m.fused_attn for m in layers] == [fused] * 3


def test_plain_attention_gives_the_fused_kernels_loss_and_gradients():
    """The kernel choice is a speed choice only: same weights and mask, same loss, same gradients."""
    fused = make()
    plain = choose_attention(make(), torch.device("cpu"), "bf16")  # the plain path, here run in fp32
    assert not any(m.fused_attn for m in attention_layers(plain)) and all(m.fused_attn for m in attention_layers(fused))
    imgs, noise = torch.randn(4, 3, 32, 32), torch.rand(4, 16)
    losses = []
    for model in (fused, plain):
        loss = model(imgs, 0.75, noise)[0]
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-7)
    for (name, a), b in zip(fused.named_parameters(), plain.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_counted_flops_do_not_depend_on_the_attention_kernel():
    """Recorded train_flops_per_img must not change with precision: on CPU the fused kernel is
    invisible to torch's FLOP counter, the plain path is not, and the meta device counts both."""
    from core.flops import train_flops_per_image

    cpu = torch.device("cpu")
    fused = train_flops_per_image(make(), cpu)
    plain = train_flops_per_image(choose_attention(make(), cpu, "bf16"), cpu)
    with torch.device("meta"):
        meta = train_flops_per_image(make(), torch.device("meta"))
    assert fused == plain == meta


@pytest.mark.parametrize("token_in_encoder", [False, True])
def test_backward_reaches_every_trainable_parameter(token_in_encoder):
    model = make(mask_token_in_encoder=token_in_encoder)
    model(torch.randn(2, 3, 32, 32))[0].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # With the mask token in the encoder the decoder receives all L tokens, so its own mask token is unused.
    assert missing == (["mask_token"] if token_in_encoder else [])


# ----------------------------------------------------------------------------------- ablation knobs
def test_mask_token_in_encoder_processes_all_tokens_and_costs_more():
    from core.flops import train_flops_per_image

    imgs = torch.randn(2, 3, 32, 32)
    with_token = make(mask_token_in_encoder=True)
    enc = with_token.forward_encoder(imgs, 0.75)
    assert enc.latent.shape[1] == 1 + 16  # every patch, plus cls
    assert "enc_mask_token" in with_token.state_dict() and "enc_mask_token" not in make().state_dict()
    ratio = train_flops_per_image(with_token, torch.device("cpu")) / train_flops_per_image(make(), torch.device("cpu"))
    assert ratio > 1.5


def test_pca_target_is_an_orthonormal_basis_fitted_on_patches():
    model = make(patch_size=4, img_size=16, target="pca", pca_components=48)
    patches = model.patchify(torch.randn(64, 3, 16, 16) @ torch.randn(16, 16) * 0.3)
    model.target.fit(patches)
    comp = model.target.components
    torch.testing.assert_close(comp @ comp.T, torch.eye(48), atol=1e-4, rtol=0)
    coeff = model.target(patches)  # full basis: projection and back is the identity
    torch.testing.assert_close(model.target.to_pixels(coeff, patches), patches, atol=1e-4, rtol=1e-4)
    assert {"target.mean", "target.components"} <= set(model.state_dict())
    assert torch.isfinite(model(torch.randn(2, 3, 16, 16))[0])


def test_token_target_assigns_nearest_codeword_and_uses_cross_entropy(tmp_path):
    import numpy as np

    model = make(target="token", codebook_size=8)
    patches = model.patchify(torch.randn(32, 3, 32, 32))
    model.target.fit(patches, generator=torch.Generator().manual_seed(0))
    ids = model.target(patches)
    book = model.target.codebook
    naive = torch.stack([torch.stack([((book - patches[n, i]) ** 2).sum(1).argmin() for i in range(16)]) for n in range(32)])
    assert torch.equal(ids, naive)
    loss, pred, _ = model(torch.randn(2, 3, 32, 32))
    assert pred.shape == (2, 16, 8) and torch.isfinite(loss)
    path = tmp_path / "book.npy"
    np.save(path, book.numpy())
    loaded = make(target="token", codebook_size=8, codebook_path=str(path))
    assert torch.equal(loaded.target.codebook, book) and not loaded.target.needs_fit
    np.save(path, np.zeros((4, 192), dtype=np.float32))
    with pytest.raises(ValueError, match="codebook_size=8"):
        make(target="token", codebook_size=8, codebook_path=str(path))


@pytest.mark.slow
def test_compiled_model_matches_eager_and_takes_any_batch_size():
    """torch.compile (the engines' `compile: true`, the benchmarks' compile rows) traces the model:
    the same loss as eager for the same noise, and a second batch size (an epoch's last, partial
    batch) is traced with a dynamic batch instead of failing in the mask's random draw. Dynamo's
    tracing is where that failed; inductor's code generation (bench_pretrain --compile) is not run
    here, its cold C++ build alone takes 40 s."""
    torch.manual_seed(0)
    eager = MaskedAutoencoder(ModelConfig(variant="vit_test"))
    compiled = torch.compile(eager, backend="eager")
    cfg = eager.cfg
    for n in (4, 6, 8):
        imgs = torch.randn(n, cfg.in_chans, cfg.img_size, cfg.img_size)
        noise = torch.rand(n, cfg.grid_size**2)
        torch.testing.assert_close(compiled(imgs, noise=noise)[0], eager(imgs, noise=noise)[0], rtol=1e-4, atol=1e-5)
        loss, _, mask = compiled(imgs)  # the model draws the mask itself
        assert torch.isfinite(loss) and mask.shape == (n, cfg.grid_size**2)
