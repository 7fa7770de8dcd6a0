"""Hugging Face's ViTMAE as an independent implementation of the reference algorithm: the same
configuration, and our weights copied into it (fused qkv split into q, k, v)."""
from __future__ import annotations

import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from core.config import ModelConfig


def hf_config(cfg: ModelConfig, norm_pix: bool = False) -> ViTMAEConfig:
    return ViTMAEConfig(image_size=cfg.img_size, patch_size=cfg.patch_size, num_channels=cfg.in_chans,
                        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
                        intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio), decoder_hidden_size=cfg.decoder_embed_dim,
                        decoder_num_hidden_layers=cfg.decoder_depth, decoder_num_attention_heads=cfg.decoder_num_heads,
                        decoder_intermediate_size=int(cfg.decoder_embed_dim * cfg.mlp_ratio), mask_ratio=cfg.mask_ratio,
                        layer_norm_eps=cfg.norm_eps, qkv_bias=True, norm_pix_loss=norm_pix, hidden_act="gelu")


def _block(ours: dict, src: str, dst: str) -> dict:
    out = {}
    q, k, v = ours[f"{src}.attn.qkv.weight"].chunk(3, dim=0)  # rows ordered [q; k; v]
    qb, kb, vb = ours[f"{src}.attn.qkv.bias"].chunk(3, dim=0)
    out.update({f"{dst}.attention.q_proj.weight": q, f"{dst}.attention.k_proj.weight": k,
                f"{dst}.attention.v_proj.weight": v, f"{dst}.attention.q_proj.bias": qb,
                f"{dst}.attention.k_proj.bias": kb, f"{dst}.attention.v_proj.bias": vb})
    for a, b in [("attn.proj", "attention.o_proj"), ("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                 ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]:
        for t in ("weight", "bias"):
            out[f"{dst}.{b}.{t}"] = ours[f"{src}.{a}.{t}"]
    return out


def hf_from_ours(model: torch.nn.Module, norm_pix: bool = False) -> ViTMAEForPreTraining:
    cfg = model.cfg
    ours = model.state_dict()
    hf = ViTMAEForPreTraining(hf_config(cfg, norm_pix))
    sd = {"vit.embeddings.cls_token": ours["cls_token"], "vit.embeddings.position_embeddings": ours["pos_embed"],
          "vit.embeddings.patch_embeddings.projection.weight": ours["patch_embed.proj.weight"],
          "vit.embeddings.patch_embeddings.projection.bias": ours["patch_embed.proj.bias"],
          "vit.layernorm.weight": ours["norm.weight"], "vit.layernorm.bias": ours["norm.bias"],
          "decoder.mask_token": ours["mask_token"], "decoder.decoder_pos_embed": ours["decoder_pos_embed"]}
    for name in ("decoder_embed", "decoder_norm", "decoder_pred"):
        for t in ("weight", "bias"):
            sd[f"decoder.{name}.{t}"] = ours[f"{name}.{t}"]
    for i in range(cfg.depth):
        sd.update(_block(ours, f"blocks.{i}", f"vit.layers.{i}"))
    for i in range(cfg.decoder_depth):
        sd.update(_block(ours, f"decoder_blocks.{i}", f"decoder.decoder_layers.{i}"))
    hf.load_state_dict(sd, strict=True)
    return hf.eval()
