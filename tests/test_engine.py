"""What the three engines share (core/engine.py, core/seeding.py): one seeding rule, one resume
scheme, checked on all three and against a naive reference."""
from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch

import core
from core.checkpoint import LAST, atomic_save, safe_load
from core.config import DataConfig, ModelConfig, PretrainConfig, PretrainJob
from core.eval_config import FinetuneConfig, FinetuneJob, LinearProbeConfig, LinearProbeJob
from core.errors import ConfigError
from core.finetune import finetune
from core.linear_probe import linear_probe
from core.model import MaskedAutoencoder
from core.pretrain import pretrain
from core.seeding import Stream, derive, seed_epoch

MODEL = ModelConfig(variant="vit_test")
DATA = DataConfig(dataset="synthetic", synthetic_size=128, val_fraction=0.125)
TIMING = {"img_per_s", "epoch_time_s", "pretrain_wall_clock_s"}


def jobs() -> dict[str, tuple]:
    """protocol -> (job, run(job, out_dir, report))."""
    torch.manual_seed(0)
    encoder = MaskedAutoencoder(MODEL).encoder_state_dict()
    common = dict(epochs=2, warmup_epochs=1, batch_size=16, device="cpu")
    return {
        "pretrain": (PretrainJob(model=MODEL, data=DATA, pretrain=PretrainConfig(**common)),
                     lambda job, out, report=None: pretrain(job, out, report)),
        "linear_probe": (LinearProbeJob(model=MODEL, data=DATA, probe=LinearProbeConfig(augmentation="crop_random",
                                                                                         **common)),
                         lambda job, out, report=None: linear_probe(job, encoder, out, report)),
        # mixup, cutmix, erasing and drop path all draw from the global RNGs that seed_epoch seeds
        "finetune": (FinetuneJob(model=MODEL, data=DATA, finetune=FinetuneConfig(**common)),
                     lambda job, out, report=None: finetune(job, encoder, out, report)),
    }


def test_the_seeding_rule_against_seedsequence_and_its_streams_apart():
    seed = 7
    naive = int(np.random.SeedSequence([seed, 2, 3, 1]).generate_state(1, dtype=np.uint64)[0])
    assert derive(seed, Stream.BATCH, 3, 1) == naive
    # Why the stream comes first: SeedSequence ignores trailing zeros, so bare paths collide.
    bare = [int(np.random.SeedSequence([seed, *path]).generate_state(1, dtype=np.uint64)[0]) for path in
            ([3, 0], [3, 0, 0])]
    assert bare[0] == bare[1]
    # epoch 3's order (train split), its first batch, its first mask, rank 0's globals: four seeds
    streams = [derive(seed, Stream.DATA, 3, 0), derive(seed, Stream.BATCH, 3, 0, 0), derive(seed, Stream.MASK, 3, 0),
               derive(seed, Stream.GLOBALS, 3, 0)]
    assert len(set(streams)) == 4
    draws = set()
    for epoch in range(3):
        for rank in range(3):
            seed_epoch(seed, epoch, rank)
            draws.add((torch.rand(1).item(), np.random.rand(), random.random()))
    assert len(draws) == 9  # every (epoch, rank) draws differently, from all three global generators
    seed_epoch(seed, 2, 1)
    assert (torch.rand(1).item(), np.random.rand(), random.random()) in draws


@pytest.mark.parametrize("protocol", ["pretrain", "linear_probe", "finetune"])
def test_every_engine_resumes_from_its_checkpoint_as_if_never_stopped(tmp_path, protocol):
    job, run = jobs()[protocol]
    whole = []
    run(job, tmp_path / "whole", whole.append)

    class Stop(Exception):
        pass

    def stop_after_first(metrics):
        if metrics["epoch"] == 0:
            raise Stop

    with pytest.raises(Stop):
        run(job, tmp_path / "cut", stop_after_first)
    state = safe_load(tmp_path / "cut" / LAST)
    assert state["protocol"] == protocol and state["numerics"] == core.NUMERICS_VERSION[protocol]
    assert state["epoch"] == 0 and set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    random.seed(1), np.random.seed(1), torch.manual_seed(1)  # a fresh process's generators differ too
    resumed = []
    run(job, tmp_path / "cut", resumed.append)
    assert [m["epoch"] for m in resumed] == [1]
    assert {k: v for k, v in resumed[0].items() if k not in TIMING} == \
        {k: v for k, v in whole[1].items() if k not in TIMING}
    weights = {name: safe_load(tmp_path / name / LAST)["model"] for name in ("whole", "cut")}
    assert weights["whole"].keys() == weights["cut"].keys()
    for key, value in weights["whole"].items():
        assert torch.equal(weights["cut"][key], value), key
    # A finished run is not trained again.
    again = []
    run(job, tmp_path / "cut", again.append)
    assert again == []


