"""From a study and a profile to stages: each stage's config, its id (the hash of what it
computes and of its parent) and its cost, before anything runs."""
