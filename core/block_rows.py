"""The decoder's last block for the rows the loss reads, in the training step.

The loss reads only the removed patches, so the training step (`MaskedAutoencoder.forward_loss`,
`loss_only=True`) runs the decoder's last block, its norm and the prediction only for those rows:
1.7% (ViT-B) to 3.9% (`vit_fmnist`) fewer FLOPs per step, with the same loss and gradients as the
full pass (tests/test_model.py). It reads timm 1.0's `Block` and `Attention` attributes (pinned in
constraints.txt), so it lives here, beside the model rather than in it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block


def block_rows(blk: Block, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """timm's `Block.forward` on x (N, T, D), computed only for the tokens at `rows` (N, R):
    queries, attention output and MLP for those rows, keys and values from every token.
    Returns (N, R, D), equal to `blk(x)` gathered at `rows`."""
    attn = blk.attn
    if getattr(attn, "gate", None) is not None:
        raise NotImplementedError("block_rows: gated attention is not supported")
    n, t, d = x.shape
    heads, head_dim, a = attn.num_heads, attn.head_dim, attn.attn_dim
    xn = blk.norm1(x)  # (N, T, D)
    w, b = attn.qkv.weight, attn.qkv.bias  # (3 * A, D): q, k, v stacked, as timm's reshape reads them
    kv = F.linear(xn, w[a:], None if b is None else b[a:])  # (N, T, 2A)
    k, v = kv.reshape(n, t, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (N, H, T, hd)
    x_rows = torch.gather(x, 1, rows.unsqueeze(-1).expand(-1, -1, d))  # (N, R, D)
    xn_rows = torch.gather(xn, 1, rows.unsqueeze(-1).expand(-1, -1, d))
    q = F.linear(xn_rows, w[:a], None if b is None else b[:a]).reshape(n, -1, heads, head_dim).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)  # (N, H, R, hd), (N, H, T, hd)
    if attn.fused_attn:
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:  # timm's plain path
        o = attn.attn_drop(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v  # (N, H, R, hd)
    o = attn.proj_drop(attn.proj(attn.norm(o.transpose(1, 2).reshape(n, -1, a))))  # (N, R, D)
    x_rows = x_rows + blk.drop_path1(blk.ls1(o))
    return x_rows + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x_rows))))
