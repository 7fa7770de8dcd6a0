"""Fixtures shared by the test modules."""
from __future__ import annotations

import logging

import pytest
import torch


@pytest.fixture
def sdpa_calls(monkeypatch) -> list[int]:
    """One entry per call of torch's fused attention (F.scaled_dot_product_attention) during the test."""
    calls: list[int] = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kw: calls.append(1) or real(*args, **kw))
    return calls


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray (2 CPUs) for the module that asks for it, started once (start-up costs seconds);
    the Ray backend joins it. One a test left running is used and left as it is."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    if started:
        ray.shutdown()
