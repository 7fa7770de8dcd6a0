"""Data-parallel pre-training: N workers train exactly as one worker with N x the accumulation.

Sharding and the process-group helpers are checked in-process; the engine runs under Ray Train's
TorchTrainer with 2 CPU workers (gloo) in the test run's Ray. One Ray Train run carries the slow
tests: 2 workers x accum 2 stopped after epoch 0 (counting DDP's gradient all-reduces) and
finished by 1 worker x accum 4, against a straight 1 worker x accum 4 run. A whole 2-worker
pre-training and fine-tune through `ablate run` is tests/test_workers.py's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ablate.execution.distributed import _original_error, resource_shortfall, run_data_parallel
from core.checkpoint import LAST, load_encoder, safe_load
from core.config import DataConfig, ModelConfig, PretrainConfig, PretrainJob
from core.data import DataSource, open_dataset, shard_batches
from core.distributed import Dist
from core.pretrain import pretrain

# Importing ray.train warns about Ray Data settings we never use.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

CPU = torch.device("cpu")
BATCH = 8
IMAGES = 64  # synthetic training images, no val carve: 8 micro-batches of 8 per epoch


def job(accum: int = 1, epochs: int = 2) -> PretrainJob:
    return PretrainJob(model=ModelConfig(variant="vit_test"),
                       data=DataConfig(dataset="synthetic", synthetic_size=IMAGES, val_fraction=0.0),
                       pretrain=PretrainConfig(epochs=epochs, warmup_epochs=1, batch_size=BATCH, accum_iter=accum,
                                               blr=1e-3, device="cpu", threads=1))


def optimizer_steps(workers: int, accum: int, epochs: int) -> int:
    return epochs * (IMAGES // BATCH) // (workers * accum)


@pytest.fixture(autouse=True)
def _keep_threads():
    """The engine sets torch's thread count (threads=1); give the rest of the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ---- sharding: the same images, augmentation and order, however they are split -------------------

@pytest.fixture(scope="module")
def synthetic() -> DataSource:
    return open_dataset(DataConfig(dataset="synthetic", synthetic_size=200, val_fraction=0.1), img_size=16,
                        in_chans=3)


def _batches(source: DataSource, world: int = 1, rank: int = 0, **kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    args = dict(batch_size=BATCH, augmentation="crop_random_jitter", shuffle=True, seed=3, epoch=2, device=CPU)
    return list(source.batches("train", **(args | kwargs), shard=(rank, world)))


@pytest.mark.parametrize("world", [2, 3])
def test_rank_batches_interleave_into_the_single_process_sequence(synthetic: DataSource, world: int) -> None:
    whole = _batches(synthetic)  # 180 images: 22 micro-batches of 8
    per_rank = (180 // BATCH) // world
    for rank in range(world):
        mine = _batches(synthetic, world, rank)
        assert len(mine) == per_rank == synthetic.steps_per_epoch("train", BATCH, shard=(rank, world))
        for i, (images, labels) in enumerate(mine):
            reference = whole[i * world + rank]  # micro-batch i of rank r is g = i*world + r of the epoch
            assert torch.equal(images, reference[0]) and torch.equal(labels, reference[1])


def test_evaluation_shards_cover_every_image_once(synthetic: DataSource) -> None:
    whole = torch.cat([y for _, y in _batches(synthetic, augmentation="none", drop_last=False)])
    parts = [torch.cat([y for _, y in _batches(synthetic, 2, r, augmentation="none", drop_last=False)])
             for r in range(2)]
    assert sum(len(p) for p in parts) == len(whole) == 180
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.sort(whole).values)
    assert shard_batches(20, 8, False, (0, 2)) == [(0, slice(0, 8)), (2, slice(16, 20))]
    assert shard_batches(20, 8, False, (1, 2)) == [(1, slice(8, 16))]
    with pytest.raises(ValueError, match="0 <= rank < world"):
        synthetic.batches("train", batch_size=8, augmentation="none", shuffle=False, seed=0, epoch=0, device=CPU,
                          shard=(2, 2))


def test_imagefolder_shards_match_the_single_process_sequence(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 9), ("val", 1)):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(tmp_path / split / name / f"{i}.png")
    source = open_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path), val_fraction=0.0, num_workers=0),
                          img_size=16, in_chans=3)
    whole = _batches(source, batch_size=3, augmentation="crop_random")  # 18 images: 6 micro-batches of 3
    for rank in range(2):
        for i, (images, _) in enumerate(_batches(source, 2, rank, batch_size=3, augmentation="crop_random")):
            assert torch.equal(images, whole[2 * i + rank][0])


# ---- the process-group view ---------------------------------------------------------------------

def test_single_process_view_is_a_no_op() -> None:
    dist = Dist.current(CPU)
    assert (dist.rank, dist.world_size, dist.shard, dist.is_main()) == (0, 1, (0, 1), True)
    model = torch.nn.Linear(2, 2)
    assert dist.wrap_ddp(model) is model
    x = torch.tensor([1.0, 3.0])
    assert torch.equal(dist.all_reduce_mean(x), x)
    with dist.no_sync(model, sync=False):
        dist.barrier()


def test_lr_scales_with_the_effective_batch_of_all_workers() -> None:
    cfg = job(accum=2).pretrain
    assert cfg.lr(workers=4) == pytest.approx(1e-3 * BATCH * 2 * 4 / 256)


# ---- the resource check and error hand-back (no training) ----------------------------------------

