"""The shipped studies, end to end, as a user runs them.

The quickstart on real Fashion-MNIST: `ablate run` on the test run's local Ray (`ablate run` from
a shell, a subprocess with its own Ray, is tests/test_cluster.py's), on the laptop profile cut to a
smoke size (SMOKE: an eighth of its images, half its pre-training,
a tenth of its fine-tune steps; 46 s instead of 4.5 minutes here); every stage done, learning really
happened, the figures and the report written, MLflow holding one parent and one child run per
stage, all FINISHED. The laptop profile's own numbers (the README's) are benchmarks/bench_recipes.py's
check, and the README's quickstart command is run on a clean clone before each release.

Then quickstart, scratch_vs_mae and partial_finetune on the test-sized model and synthetic data
(serial backend, in process) into one output root: their MAE arm is the quickstart's 75% arm, so
the shared pre-training, probe and fine-tune are reused, not rerun, and each study adds only its
own stages, tracked and drawn. Whether these studies' comparisons point the paper's way on real
data (MAE beats scratch, tuning more blocks helps, the recipes hold on a second dataset) is
benchmarks/bench_recipes.py's job: 11 minutes of compute, too much for this suite.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ablate.planning.plan import plan
from ablate.spec.profiles import load_profile
from ablate.spec.study import load_study

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    if not FMNIST.is_file():
        pytest.skip(f"real Fashion-MNIST not installed ({FMNIST}); scripts/setup.sh installs it")
    return tmp_path_factory.mktemp("shipped") / "runs"


# The laptop profile (studies/profiles/laptop.yaml) at a smoke size: the same model, precision and
# recipes, on 512 training images and 1000 test images, 3 pre-training epochs and 96 fine-tune
# steps. Measured (Intel Xeon, 2 cores): 46 s; lin_top1 60.9 / 61.0, ft_top1 40.3 / 42.1 at mask
# 0.5 / 0.75; pre-training loss 2.08 -> 1.00 / 2.05 -> 1.03.
SMOKE = """\
description: "the laptop profile at a smoke size: 512 training images, 3 pre-training epochs, 96 fine-tune steps"
base:
  model: {variant: vit_fmnist}
  data: {dataset: fashion_mnist, train_limit: 512, test_limit: 1000, val_fraction: 0.02, num_workers: 0}
  pretrain: {epochs: 3, warmup_epochs: 0.5, batch_size: 64, blr: 1.5e-3, precision: bf16, device: cpu, threads: 1}
  linear_probe: {epochs: 50, warmup_epochs: 5, batch_size: 256, blr: 50.0, augmentation: none,
                 cache_features: true, precision: bf16, device: cpu, threads: 1}
  finetune: {epochs: 3, min_steps: 96, warmup_epochs: 1, batch_size: 32, blr: 1.0e-2, layer_decay: 0.75,
             drop_path: 0.0, mixup: 0.0, cutmix: 0.0, rand_augment: null, reprob: 0.0, augmentation: none,
             precision: bf16, device: cpu, threads: 1}
resources: {cpu: 1, gpu: 0}
throughput: {vit_fmnist: 650}
"""


def ablate_run(study: str, out: Path, *extra: str) -> str:
    """`ablate run` at one seed, in this process on the test run's Ray (a subprocess with its own
    Ray, as from a shell, is tests/test_cluster.py's): the shipped studies default to 3 seeds (the
    quickstart to 1); seeds are tested on planted results and by the runner's --seeds test."""
    from typer.testing import CliRunner

    from ablate.cli import app

    done = CliRunner().invoke(app, ["run", str(ROOT / "studies" / study), "--out", str(out), "--seeds", "1", *extra])
    assert done.exit_code == 0, done.output[-3000:]
    assert "Traceback" not in done.output
    return done.output


def stage_ids(study: str, profile: str = "laptop", out: Path | None = None) -> list[str]:
    """The study's stages at one seed; given `out`, with the candidates its searches proposed there."""
    from ablate.execution.search import found

    s = load_study(ROOT / "studies" / study)
    p = plan(s.with_seeds(1), load_profile(profile, s.source))
    return list((found(p, out) if out is not None else p).stages)


