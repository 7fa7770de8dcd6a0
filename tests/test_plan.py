"""plan(): arm expansion, stage identity and sharing, purity."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ablate.planning.cost import estimate, mae_train_flops
from ablate.planning.plan import canonical_json, plan, stage_id
from ablate.spec.profiles import parse_profile
from ablate.errors import StudyError
from ablate.spec.study import parse_study
from core.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
PROFILE = parse_profile({
    "description": "tiny",
    "base": {"model": {"variant": "vit_test"}, "data": {"dataset": "synthetic", "synthetic_size": 64},
             "pretrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 16},
             "linear_probe": {"epochs": 1, "warmup_epochs": 0, "batch_size": 16},
             "finetune": {"epochs": 1, "warmup_epochs": 0, "batch_size": 16}},
    "throughput": {"vit_test": 1000}}, "tiny")


def make(**fields):
    return plan(parse_study({"name": "s", **fields}), PROFILE)


def test_grid_is_the_product_of_axes_named_from_values():
    p = make(axes={"model.mask_ratio": [0.5, 0.75], "model.decoder_depth": [1, 2]}, evaluations=[])
    assert p.arms == ["mask_ratio=0.5,decoder_depth=1", "mask_ratio=0.5,decoder_depth=2",
                      "mask_ratio=0.75,decoder_depth=1", "mask_ratio=0.75,decoder_depth=2"]
    run = p.runs[1]
    assert run.axes == {"model.mask_ratio": 0.5, "model.decoder_depth": 2}
    cfg = p.stages[run.stages["pretrain"]].config
    assert cfg["model"]["mask_ratio"] == 0.5 and cfg["model"]["decoder_depth"] == 2


def test_zip_moves_keys_together():
    p = make(zip={"model.mask_sampling": ["random", "block", "grid"], "model.mask_ratio": [0.75, 0.5, 0.75]},
             evaluations=[])
    assert p.arms == ["mask_sampling=random,mask_ratio=0.75", "mask_sampling=block,mask_ratio=0.5",
                      "mask_sampling=grid,mask_ratio=0.75"]


def test_named_arms_alone_and_with_axes():
    alone = make(arms={"small": {"model": {"decoder_depth": 1}}, "big": {"model.decoder_depth": 4}}, evaluations=[])
    assert alone.arms == ["small", "big"]
    both = make(arms={"small": {"model": {"decoder_depth": 1}}, "big": {"model.decoder_depth": 4}},
                axes={"model.mask_ratio": [0.5, 0.75]}, evaluations=[])
    assert both.arms == ["small,mask_ratio=0.5", "small,mask_ratio=0.75", "big,mask_ratio=0.5", "big,mask_ratio=0.75"]
    assert both.runs[2].axes == {"model.mask_ratio": 0.5, "model.decoder_depth": 4}


def test_no_axes_is_one_base_arm_and_seeds_repeat_it():
    p = make(seeds=[0, 1, 2], evaluations=["linear_probe"])
    assert p.arms == ["base"] and [r.seed for r in p.runs] == [0, 1, 2]
    pretrains = {r.stages["pretrain"] for r in p.runs}
    assert len(pretrains) == 3  # a seed is a different config
    for r in p.runs:
        cfg = p.stages[r.stages["linear_probe"]].config
        assert cfg["probe"]["seed"] == r.seed and p.stages[r.stages["pretrain"]].config["pretrain"]["seed"] == r.seed


def test_merge_order_profile_then_study_base_then_arm():
    p = make(base={"pretrain": {"epochs": 3}, "model": {"mask_ratio": 0.6}},
             arms={"a": {"pretrain.epochs": 5}, "b": {}}, evaluations=[])
    epochs = {r.arm: p.stages[r.stages["pretrain"]].config["pretrain"]["epochs"] for r in p.runs}
    assert epochs == {"a": 5, "b": 3}
    assert p.stages[p.runs[1].stages["pretrain"]].config["model"]["mask_ratio"] == 0.6
    assert p.stages[p.runs[1].stages["pretrain"]].config["pretrain"]["batch_size"] == 16  # from the profile


def test_same_config_same_id_and_ids_are_config_hashes():
    a, b = make(axes={"model.mask_ratio": [0.5, 0.75]}), make(axes={"model.mask_ratio": [0.5, 0.75]})
    assert list(a.stages) == list(b.stages)
    stage = a.stages[a.runs[0].stages["pretrain"]]
    assert stage.id == stage_id("pretrain", stage.config, None)
    assert len(stage.id.split("-")[1]) == 12
    child = a.stages[a.runs[0].stages["linear_probe"]]
    assert child.parent == stage.id and child.id == stage_id("linear_probe", child.config, stage.id)
    json.loads(canonical_json(child.config))


def test_eval_fields_do_not_change_the_pretrain_id_and_shared_pretrain_runs_once():
    p = make(axes={"finetune.blr": [1e-4, 1e-3], "linear_probe.epochs": [1, 2]})
    assert len({r.stages["pretrain"] for r in p.runs}) == 1
    assert sum(s.kind == "pretrain" for s in p.stages.values()) == 1
    assert len({r.stages["finetune"] for r in p.runs}) == 2
    assert len({r.stages["linear_probe"] for r in p.runs}) == 2
    # 1 pretrain + 2 probes + 2 fine-tunes, each once
    assert len(p.stages) == 5


def test_knobs_of_a_target_an_arm_does_not_use_do_not_split_its_stages():
    """Table 1d's study sets pca_components and codebook_size for every arm: its pixel arm shares
    the stages of the same pixel arm elsewhere, while the arms that use them keep their values."""
    p = make(axes={"model.target": ["pixel", "pca", "token"]}, base={"model": {"pca_components": 12,
                                                                             "codebook_size": 256}})
    plain = make(base={"model": {"target": "pixel"}})
    models = {run.arm: p.stages[run.stages["pretrain"]].config["model"] for run in p.runs}
    assert models["target=pixel"] == plain.stages[plain.runs[0].stages["pretrain"]].config["model"]
    assert (models["target=pca"]["pca_components"], models["target=pca"]["codebook_size"]) == (12, 512)
    assert (models["target=token"]["pca_components"], models["target=token"]["codebook_size"]) == (96, 256)
    pixel = next(run for run in p.runs if run.arm == "target=pixel")
    assert pixel.stages["pretrain"] == plain.runs[0].stages["pretrain"]
    with pytest.raises(ValueError, match="codebook_size"):  # still checked where it is used
        ModelConfig(variant="vit_test", target="token", codebook_size=1)


def test_pretrain_change_changes_every_dependant():
    a = make(base={"pretrain": {"epochs": 1}})
    b = make(base={"pretrain": {"epochs": 2}})
    for name in ("pretrain", "linear_probe", "finetune"):
        assert a.runs[0].stages[name] != b.runs[0].stages[name]


def test_scratch_needs_no_pretraining_and_is_shared_across_mask_ratios():
    p = make(axes={"model.mask_ratio": [0.5, 0.75]}, evaluations=["finetune", "scratch"])
    scratch = {r.stages["scratch"] for r in p.runs}
    assert len(scratch) == 1
    stage = p.stages[scratch.pop()]
    assert stage.parent is None and stage.config["finetune"]["init"] == "random"
    assert stage.config["model"]["mask_ratio"] == ModelConfig(variant="vit_test").mask_ratio


def test_partial_finetune_blocks_become_arms_sharing_one_pretraining():
    p = make(evaluations=["linear_probe", "partial_finetune"], partial_finetune={"blocks": [0, 0.5, 1, "all"]})
    assert p.arms == ["tune_blocks=0", "tune_blocks=0.5", "tune_blocks=1", "tune_blocks=all"]
    assert [r.axes["finetune.tune_blocks"] for r in p.runs] == [0, 0.5, 1, None]
    assert len({r.stages["pretrain"] for r in p.runs}) == 1
    assert len({r.stages["linear_probe"] for r in p.runs}) == 1
    kinds = [next(k for k in r.stages if "finetune" in k) for r in p.runs]
    assert kinds == ["partial_finetune", "partial_finetune", "partial_finetune", "finetune"]


def test_partial_all_is_the_end_to_end_finetune():
    p = make(evaluations=["finetune", "partial_finetune"], partial_finetune={"blocks": [1]})
    assert p.arms == ["tune_blocks=1", "tune_blocks=all"]
    assert sum(s.kind == "finetune" for s in p.stages.values()) == 1


def test_a_search_is_a_task_per_arm_and_seed_whose_values_hash_to_stages():
    space = {"finetune.blr": {"low": 1e-4, "high": 1e-2, "log": True}}
    p = make(evaluations=["finetune"], seeds=[0, 1], search={"space": space, "budget": 3})
    assert [s.kind for s in p.stages.values()] == ["pretrain", "pretrain"]  # candidates are proposed while it runs
    tasks = [p.searches[r.searches["finetune"]] for r in p.runs]
    assert [t.name for t in tasks] == ["base/seed0/finetune", "base/seed1/finetune"] and len(p.searches) == 2
    task = tasks[0]
    a, b = task.stage({"finetune.blr": 1e-3}), task.stage({"finetune.blr": 1e-3})
    assert a == b and a.parent == p.runs[0].stages["pretrain"] and a.recipe["blr"] == 1e-3
    assert a.id == stage_id("finetune", a.config, a.parent)  # a candidate is a stage like a planned one
    assert task.stage({"finetune.blr": 2e-3}).id != a.id and task.values(a) == {"finetune.blr": 1e-3}
    # growing the plan: the candidate joins its arm run (once) and the plan's stages
    assert p.add_candidate(task.id, [a]) and p.add_candidate(task.id, [b])
    assert p.runs[0].candidates == {"finetune": (a.id,)} and p.runs[1].candidates == {}
    assert p.stages[a.id] == a and p.search_of(a.id) is task and [n for _, n in p.users(a.id)] == ["finetune#1"]
    with pytest.raises(StudyError, match="search.*blr"):
        task.stage({"finetune.blr": -1.0})


def test_a_grid_search_is_evenly_spaced_and_must_fit_its_budget():
    spec = parse_study({"name": "s", "evaluations": ["finetune"], "search": {
        "space": {"finetune.blr": {"low": 1e-4, "high": 1e-2, "log": True}}, "budget": 3, "sampler": "grid"}}).search
    assert spec.grid() == [{"finetune.blr": 1e-4}, {"finetune.blr": 1e-3}, {"finetune.blr": 1e-2}] and spec.total == 3
    two = {"finetune.blr": {"low": 1e-4, "high": 1e-2, "log": True}, "finetune.layer_decay": {"choices": [0.65, 0.75]}}
    spec = parse_study({"name": "s", "evaluations": ["finetune"],
                        "search": {"space": two, "budget": 5, "sampler": "grid"}}).search
    assert len(spec.grid()) == 4 and {c["finetune.layer_decay"] for c in spec.grid()} == {0.65, 0.75}
    with pytest.raises(StudyError, match="search.budget"):
        parse_study({"name": "s", "evaluations": ["finetune"], "search": {"space": two, "budget": 3, "sampler": "grid"}})
    # the one-field form of earlier versions still reads
    old = parse_study({"name": "s", "evaluations": ["finetune"], "search": {
        "param": "finetune.blr", "low": 1e-4, "high": 1e-2, "log": True, "trials": 5}}).search
    assert old.params == ["finetune.blr"] and old.budget == 5 and old.space["finetune.blr"].log


def test_users_of_a_shared_stage():
    p = make(axes={"finetune.blr": [1e-4, 1e-3]})
    pre = p.runs[0].stages["pretrain"]
    assert [(r.arm, name) for r, name in p.users(pre)] == [("blr=0.0001", "pretrain"), ("blr=0.001", "pretrain")]
    assert len(p.children(pre)) == 3


def test_cost_estimate_scales_with_visible_tokens():
    p = make(axes={"model.mask_ratio": [0.1, 0.9]})
    low, high = (p.stages[r.stages["pretrain"]] for r in p.runs)
    assert estimate(low, PROFILE).images == estimate(high, PROFILE).images > 0
    assert estimate(low, PROFILE).seconds > estimate(high, PROFILE).seconds > 0
    assert mae_train_flops(low.config["model"]) > mae_train_flops(high.config["model"])


def test_plan_is_pure():
    """Planning imports no Ray, MLflow or torch, and writes nothing."""
    code = (
        "import sys, os\n"
        "from ablate.spec.study import load_study\n"
        "from ablate.spec.profiles import load_profile\n"
        "from ablate.planning.plan import plan\n"
        "s = load_study('studies/masking_ratio.yaml')\n"
        "p = plan(s, load_profile('laptop', s.source))\n"
        "bad = [m for m in ('ray', 'mlflow', 'torch') if m in sys.modules]\n"
        "print('LOADED', bad)\n")
    before = sorted(p.name for p in ROOT.iterdir())
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "LOADED []" in out.stdout, out.stdout + out.stderr
    assert sorted(p.name for p in ROOT.iterdir()) == before


@pytest.mark.parametrize("key", ["model.mask_ratio", "model.decoder_depth", "data.augmentation"])
def test_axis_columns_keep_full_dotted_keys(key):
    values = {"model.mask_ratio": [0.5, 0.75], "model.decoder_depth": [1, 2],
              "data.augmentation": ["none", "crop_random"]}[key]
    p = make(axes={key: values}, evaluations=[])
    assert p.axis_keys == [key] and [r.axes[key] for r in p.runs] == values


def test_min_steps_raises_the_epochs_of_a_small_training_split():
    """64 synthetic images, 10% carved for validation: 58 to train on, 3 steps of 16 per epoch.
    min_steps 10 needs 4 epochs; the stage's config (and so its identity) holds the 4, a recipe
    that already reaches its minimum keeps its epochs, and 0 pre-training epochs stay 0."""
    p = make(base={"data": {"val_fraction": 0.1}, "finetune": {"min_steps": 10}, "linear_probe": {"min_steps": 2}},
             evaluations=["linear_probe", "finetune"])
    (run,) = p.runs
    assert p.stages[run.stages["finetune"]].config["finetune"]["epochs"] == 4
    assert p.stages[run.stages["finetune"]].config["finetune"]["warmup_epochs"] == 0  # 0 of 1 -> 0 of 4
    warm = make(base={"data": {"val_fraction": 0.1}, "finetune": {"min_steps": 10, "warmup_epochs": 0.5}},
                evaluations=["finetune"])
    assert warm.stages[warm.runs[0].stages["finetune"]].config["finetune"]["warmup_epochs"] == 2.0  # a half share
    assert p.stages[run.stages["linear_probe"]].config["probe"]["epochs"] == 1
    plain = make(base={"data": {"val_fraction": 0.1}}, evaluations=["finetune"])
    assert plain.runs[0].stages["finetune"] != run.stages["finetune"]
    doubled = make(base={"data": {"val_fraction": 0.1}, "finetune": {"min_steps": 10, "batch_size": 8}},
                   evaluations=["finetune"])  # 7 steps per epoch: 2 epochs
    assert doubled.stages[doubled.runs[0].stages["finetune"]].config["finetune"]["epochs"] == 2
    none = make(base={"pretrain": {"epochs": 0, "min_steps": 100}}, evaluations=[])
    assert none.stages[none.runs[0].stages["pretrain"]].config["pretrain"]["epochs"] == 0