def test_resource_shortfall_names_what_is_missing() -> None:
    one_gpu = [{"CPU": 8.0, "GPU": 1.0}]
    assert resource_shortfall(4, {"CPU": 1, "GPU": 1}, one_gpu) == \
        "trial needs 4 workers x 1 GPU; the cluster has 1 GPU"
    assert resource_shortfall(1, {"CPU": 1, "GPU": 1}, one_gpu) is None
    # Enough GPUs in total, but a worker's two GPUs must be on one node.
    message = resource_shortfall(2, {"CPU": 1, "GPU": 2}, [{"CPU": 8.0, "GPU": 3.0}, {"CPU": 8.0, "GPU": 1.0}])
    assert message == ("trial needs 2 workers x 2 GPU + 1 CPU, each on one node; the cluster's nodes hold only "
                       "1 such workers")
    assert resource_shortfall(2, {"CPU": 0.5}, [{"CPU": 1.0}]) is None


def test_a_workers_own_exception_is_raised_not_its_wrapper() -> None:
    from ray.train import WorkerGroupError

    nan = FloatingPointError("non-finite pre-training loss nan at epoch 0, step 1 on rank 1")
    peer_gone = RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:1234")
    assert _original_error(WorkerGroupError("two failed", {0: peer_gone, 1: nan})) is nan
    assert _original_error(nan) is nan


# ---- under Ray Train: 2 CPU workers, gloo --------------------------------------------------------

def test_a_cluster_too_small_is_refused_before_anything_starts(ray_session, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        run_data_parallel(pretrain, job(), tmp_path, workers=4, gpus_per_worker=1, report=None)
    assert str(info.value) == "trial needs 4 workers x 1 GPU; the cluster has 0 GPU"
    with pytest.raises(ValueError, match=r"^trial needs 3 workers x 1 CPU; the cluster has 2 CPU$"):
        run_data_parallel(pretrain, job(), tmp_path, workers=3, gpus_per_worker=0, report=None)
    with pytest.raises(ValueError, match="several NCCL ranks on one GPU"):
        run_data_parallel(pretrain, job(), tmp_path, workers=2, gpus_per_worker=0.5, report=None)
    assert not (tmp_path / LAST).exists()


def counting_engine():
    """`pretrain` with a DDP communication hook that counts gradient all-reduces; the count so far
    rides along in every reported epoch. A closure, so Ray ships it by value to the workers."""

    def engine(job, out_dir, report):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        import core.distributed
        from core.pretrain import pretrain

        calls = [0]
        wrap = core.distributed.Dist.wrap_ddp

        def counting_wrap(self, model, **kwargs):
            ddp = wrap(self, model, **kwargs)

            def hook(state, bucket):
                calls[0] += 1
                return allreduce_hook(None, bucket)  # DDP's default: average over ranks

            ddp.register_comm_hook(None, hook)
            return ddp

        core.distributed.Dist.wrap_ddp = counting_wrap
        try:
            forward = None if report is None else (lambda m: report({**m, "allreduce_calls": calls[0]}))
            return {**pretrain(job, out_dir, forward), "allreduce_calls": calls[0]}
        finally:
            core.distributed.Dist.wrap_ddp = wrap

    return engine


class Stop(Exception):
    """The caller's report raising, as a stopped trial's would."""


def assert_same_encoder(a: Path, b: Path) -> None:
    first, second = load_encoder(a), load_encoder(b)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def stopped_two_workers(ray_session, tmp_path_factory) -> tuple[Path, list[dict]]:
    """2 workers x accum 2 on a 2-epoch job, stopped by the caller's report after epoch 0."""
    out = tmp_path_factory.mktemp("dp") / "resume"
    seen: list[dict] = []

    def stop_after_first(metrics: dict) -> None:
        seen.append(metrics)
        raise Stop

    with pytest.raises(Stop):
        run_data_parallel(counting_engine(), job(accum=2), out, workers=2, gpus_per_worker=0, report=stop_after_first)
    return out, seen


@pytest.mark.slow
def test_accumulation_all_reduces_once_per_optimizer_step(stopped_two_workers) -> None:
    _, seen = stopped_two_workers
    assert [m["epoch"] for m in seen] == [0]  # rank 0's report, once for the epoch
    micro_steps = IMAGES // BATCH // 2  # per rank in one epoch
    assert seen[0]["allreduce_calls"] == optimizer_steps(2, 2, 1) == micro_steps // 2 == 2


@pytest.mark.slow
def test_two_workers_equal_one_worker_with_twice_the_accumulation_and_resume_on_one(stopped_two_workers,
                                                                                  tmp_path: Path) -> None:
    """2 workers x accum 2 for epoch 0, then 1 worker x accum 4 from their checkpoint, equal a
    straight 1 worker x accum 4 run: the same losses, learning rates and final encoder."""
    out, seen = stopped_two_workers
    state = safe_load(out / LAST)  # written once, by rank 0, from the unwrapped model (no DDP "module." prefix)
    assert state["epoch"] == 0 and state["workers"] == 2
    assert not any(k.startswith("module.") for k in state["model"])
    straight: list[dict] = []
    pretrain(job(accum=4), tmp_path / "straight", straight.append)
    assert seen[0]["loss"] == pytest.approx(straight[0]["loss"], rel=1e-5)
    assert seen[0]["lr"] == pytest.approx(straight[0]["lr"], rel=1e-9)
    resumed: list[dict] = []
    result = pretrain(job(accum=4), out, resumed.append)  # same effective batch: 8 x 1 x 4
    assert [m["epoch"] for m in resumed] == [1]
    assert resumed[0]["loss"] == pytest.approx(straight[1]["loss"], rel=1e-5)
    assert result["workers"] == 1
    assert_same_encoder(out, tmp_path / "straight")
