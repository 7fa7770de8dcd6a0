"""Fixtures shared by the test modules."""
from __future__ import annotations

import logging

import pytest
import torch


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole pytest run (its start costs seconds); every backend, Tuner and
    Ray Train run in the tests joins it. Tests that need another Ray (a cluster with a token, a
    stale current-cluster file) run `ablate` in a subprocess."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def sdpa_calls(monkeypatch) -> list[int]:
    """One entry per call of torch's fused attention (F.scaled_dot_product_attention) during the test."""
    calls: list[int] = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kw: calls.append(1) or real(*args, **kw))
    return calls
