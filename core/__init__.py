"""The MAE science: model, masking, targets, data, the pre-training and evaluation engines.

NUMERICS_VERSION names what each engine computes (pre-training, linear probing, fine-tuning, the
last also behind partial fine-tuning and training from scratch). Bump an engine's number in the
same commit as any change in core/ that changes its stages' numbers for the same config (a crop
scale, a seeding rule, an initialisation; a change in shared code bumps every engine it reaches).
Every finished stage records its engine's version (result.json, with the code's commit), and
`ablate run` does not silently reuse one of another version: `ablate status` shows them, and
the user reruns them (--rerun-stale) or keeps them (--keep-stale).
"""
# Version 2 of all three: one seeding rule (core/seeding.py), every stream named. In version 1 an
# epoch's data order and its first batch's augmentation had one seed, and the global RNGs of a
# fine-tune's epoch were seeded with seed x 100003 + epoch. Linear probing and fine-tuning also
# crop at the release's evaluation scale (0.08, 1) in version 2, not at pre-training's (0.2, 1).
# Fine-tuning version 3: on image folders, RandAugment and random erasing run in timm's
# create_transform image by image (as the release), no longer on the batch after collation; data
# held in memory (Fashion-MNIST, CIFAR, synthetic) computes exactly as in version 2.
NUMERICS_VERSION: dict[str, int] = {"pretrain": 2, "linear_probe": 2, "finetune": 3}
