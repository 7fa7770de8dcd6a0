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


# The modules in the order of their summed test seconds, longest first (measured on 2 cores, both test
# processes busy, 2026-12-01: 207, 190, 187, 122, 95, 76, 50, 48, 32, 25, 19 s; the rest under 10 s each).
# scripts/test.sh hands whole modules to whichever test process is free (--dist loadfile) in collection
# order; pytest-xdist's own order puts the modules with the most tests first, which left the few long
# ones to the end, one process running them while the other waited (a simulation of the measured
# durations: 579 s against 545 s longest-first, the best two processes can do).
LONGEST_FIRST = ("test_faults", "test_cluster", "test_runner", "test_search", "test_workers", "test_shipped_studies",
                 "test_suite", "test_concurrency", "test_dashboards", "test_distributed", "test_storage")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules in LONGEST_FIRST's order, the others after them; tests keep their order within a module."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


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
