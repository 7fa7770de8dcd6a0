"""Failures that running a stage again cannot change, raised as such where they are found.

The engines raise these for deterministic failures (a config this code cannot run, data that is
missing or malformed, a loss that is no longer finite); the stage runner fails such a stage at
once and retries anything else (a worker that died, a lost node, a flaky file system). Each
subclasses the built-in error it used to be, so `except ValueError` and friends still catch it.
"""
from __future__ import annotations


class Deterministic(Exception):
    """Running the stage again with the same config and data fails the same way."""


class ConfigError(Deterministic, ValueError):
    """The config asks for something this code cannot do (a lattice that does not fit, a batch
    larger than the data, an unknown name)."""


class DataError(Deterministic, ValueError):
    """The data is there but unusable (a malformed file, images and labels that disagree)."""


class MissingFile(Deterministic, FileNotFoundError):
    """An input file is not where the config says (a dataset, a codebook, a parent's encoder)."""


class NonFiniteLoss(Deterministic, FloatingPointError):
    """The loss became NaN or infinite: the same seed and recipe diverge again."""


class Mismatch(Deterministic, RuntimeError):
    """Two inputs that must agree do not (an encoder and its classifier, a device the config
    requires and the machine lacks)."""
