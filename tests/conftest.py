"""Fixtures shared by the test modules."""
from __future__ import annotations

import logging
import os

import pytest
import torch

# scripts/test.sh runs two test processes (pytest-xdist): each gets its share of the cores for
# torch's threads, so that two CPU-bound tests side by side do not oversubscribe the machine.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture
def ray_starts(monkeypatch) -> list[tuple]:
    """Every `ray.init` call during the test (each refused): a command that must start no Ray is
    checked by this list staying empty, also while the test run's own Ray is up."""
    import ray

    calls: list[tuple] = []

    def refuse(*args, **kwargs):
        calls.append((args, kwargs))
        raise RuntimeError("this test must not start Ray")

    refuse.calls = calls
    monkeypatch.setattr(ray, "init", refuse)
    return calls


@pytest.fixture
def sdpa_calls(monkeypatch) -> list[int]:
    """One entry per call of torch's fused attention (F.scaled_dot_product_attention) during the test."""
    calls: list[int] = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kw: calls.append(1) or real(*args, **kw))
    return calls


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs) per test process for the whole run, started by the first test that asks for it
    (start-up costs seconds); the Ray backend joins it. One a test left running is used and left as it is."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    if started:
        ray.shutdown()
