"""The MAE science: model, masking, targets, data, the pre-training and evaluation engines.

NUMERICS_VERSION names what the engines compute. Bump it in the same commit as any change in
core/ that changes a stage's numbers for the same config (a crop scale, a seeding rule, an
initialisation): every finished stage records the version it was computed with (result.json,
with the code's commit), and `ablate run` does not silently reuse one of another version;
`ablate status` shows them, and the user reruns them (--rerun-stale) or keeps them (--keep-stale).
"""
NUMERICS_VERSION = 1
