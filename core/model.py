"""The masked autoencoder, in the order of the paper's Section 3: construction, initialisation,
patchify, masking, encoder, decoder, loss, forward.

Numerics and state-dict names follow the official release (facebookresearch/mae `models_mae.py`),
so its checkpoints load here and ours load there. Differences, all opt-in by config: any channel
count; mask sampling strategies other than random (Table 1f); the mask token in the encoder
(Table 1c); loss on all patches; reconstruction targets other than pixels (Table 1d). One
difference in work, not in results: the training step (`loss_only=True`) runs the decoder's last
block, norm and prediction only for the removed patches, the only ones the loss reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from core.block_rows import block_rows
from core.config import ModelConfig
from core.masking import check_ratio, get_masking, len_keep
from core.pos_embed import sincos_2d
from core.targets import build_target


@dataclass
class MaskedBatch:
    """What the encoder saw: latent (N, 1 + kept, D), mask (N, L) with 1 = removed, ids_restore (N, L),
    ids_removed (N, L - kept): the removed patches' indices."""

    latent: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor
    ids_removed: torch.Tensor


class MaskedAutoencoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_ratio(cfg.mask_sampling, cfg.grid_size, cfg.mask_ratio)
        self.cfg = cfg
        norm_layer = partial(nn.LayerNorm, eps=cfg.norm_eps)
        block = partial(Block, mlp_ratio=cfg.mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
        num_patches = cfg.num_patches

        # Encoder: conv patch embedding, cls token, fixed sin-cos positions, pre-norm blocks, final norm.
        self.patch_embed = PatchEmbed(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                                      embed_dim=cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, cfg.embed_dim), requires_grad=False)
        if cfg.mask_token_in_encoder:  # Table 1c: a shared encoder-side mask token (absent from the release)
            self.enc_mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.blocks = nn.ModuleList([block(dim=cfg.embed_dim, num_heads=cfg.num_heads) for _ in range(cfg.depth)])
        self.norm = norm_layer(cfg.embed_dim)

        # Decoder: embed to decoder width, mask token, fixed sin-cos positions, blocks, norm, prediction.
        self.decoder_embed = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, cfg.decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([block(dim=cfg.decoder_embed_dim, num_heads=cfg.decoder_num_heads)
                                             for _ in range(cfg.decoder_depth)])
        self.decoder_norm = norm_layer(cfg.decoder_embed_dim)
        self.target = build_target(cfg)
        self.decoder_pred = nn.Linear(cfg.decoder_embed_dim, self.target.out_dim, bias=True)

        self.initialize_weights()

    # ----------------------------------------------------------------------------------- initialisation
    def initialize_weights(self) -> None:
        grid = self.cfg.grid_size
        self.pos_embed.data.copy_(sincos_2d(self.cfg.embed_dim, grid)[None])
        self.decoder_pos_embed.data.copy_(sincos_2d(self.cfg.decoder_embed_dim, grid)[None])
        w = self.patch_embed.proj.weight.data  # (D, C, p, p): xavier as a Linear of (D, C*p*p)
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        if self.cfg.mask_token_in_encoder:
            nn.init.normal_(self.enc_mask_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):  # the fused qkv is one (3D, D) matrix, as the release
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    # ----------------------------------------------------------------------------------- patchify
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), channel last within a patch, patches row-major."""
        p, c = self.cfg.patch_size, self.cfg.in_chans
        n, _, hh, ww = imgs.shape
        h, w = hh // p, ww // p
        x = imgs.reshape(n, c, h, p, w, p)  # (N, C, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)  # (N, h, w, p, p, C)
        return x.reshape(n, h * w, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W)."""
        p, c = self.cfg.patch_size, self.cfg.in_chans
        n, num, _ = x.shape
        h = w = int(num**0.5)
        x = x.reshape(n, h, w, p, p, c)  # (N, h, w, p, p, C)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (N, C, h, p, w, p)
        return x.reshape(n, c, h * p, w * p)

    # ----------------------------------------------------------------------------------- masking
    def mask_noise(self, n: int, device: torch.device, mask_ratio: float | None = None,
                   generator: torch.Generator | None = None, sampling: str | None = None) -> torch.Tensor:
        """Per-patch noise (N, L) of the configured strategy; the lowest `len_keep` are kept."""
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        strategy = get_masking(sampling or self.cfg.mask_sampling)
        return strategy(n, self.cfg.grid_size, ratio, generator, device)

    def random_masking(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep the `len_keep` patches of lowest noise per sample.

        x (N, L, D) -> kept (N, len_keep, D), mask (N, L) float 1 = removed in original order,
        ids_restore (N, L), ids_shuffle (N, L): patch indices, kept ones first.
        """
        n, num, d = x.shape
        keep = len_keep(num, mask_ratio)
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))  # (N, keep, D)
        mask = torch.ones(n, num, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # back to original patch order
        return x_kept, mask, ids_restore, ids_shuffle

    # ----------------------------------------------------------------------------------- encoder
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
                        ) -> MaskedBatch:
        x = self.patch_embed(imgs)  # (N, L, D)
        x = x + self.pos_embed[:, 1:, :]  # positions before masking
        if noise is None:
            noise = self.mask_noise(x.shape[0], x.device, mask_ratio)
        x_kept, mask, ids_restore, ids_shuffle = self.random_masking(x, mask_ratio, noise)
        if self.cfg.mask_token_in_encoder:
            # Table 1c: the encoder processes all L tokens, removed ones replaced by the mask token
            # (plus its position), so its compute is that of an unmasked ViT.
            tokens = self.enc_mask_token.to(x.dtype) + self.pos_embed[:, 1:, :]  # (1, L, D)
            x = torch.where(mask.unsqueeze(-1).bool(), tokens, x)  # (N, L, D)
        else:
            x = x_kept  # (N, keep, D)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (N, 1 + tokens, D)
        for blk in self.blocks:
            x = blk(x)
        return MaskedBatch(self.norm(x), mask, ids_restore, ids_shuffle[:, x_kept.shape[1]:])

    # ----------------------------------------------------------------------------------- decoder
    def forward_decoder(self, enc: MaskedBatch, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions (N, L, out_dim), or with `rows` (N, R) patch indices (N, R, out_dim) for those
        patches only: the last block's queries, MLP, the norm and the prediction run for them alone,
        its keys and values for all tokens, so the rows' outputs are those of the full pass."""
        x = self.decoder_embed(enc.latent)  # (N, 1 + tokens, Dd)
        n, tokens, dd = x.shape
        num = enc.ids_restore.shape[1]
        if tokens - 1 < num:  # visible-only encoder: append mask tokens, then un-shuffle
            mask_tokens = self.mask_token.to(x.dtype).expand(n, num + 1 - tokens, -1)
            x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # (N, L, Dd) in shuffled order
            x_ = torch.gather(x_, 1, enc.ids_restore.unsqueeze(-1).expand(-1, -1, dd))  # original order
            x = torch.cat([x[:, :1, :], x_], dim=1)  # (N, 1 + L, Dd)
        x = x + self.decoder_pos_embed
        if rows is None:
            for blk in self.decoder_blocks:
                x = blk(x)
            x = x[:, 1:, :]  # drop cls: (N, L, Dd)
        else:
            for blk in self.decoder_blocks[:-1]:
                x = blk(x)
            x = block_rows(self.decoder_blocks[-1], x, rows + 1)  # +1: cls first; (N, R, Dd)
        return self.decoder_pred(self.decoder_norm(x))  # (N, L or R, out_dim)

    # ----------------------------------------------------------------------------------- loss
    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
        """Mean per-patch loss over removed patches (or all, with loss_on='all').

        With nothing removed (mask_ratio 0) the removed-only mean is undefined; the loss then
        falls back to all patches instead of dividing by zero. With `rows` (N, R), the removed
        patches' indices, `pred` (N, R, out_dim) holds their predictions only: the same mean.
        """
        patches = self.patchify(imgs)  # (N, L, P)
        if rows is not None:
            patches = torch.gather(patches, 1, rows.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))  # (N, R, P)
            return self.target.loss(pred.float(), self.target(patches)).mean()
        target = self.target(patches)
        loss = self.target.loss(pred.float(), target)  # (N, L)
        if self.cfg.loss_on == "all":
            return loss.mean()
        weight = mask + (mask.sum() == 0).to(mask.dtype)  # no host sync
        return (loss * weight).sum() / weight.sum()

    # ----------------------------------------------------------------------------------- forward
    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None,
                *, loss_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(N, C, H, W) -> (loss, pred (N, L, out_dim), mask (N, L)); `noise` (N, L) fixes the mask.

        `loss_only` (the training step): the same loss, pred None. When the loss reads only the
        removed patches, the decoder's last block and prediction run for those alone: at 75% masking
        that skips 2-4% of a step's FLOPs (ViT-B 1.7%, vit_fmnist 3.9%), more with shallow decoders.
        """
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        enc = self.forward_encoder(imgs, ratio, noise)
        if loss_only and self.cfg.loss_on != "all" and enc.ids_removed.shape[1] > 0:
            pred = self.forward_decoder(enc, enc.ids_removed)  # (N, R, out_dim)
            return self.forward_loss(imgs, pred, enc.mask, enc.ids_removed), None, enc.mask
        pred = self.forward_decoder(enc)
        return self.forward_loss(imgs, pred, enc.mask), None if loss_only else pred, enc.mask

    # ----------------------------------------------------------------------------------- views
    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel mask (N, C, H, W) with 1 = removed, reconstruction with visible patches pasted back, normalised)."""
        _, pred, mask = self.forward(imgs, mask_ratio, noise)
        patches = self.patchify(imgs)
        pixels = self.target.to_pixels(pred.float(), patches)
        m = mask.unsqueeze(-1)  # (N, L, 1)
        pasted = self.unpatchify(patches * (1 - m) + pixels * m)
        return self.unpatchify(m.expand_as(patches).contiguous()), pasted

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's tensors under timm VisionTransformer's names (global_pool='token')."""
        prefixes = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k.startswith(prefixes)}