def check_tracking(out: Path, name: str, stages: list[str]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / name / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    children = [r for r in runs if r.data.tags.get("role") == "stage"]
    assert len(parents) == 1 and len(children) + 1 == len(runs)
    assert sorted(r.data.tags["stage_id"] for r in children) == sorted(stages)
    # every run FINISHED, but a search's pruned candidates: KILLED and tagged so
    assert all(r.info.status == "FINISHED" or r.data.tags.get("search.state") == "PRUNED" for r in runs)


def check_report(out: Path, name: str, figures: list[str], least_bytes: int = 10_000) -> None:
    report = out / name / "report"
    assert (report / "report.html").stat().st_size > 1000
    for figure in figures:
        assert (report / "figures" / f"{figure}.png").stat().st_size > least_bytes, figure


def test_quickstart(out, ray_session):
    smoke = out.parent / "smoke.yaml"
    smoke.write_text(SMOKE)
    text = ablate_run("quickstart.yaml", out, "--profile", str(smoke))
    assert "6/6 stages done" in text and "profile smoke:" in text
    results = pd.read_csv(out / "quickstart" / "results.csv").set_index("arm")
    assert (results["status"] == "done").all()
    # Real learning on 10 classes (chance: 10%): probe and fine-tune well above it (measured 61 and
    # 40-42), and the reconstruction loss falls (2.08 -> 1.00) rather than sitting at its start.
    assert (results["lin_top1"] > 50).all() and (results["ft_top1"] > 30).all(), results
    history = pd.read_csv(out / "quickstart" / "history.csv")
    loss = history[(history["stage"] == "pretrain") & (history["metric"] == "loss")].sort_values("epoch")
    for arm, curve in loss.groupby("arm"):
        assert curve["value"].iloc[-1] < 0.8 * curve["value"].iloc[0], (arm, list(curve["value"]))
    check_tracking(out, "quickstart", stage_ids("quickstart.yaml", str(smoke)))
    check_report(out, "quickstart", ["fig5_mask_ratio", "loss_curves", "eval_curves"])


def test_the_studies_share_the_quickstart_arm_and_add_only_their_own_stages(tmp_path):
    from typer.testing import CliRunner

    from ablate.cli import app
    from tests.helpers import PROFILE

    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(PROFILE)
    out = tmp_path / "runs"

    def run(study: str) -> str:
        result = CliRunner().invoke(app, ["run", str(ROOT / "studies" / study), "--profile", str(tiny), "--out",
                                          str(out), "--seeds", "1", "--backend", "serial"])
        assert result.exit_code == 0, result.output
        return result.output

    ids = {study: stage_ids(study, str(tiny)) for study in ("quickstart.yaml", "scratch_vs_mae.yaml",
                                                            "partial_finetune.yaml")}
    assert "6/6 stages done" in run("quickstart.yaml")
    earlier = ids["quickstart.yaml"]
    for study, figures in (("scratch_vs_mae.yaml", ["table3_scratch", "eval_curves"]),
                           ("partial_finetune.yaml", ["fig9_partial_finetune"])):
        shared = [s for s in ids[study] if s in earlier]
        # the MAE pre-training, its linear probe and its fine-tune of all blocks; scratch_vs_mae
        # searches its fine-tunes' learning rate instead (candidates proposed while it runs)
        searched = study == "scratch_vs_mae.yaml"
        assert len(shared) == (2 if searched else 3)
        before = {s: (out / "stages" / s / "result.json").read_text() for s in shared}
        text = run(study)
        grown = stage_ids(study, str(tiny), out)
        assert len(grown) > len(ids[study]) if searched else grown == ids[study]
        assert f"{len(shared)} already done" in text and f"{len(grown)}/{len(grown)} stages done" in text
        assert {s: (out / "stages" / s / "result.json").read_text() for s in shared} == before
        name = study.removesuffix(".yaml")
        check_tracking(out, name, grown)
        check_report(out, name, figures, least_bytes=1000)
        earlier = [*earlier, *grown]
    results = pd.read_csv(out / "scratch_vs_mae" / "results.csv").set_index("arm")
    assert set(results.index) == {"mae", "random_encoder"} and results["scratch_top1"].notna().all()
    assert results["chosen.finetune.blr"].notna().all() and (results["search_candidates"] == 6).all()
    # each arm's fine-tune searched for itself; the scratch baseline one search, the same for both arms
    assert results["scratch.chosen.finetune.blr"].nunique() == 1 and (results["scratch.search_candidates"] == 6).all()
    blocks = pd.read_csv(out / "partial_finetune" / "results.csv")["finetune.tune_blocks"]
    assert blocks.fillna(-1).nunique() == 5  # 0, 0.5, 1, 2 and all
    assert json.loads((out / "partial_finetune" / "run.json").read_text())["profile"] == "tiny"
