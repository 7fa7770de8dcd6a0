"""The paper's numbers, as data keyed like our axes.

He et al., 2021, "Masked Autoencoders Are Scalable Vision Learners" (arXiv 2111.06377).
ViT-L/16 on ImageNet-1K, 800 pre-training epochs unless a table says otherwise;
`ft_top1` is end-to-end fine-tuning top-1 (%), `lin_top1` linear-probing top-1 (%).
Axis columns carry our full dotted config keys and our value spellings
(`model.mask_ratio` is a fraction, `model.target` uses `norm_pixel` and `token`),
so a table joins ours and the paper's on the same key.
Source for every number: shared/reference/mae-reference.md, section 3.
"""
from __future__ import annotations

import pandas as pd

SETTING = "ViT-L/16, ImageNet-1K"

# Figure 5: mask ratio (fraction) -> accuracy.
FIG5 = pd.DataFrame({
    "model.mask_ratio": [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.75, 0.80, 0.90],
    "ft_top1": [83.2, 83.4, 83.4, 84.7, 84.9, 85.0, 84.9, 84.9, 84.5, 83.0],
    "lin_top1": [54.6, 58.9, 61.7, 67.0, 69.9, 71.8, 73.2, 73.5, 71.8, 66.1],
})

# Table 1a: decoder depth (blocks).
TABLE1A = pd.DataFrame({
    "model.decoder_depth": [1, 2, 4, 8, 12],
    "ft_top1": [84.8, 84.9, 84.9, 84.9, 84.4],
    "lin_top1": [65.5, 70.0, 71.9, 73.5, 73.3],
})

# Table 1b: decoder width (channels).
TABLE1B = pd.DataFrame({
    "model.decoder_embed_dim": [128, 256, 512, 768, 1024],
    "ft_top1": [84.9, 84.8, 84.9, 84.4, 84.3],
    "lin_top1": [69.1, 71.3, 73.5, 73.1, 73.1],
})

# Table 1c: mask token in the encoder; FLOPs relative to the encoder without it.
TABLE1C = pd.DataFrame({
    "model.mask_token_in_encoder": [True, False],
    "ft_top1": [84.2, 84.9],
    "lin_top1": [59.6, 73.5],
    "train_flops_ratio": [3.3, 1.0],
})

# Table 1d: reconstruction target.
TABLE1D = pd.DataFrame({
    "model.target": ["pixel", "norm_pixel", "pca", "token"],
    "ft_top1": [84.9, 85.4, 84.6, 85.3],
    "lin_top1": [73.5, 73.9, 72.3, 71.6],
})

# Table 1e: data augmentation.
TABLE1E = pd.DataFrame({
    "data.augmentation": ["none", "crop_fixed", "crop_random", "crop_random_jitter"],
    "ft_top1": [84.0, 84.7, 84.9, 84.3],
    "lin_top1": [65.7, 73.1, 73.5, 71.9],
})

# Table 1f: mask sampling strategy and ratio.
TABLE1F = pd.DataFrame({
    "model.mask_sampling": ["random", "block", "block", "grid"],
    "model.mask_ratio": [0.75, 0.50, 0.75, 0.75],
    "ft_top1": [84.9, 83.9, 82.8, 84.0],
    "lin_top1": [73.5, 72.3, 63.9, 66.0],
})
# Table 1f's remark on training loss, relative to random sampling.
TABLE1F_LOSS_NOTE = "paper: block masking trains to a higher loss than random, grid to a lower one"

# Table 2: wall-clock hours for 800 epochs on 128 TPU-v3 cores (decoder width 512, ratio 75%).
# Speedups are the paper's stated ones, relative to the same encoder with the mask token.
TABLE2 = pd.DataFrame({
    "encoder": ["ViT-L", "ViT-L", "ViT-L", "ViT-H", "ViT-H", "ViT-H"],
    "model.mask_token_in_encoder": [True, False, False, True, False, False],
    "model.decoder_depth": [8, 8, 1, 8, 8, 1],
    "wall_clock_h": [42.4, 15.4, 11.6, 119.6, 34.5, 29.3],
    "speedup": [1.0, 2.8, 3.7, 1.0, 3.5, 4.1],
    "estimated": [False, False, False, True, False, False],
})
# The default decoder (8 blocks, 512 wide) costs this share of ViT-L's FLOPs per token.
DECODER_FLOPS_SHARE = 0.09

# Figure 7: pre-training epochs.
FIG7 = pd.DataFrame({
    "pretrain.epochs": [100, 200, 400, 800, 1600],
    "ft_top1": [82.3, 83.3, 84.3, 84.9, 85.1],
    "lin_top1": [57.3, 64.4, 69.7, 73.5, 75.1],
})

# Figure 9: number of last blocks fine-tuned (0 = linear probing; 24 = all of ViT-L).
# 0.5 is the MLP-only half block, reported for MAE alone.
FIG9 = pd.DataFrame({
    "finetune.tune_blocks": [0, 0.5, 1, 2, 4, 6, 12, 18, 24],
    "mae": [73.5, 79.1, 81.0, 83.1, 84.2, 84.4, 84.6, 84.7, 84.9],
    "moco_v3": [77.6, float("nan"), 79.9, 80.8, 81.6, 81.9, 83.2, 83.8, 84.1],
})
FIG9_HALF_BLOCK = 0.5
FIG9_ALL_BLOCKS = 24  # ViT-L depth

# Table 3: fine-tuning top-1 with norm-pix targets after 1600 epochs, against the paper's
# from-scratch recipe.
TABLE3 = pd.DataFrame({
    "model": ["ViT-B", "ViT-L", "ViT-H", "ViT-H (448 px)"],
    "ft_top1": [83.6, 85.9, 86.9, 87.8],
    "scratch_top1": [82.3, 82.6, 83.1, float("nan")],
})