def test_a_checkpoint_of_another_numerics_version_is_set_aside_and_the_run_starts_afresh(tmp_path, monkeypatch):
    job, run = jobs()["finetune"]
    first = []
    run(job, tmp_path, first.append)
    monkeypatch.setitem(core.NUMERICS_VERSION, "finetune", core.NUMERICS_VERSION["finetune"] + 1)
    again = []
    with pytest.warns(UserWarning, match="numerics version .* starting afresh"):
        run(job, tmp_path, again.append)
    assert [m["epoch"] for m in again] == [0, 1]
    assert safe_load(tmp_path / LAST)["numerics"] == core.NUMERICS_VERSION["finetune"]


def test_a_pre_training_checkpoint_from_before_checkpoints_named_their_protocol(tmp_path, monkeypatch):
    """Numerics-1 pre-training wrote no protocol and no version: it counts as pre-training's version
    1, resumed where that is this code's version, set aside with a warning where it is not."""
    job, run = jobs()["pretrain"]
    whole = []
    run(job, tmp_path / "whole", whole.append)

    def stop(metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(job, tmp_path / "old", stop)
    state = safe_load(tmp_path / "old" / LAST)
    for key in ("protocol", "numerics", "rng", "workers"):  # what numerics-1 pre-training did not write
        del state[key]
    atomic_save(state, tmp_path / "old" / LAST)
    monkeypatch.setitem(core.NUMERICS_VERSION, "pretrain", 1)
    resumed = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: it is the same run
        run(job, tmp_path / "old", resumed.append)
    assert [m["epoch"] for m in resumed] == [1] and resumed[0]["loss"] == whole[1]["loss"]

    atomic_save(state, tmp_path / "old" / LAST)
    monkeypatch.setitem(core.NUMERICS_VERSION, "pretrain", 2)
    again = []
    with pytest.warns(UserWarning, match="computed by numerics version 1, this code computes version 2"):
        run(job, tmp_path / "old", again.append)
    assert [m["epoch"] for m in again] == [0, 1] and again[1]["loss"] == whole[1]["loss"]


def test_a_checkpoint_of_another_engine_is_refused_in_one_line(tmp_path):
    all_jobs = jobs()
    job, run = all_jobs["linear_probe"]
    run(job, tmp_path)
    job, run = all_jobs["finetune"]
    with pytest.raises(ConfigError, match="holds a checkpoint of 'linear_probe', not of 'finetune'"):
        run(job, tmp_path)


def test_evaluations_crop_at_the_release_scale_and_pre_training_at_its_own(tmp_path, monkeypatch):
    """RandomResizedCrop's area fraction: (0.2, 1) in pre-training, (0.08, 1) in linear probing and
    fine-tuning (the release's evaluation transforms), for the batched and the per-image presets."""
    import core.augment as augment

    scales: dict[str, set] = {}
    current = {"protocol": ""}
    real = augment.sample_resized_crops

    def spy(*args, scale=augment.RESIZED_CROP_SCALE, **kwargs):
        scales.setdefault(current["protocol"], set()).add(tuple(scale))
        return real(*args, scale=scale, **kwargs)

    monkeypatch.setattr(augment, "sample_resized_crops", spy)
    for protocol, (job, run) in jobs().items():
        current["protocol"] = protocol
        run(job, tmp_path / protocol)
    assert scales == {"pretrain": {(0.2, 1.0)}, "linear_probe": {(0.08, 1.0)}, "finetune": {(0.08, 1.0)}}
    assert augment.get_pil_transform("crop_random", 16, augment.EVAL_CROP_SCALE).transforms[0].scale == (0.08, 1.0)
    assert augment.get_pil_transform("crop_random", 16).transforms[0].scale == (0.2, 1.0)
