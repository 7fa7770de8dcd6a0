"""The classifier both evaluation protocols train: a timm ViT that loads our encoder, its heads,
and the top-k accuracy they report.

The encoder part loads strictly (only the head is new), so a renamed or missing key fails loudly
instead of silently evaluating a random network.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any, Literal

from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from core.checkpoint import encoder_for_timm
from core.config import ModelConfig
from core.errors import ConfigError, Mismatch

HEAD_KEYS = frozenset({"head.weight", "head.bias"})


class ClassifierViT(VisionTransformer):
    """timm's ViT with the release's layer ids for layer-wise lr decay.

    timm's own grouping puts the final `norm` (token pooling) in the last block's layer; the
    release (`util/lr_decay.get_layer_id_for_vit`) puts every parameter outside the stem and the
    blocks in the top layer with the head, lr scale 1. With average pooling (`fc_norm`) the two agree.
    """

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^cls_token|pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None)])


def build_classifier(model: ModelConfig, num_classes: int, *, global_pool: Literal["token", "avg"],
                     drop_path: float = 0.0, encoder: Mapping[str, Tensor] | None = None) -> ClassifierViT:
    """A timm ViT shaped like `model`'s encoder with a fresh linear head (trunc-normal std 2e-5).

    `encoder` is our exported encoder state dict (timm key names, `norm.*` as the final norm);
    None keeps timm's random initialisation (the from-scratch baseline). With `global_pool="avg"`
    the final norm sits after pooling (`fc_norm`), as the release's fine-tuning model.
    """
    if global_pool not in ("token", "avg"):
        raise ConfigError(f"unknown global_pool {global_pool!r}; valid: ['avg', 'token']")
    net = ClassifierViT(
        img_size=model.img_size, patch_size=model.patch_size, in_chans=model.in_chans, num_classes=num_classes,
        global_pool=global_pool, embed_dim=model.embed_dim, depth=model.depth, num_heads=model.num_heads,
        mlp_ratio=model.mlp_ratio, qkv_bias=True, class_token=True,
        norm_layer=partial(nn.LayerNorm, eps=model.norm_eps), drop_path_rate=drop_path,
    )
    if encoder is not None:
        result = net.load_state_dict(encoder_for_timm(encoder, global_pool), strict=False)
        missing = set(result.missing_keys) - HEAD_KEYS
        if missing or result.unexpected_keys:
            raise Mismatch(f"encoder does not match the classifier: missing {sorted(missing)}, "
                               f"unexpected {sorted(result.unexpected_keys)}")
    trunc_normal_(net.head.weight, std=2e-5)
    nn.init.zeros_(net.head.bias)
    return net


def probe_head(dim: int, num_classes: int) -> nn.Sequential:
    """The linear-probing head of the release's main_linprobe.py: BatchNorm1d without affine, then Linear.

    The BatchNorm standardises features whose scale differs a lot between encoders; the Linear
    starts from trunc-normal std 0.01 and a zero bias.
    """
    linear = nn.Linear(dim, num_classes)
    trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def features(net: VisionTransformer, images: Tensor) -> Tensor:
    """Pooled, normed features (B, D): what the head sees."""
    return net.forward_head(net.forward_features(images), pre_logits=True)


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...]) -> list[int]:
    """How many rows have their label among the k highest logits, for each k (capped at the class count)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (B, kmax)
    hit = top.eq(labels[:, None])  # (B, kmax)
    return [int(hit[:, :min(k, logits.shape[1])].any(dim=1).sum()) for k in ks]


def accuracy(logits_and_labels: Iterable[tuple[Tensor, Tensor]]) -> tuple[float, float]:
    """Top-1 and top-5 accuracy in percent over batches of (logits, labels); NaN for an empty split.

    With fewer than 5 classes the second number is top-k with k = the class count (so 100%).
    """
    hits1 = hits5 = total = 0
    for logits, labels in logits_and_labels:
        c1, c5 = topk_correct(logits.float(), labels, (1, 5))
        hits1, hits5, total = hits1 + c1, hits5 + c5, total + labels.shape[0]
    if total == 0:
        return float("nan"), float("nan")
    return 100.0 * hits1 / total, 100.0 * hits5 / total
