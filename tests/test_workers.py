"""Several workers per trial: `resources: {workers: N}` from the study file to Ray Train workers.

Fast: validation, planning (stage ids, the resources column, the cost estimate), the trial's
resource request, the refusal wording. Slow: fine-tuning on 2 gloo processes equals 1 process with
twice the accumulation (engine level, torch.multiprocessing, no Ray); a 2-worker study through
`ablate run` with real local Ray and MLflow reports the same loss curves as the same study on one
worker with twice the accumulation; a study the cluster can never place is refused in one line
with exit status 2 before anything waits.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ablate.cli import app
from ablate.errors import StudyError
from ablate.execution import store
from ablate.execution.distributed import resource_shortfall
from ablate.execution.stages import run_stage
from ablate.planning.cost import estimate
from ablate.planning.plan import plan, stage_id
from ablate.spec.profiles import load_profile, parse_profile
from ablate.spec.study import Resources, load_study, parse_study
from tests.helpers import tiny_profile as profile_text

ROOT = Path(__file__).resolve().parents[1]
# Importing ray.train warns about Ray Data settings we never use.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

PROFILE = profile_text("contract-test", throughput=True)  # the runner tests' profile, with a time estimate
# 58 training images (64 less a 10% val carve): 3 micro-batches of 16 an epoch, so both studies
# take one optimizer step of 32 images an epoch (2 workers x 16, or 1 worker x 16 x accum 2).
TWO_WORKERS = """\
name: {name}
evaluations: [finetune]  # probing is single-worker (test_pretraining_and_finetuning_are_data_parallel_and_probing_is_not)
resources: {{workers: 2, cpu: 1}}
figures: [loss_curves]
"""
ONE_WORKER = """\
name: {name}
base:
  pretrain: {{accum_iter: 2}}
  finetune: {{accum_iter: 2}}
evaluations: [finetune]  # probing is single-worker (test_pretraining_and_finetuning_are_data_parallel_and_probing_is_not)
resources: {{workers: 1, cpu: 1}}
figures: []
"""


def tiny_profile():
    import yaml

    return parse_profile(yaml.safe_load(PROFILE), "tiny")


def make(**fields):
    return plan(parse_study({"name": "w", **fields}), tiny_profile())


# ---- the study file ----------------------------------------------------------------------------

def test_workers_default_to_one_and_describe_what_a_trial_takes():
    assert Resources().workers == 1
    assert Resources(workers=2, cpu=1).describe(2) == "2 workers x 1 CPU"
    assert Resources(workers=8, cpu=10, gpu=1).describe(8) == "8 workers x 10 CPU + 1 GPU"
    assert Resources(cpu=3, gpu=0.25).describe() == "3 CPU + 0.25 GPU"
    assert Resources(workers=2, gpu=2).per_worker() == {"CPU": 1.0, "GPU": 2.0}


@pytest.mark.parametrize("resources, message", [
    ({"workers": 0}, "resources.workers: Input should be greater than or equal to 1 (got 0)"),
    ({"workers": 2.5}, "resources.workers: Input should be a valid integer (got 2.5)"),
    ({"workers": 2, "gpu": 0.5}, "resources: with workers > 1 each worker needs whole GPUs (one NCCL rank per GPU), "
                                 "got gpu 0.5"),
    ({"workers": 2, "nodes": 2}, "resources.nodes: unknown key; allowed: workers, cpu, gpu"),
])
def test_bad_resources_are_one_line_naming_the_field(resources, message):
    with pytest.raises(StudyError) as info:
        parse_study({"name": "w", "resources": resources}, "w.yaml")
    assert str(info.value) == f"w.yaml: {message}"
    assert "\n" not in str(info.value)


def test_fractional_gpus_still_pack_single_worker_trials():
    assert Resources(cpu=3, gpu=0.25).gpu == 0.25


# ---- planning ----------------------------------------------------------------------------------

def test_pretraining_and_finetuning_are_data_parallel_and_probing_is_not():
    p = make(evaluations=["linear_probe", "finetune", "scratch"], resources={"workers": 2, "cpu": 1})
    workers = {s.kind: s.workers for s in p.stages.values()}
    assert workers == {"pretrain": 2, "linear_probe": 1, "finetune": 2, "scratch": 2}
    assert {p.trial_resources(sid) for sid in p.stages} == {"2 workers x 1 CPU", "1 CPU"}
    pre = next(s for s in p.stages.values() if s.kind == "pretrain")
    assert pre.flat_config()["resources.workers"] == 2  # logged with the stage's MLflow params


def test_the_worker_count_is_part_of_a_data_parallel_stage_identity():
    one, two = make(), make(resources={"workers": 2, "cpu": 1})
    pre1, pre2 = (next(s for s in p.stages.values() if s.kind == "pretrain") for p in (one, two))
    assert pre1.config == pre2.config and pre1.id != pre2.id  # 2 workers train with twice the batch per step
    assert pre1.id == stage_id("pretrain", pre1.config, None)  # one worker: ids as before workers existed
    assert pre2.id == stage_id("pretrain", pre2.config, None, workers=2)
    probe1, probe2 = (next(s for s in p.stages.values() if s.kind == "linear_probe") for p in (one, two))
    assert probe2.workers == 1 and probe1.id != probe2.id  # its parent differs
    # Per-worker resources are where a trial runs, not what it computes.
    assert list(make(resources={"workers": 2, "cpu": 3}).stages) == list(two.stages)


def test_cost_counts_the_workers():
    one, two = make(), make(resources={"workers": 2, "cpu": 1})
    for kind, speedup in (("pretrain", 2), ("finetune", 2), ("linear_probe", 1)):
        a, b = (next(s for s in p.stages.values() if s.kind == kind) for p in (one, two))
        assert estimate(b, one.profile).images == estimate(a, one.profile).images
        assert estimate(b, one.profile).seconds == pytest.approx(estimate(a, one.profile).seconds / speedup)


def test_plan_shows_each_trials_resources(tmp_path, monkeypatch):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tiny.yaml").write_text(PROFILE)
    (tmp_path / "w.yaml").write_text(TWO_WORKERS.format(name="w").replace("[finetune]", "[linear_probe, finetune]"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["plan", "w.yaml", "--profile", "tiny"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[2]: line for line in result.stdout.splitlines() if line.startswith("base ")}
    assert "2 workers x 1 CPU" in rows["pretrain"] and "2 workers x 1 CPU" in rows["finetune"]
    assert "1 CPU" in rows["linear_probe"] and "workers" not in rows["linear_probe"]
    assert "resources" in result.stdout.splitlines()[2]  # the header
    assert "pretrain, finetune on 2 workers x 1 CPU; linear_probe on 1 CPU" in result.stdout


def test_paper_profile_runs_a_node_of_eight_gpus_per_trial():
    study = load_study(ROOT / "studies" / "masking_ratio.yaml")
    p = plan(study, load_profile("paper", study.source))
    assert p.resources == Resources(workers=8, cpu=10, gpu=1)
    for stage in p.stages.values():
        recipe = stage.recipe
        global_batch = recipe["batch_size"] * stage.workers * recipe["accum_iter"]
        expected = {"pretrain": 4096, "linear_probe": 16384, "finetune": 1024}[stage.kind]
        assert global_batch == expected, stage.kind  # the paper's effective batches
        assert stage.workers == (1 if stage.kind == "linear_probe" else 8)
    result = CliRunner().invoke(app, ["plan", str(ROOT / "studies" / "masking_ratio.yaml"), "--profile", "paper"])
    assert result.exit_code == 0, result.output
    assert "8 workers x 10 CPU + 1 GPU" in result.stdout and "linear_probe on 10 CPU + 1 GPU" in result.stdout


def test_run_stage_refuses_a_data_parallel_stage_in_process(tmp_path):
    p = make(evaluations=[], resources={"workers": 2, "cpu": 1})
    (stage,) = p.stages.values()
    with pytest.raises(ValueError, match="data-parallel on 2 workers: run it with a `launch`"):
        run_stage(stage, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


# ---- what the trial asks Ray for -----------------------------------------------------------------

def test_a_data_parallel_trial_holds_next_to_nothing():
    from ablate.execution.ray_backend import DRIVER_BUNDLE, TrialResources

    p = make(resources={"workers": 2, "cpu": 1})
    request = TrialResources(list(p.stages.values()), p.resources)
    by_kind = {s.kind: request({"stage_id": s.id}) for s in p.stages.values()}
    assert by_kind["pretrain"].bundles == by_kind["finetune"].bundles == [DRIVER_BUNDLE]
    assert "CPU" not in DRIVER_BUNDLE and "GPU" not in DRIVER_BUNDLE
    assert by_kind["linear_probe"].bundles == [{"CPU": 1.0}]


def test_shortfall_wording_for_one_and_several_workers():
    assert resource_shortfall(1, {"CPU": 1, "GPU": 1}, [{"CPU": 2.0}]) == "trial needs 1 GPU; the cluster has 0 GPU"
    assert resource_shortfall(8, {"CPU": 1, "GPU": 1}, [{"CPU": 2.0}]) == \
        "trial needs 8 workers x 1 GPU; the cluster has 0 GPU"
    assert resource_shortfall(1, {"CPU": 3}, [{"CPU": 2.0}, {"CPU": 2.0}]) == \
        "trial needs 3 CPU on one node; no node of the cluster has that"


# ---- fine-tuning data-parallel, engine level (2 gloo processes, no Ray) --------------------------

def finetune_job(accum: int, **fields):
    from core.config import DataConfig, ModelConfig
    from core.eval_config import FinetuneConfig, FinetuneJob

    recipe = dict(epochs=2, warmup_epochs=1, batch_size=8, accum_iter=accum, blr=5e-2, mixup=0, cutmix=0,
                  rand_augment=None, reprob=0, drop_path=0, augmentation="crop_random", device="cpu", threads=1)
    return FinetuneJob(model=ModelConfig(variant="vit_test"),
                       data=DataConfig(dataset="synthetic", synthetic_size=128, val_fraction=0.1, num_workers=0),
                       finetune=FinetuneConfig(**(recipe | fields)))


CASES = {"end_to_end": {}, "batchnorm_head": {"tune_blocks": 0}}  # fine-tune field overrides per case
# Top-1 points between one and two workers for the BatchNorm head, whose running statistics are the
# ranks' mean rather than one pass's: two of the 32 test images (synthetic_size 128 / 4) may flip.
PARTIAL_TOLERANCE = 2 * 100 / 32


def _finetune_rank(rank: int, world: int, init: str, root: str, reported) -> None:
    """One rank of a data-parallel fine-tune of every case (spawned: module level, so the child imports it)."""
    import torch.distributed as dist

    from core.finetune import finetune

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        for case, fields in CASES.items():
            seen: list[dict] = []
            finetune(finetune_job(1, **fields), None, Path(root) / case, seen.append)
            assert rank == 0 or seen == []  # only rank 0 reports
            if rank == 0:
                reported.put((case, seen))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> tuple[Path, dict[str, list[dict]], dict[str, list[dict]]]:
    """Every case on 2 gloo processes x accum 1 and in process x accum 2: (folder, reports of each)."""
    import torch.multiprocessing as mp

    from core.finetune import finetune

    root = tmp_path_factory.mktemp("finetune")
    context = mp.get_context("spawn")
    reported = context.Queue()
    init = f"file://{root / 'rendezvous'}"
    ranks = [context.Process(target=_finetune_rank, args=(r, 2, init, str(root / "w2"), reported)) for r in range(2)]
    for process in ranks:
        process.start()
    two = dict(reported.get(timeout=180) for _ in CASES)
    for process in ranks:
        process.join(timeout=60)
        assert process.exitcode == 0
    threads = torch.get_num_threads()
    one: dict[str, list[dict]] = {}
    try:
        for case, fields in CASES.items():
            one[case] = []
            finetune(finetune_job(2, **fields), None, root / "w1" / case, one[case].append)
    finally:
        torch.set_num_threads(threads)
    return root, two, one


@pytest.mark.slow
def test_finetune_on_two_workers_equals_one_worker_with_twice_the_accumulation(finetuned):
    from core.checkpoint import LAST, load_latest, safe_load

    root, two, one = finetuned
    two, one = two["end_to_end"], one["end_to_end"]
    assert [m["epoch"] for m in two] == [0, 1]
    for key in ("train_loss", "lr", "ft_val_top1"):  # evaluation is sharded, counts summed
        assert [m[key] for m in two] == pytest.approx([m[key] for m in one], rel=1e-6), key
    for key in ("ft_top1", "ft_top5"):  # the test split, read at the last epoch only
        assert [key in m for m in two] == [False, True]
        assert two[-1][key] == pytest.approx(one[-1][key], rel=1e-6), key
    a, b = load_latest(root / "w2" / "end_to_end")["model"], load_latest(root / "w1" / "end_to_end")["model"]
    assert a.keys() == b.keys() and not any(k.startswith("module.") for k in a)  # rank 0 saved the bare model
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    state = safe_load(root / "w2" / "end_to_end" / LAST)
    assert state["workers"] == 2 and state["effective_batch"] == 16


@pytest.mark.slow
def test_partial_finetune_of_a_batchnorm_head_trains_the_same_on_two_workers(finetuned):
    """tune_blocks 0: the BatchNorm head sees the same micro-batches either way (same losses); its
    running statistics are the ranks' mean, so evaluation may differ slightly from one worker."""
    _, two, one = finetuned
    two, one = two["batchnorm_head"], one["batchnorm_head"]
    assert [m["train_loss"] for m in two] == pytest.approx([m["train_loss"] for m in one], rel=1e-6)
    assert two[-1]["ft_top1"] == pytest.approx(one[-1]["ft_top1"], abs=PARTIAL_TOLERANCE)


# ---- a study through `ablate run`, real local Ray and MLflow -------------------------------------

@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workers")
    (root / "profiles").mkdir()
    (root / "profiles" / "tiny.yaml").write_text(PROFILE)
    return root


def run(project: Path, name: str, text: str, *extra: str):
    study = project / f"{name}.yaml"
    study.write_text(text.format(name=name))
    result = CliRunner().invoke(app, ["run", str(study), "--profile", "tiny", "--out", str(project / "runs"), *extra])
    assert "Traceback" not in result.output, result.output
    return result, plan(load_study(study), load_profile("tiny", study))


def children(project: Path, name: str) -> dict[str, object]:
    """Stage id -> its MLflow child run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'runs' / name / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert len([r for r in runs if r.data.tags["role"] == "study"]) == 1
    stages = [r for r in runs if r.data.tags["role"] == "stage"]
    assert len({r.data.tags["stage_id"] for r in stages}) == len(stages)  # one run per stage
    return {r.data.tags["stage_id"]: (client, r) for r in stages}


def curve(client, run, key: str) -> list[float]:
    """The metric per epoch (the final result logs the last epoch's value once more)."""
    by_step = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
    return [by_step[step] for step in sorted(by_step)]


@pytest.fixture(scope="module")
def two_studies(ray_session, project):
    started = time.perf_counter()
    two = run(project, "two_workers", TWO_WORKERS)
    middle = time.perf_counter()
    one = run(project, "one_worker", ONE_WORKER, "--backend", "serial")  # the reference: one worker, in process
    print(f"2-worker study {middle - started:.1f} s, 1-worker study {time.perf_counter() - middle:.1f} s")
    return two, one


@pytest.mark.slow
def test_a_two_worker_study_runs_end_to_end_and_matches_one_worker_with_twice_the_accumulation(project, two_studies):
    (result, p2), (result1, p1) = two_studies
    assert result.exit_code == 0, result.output
    assert result1.exit_code == 0, result1.output
    out = project / "runs"
    assert all(store.state(out, sid) == store.DONE for sid in [*p2.stages, *p1.stages])
    runs2, runs1 = children(project, "two_workers"), children(project, "one_worker")
    assert sorted(runs2) == sorted(p2.stages) and sorted(runs1) == sorted(p1.stages)

    def pair(kind: str):
        (a,) = (s for s in p2.stages.values() if s.kind == kind)
        (b,) = (s for s in p1.stages.values() if s.kind == kind)
        return a, b

    pre2, pre1 = pair("pretrain")
    ft2, ft1 = pair("finetune")
    assert (pre2.workers, ft2.workers) == (2, 2)
    assert json.loads((store.stage_dir(out, pre2.id) / "stage.json").read_text())["workers"] == 2
    # The loss curves as MLflow holds them: rank 0's per-epoch metrics went through tune.report.
    for (a, b), key in (((pre2, pre1), "pretrain_loss"), ((ft2, ft1), "train_loss")):
        client2, run2 = runs2[a.id]
        client1, run1 = runs1[b.id]
        assert len(curve(client2, run2, key)) == a.epochs
        assert curve(client2, run2, key) == pytest.approx(curve(client1, run1, key), rel=1e-5), key
        assert curve(client2, run2, "lr") == pytest.approx(curve(client1, run1, "lr"), rel=1e-9)
        assert run2.data.params["resources.workers"] == "2" and "resources.workers" not in run1.data.params
    result2 = store.result(out, pre2.id)
    assert result2["workers"] == 2 and store.result(out, pre1.id)["workers"] == 1
    assert store.result(out, ft2.id)["ft_top1"] == pytest.approx(store.result(out, ft1.id)["ft_top1"])
    from core.checkpoint import load_encoder

    a, b = load_encoder(store.stage_dir(out, pre2.id)), load_encoder(store.stage_dir(out, pre1.id))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_wave_with_data_parallel_stages_starts_only_what_the_cluster_places(ray_session):
    from ablate.execution.ray_backend import concurrent_trials

    p = make(axes={"model.mask_ratio": [0.5, 0.75]}, resources={"workers": 2, "cpu": 1})
    pretrains = [s for s in p.stages.values() if s.kind == "pretrain"]
    evaluations = [s for s in p.stages.values() if s.kind != "pretrain"]
    assert concurrent_trials(pretrains, p.resources, None) == 1  # 2 CPUs: one 2-worker trial at a time
    assert concurrent_trials(evaluations, p.resources, None) == 3  # ... beside two 1-CPU probes
    assert concurrent_trials(pretrains, p.resources, 5) == 5  # --max-concurrent decides
    single = make(axes={"model.mask_ratio": [0.5, 0.75]})
    assert concurrent_trials(list(single.stages.values()), single.resources, None) is None  # Tune counts these


@pytest.mark.slow
@pytest.mark.parametrize("name, resources, line", [
    ("eight_gpus", "{workers: 8, cpu: 1, gpu: 1}", "trial needs 8 workers x 1 GPU; the cluster has 0 GPU"),
    ("three_cpus", "{workers: 3, cpu: 1}", "trial needs 3 workers x 1 CPU; the cluster has 2 CPU"),
    ("one_gpu", "{cpu: 1, gpu: 1}", "trial needs 1 GPU; the cluster has 0 GPU"),
])
def test_a_trial_the_cluster_can_never_place_is_refused_at_once(ray_session, project, name, resources, line):
    text = "name: {name}\nevaluations: [linear_probe]\nresources: " + resources.replace("{", "{{").replace("}", "}}")
    started = time.perf_counter()
    result, p = run(project, name, text)
    assert time.perf_counter() - started < 30  # nothing waits for resources that never come
    assert result.exit_code == 2, result.output
    assert result.stderr == f"cannot run {name}: {line}\n"  # one line
    assert not any(store.stage_dir(project / "runs", sid).exists() for sid in p.stages)
    assert not store.study_dir(project / "runs", name).exists()  # no study folder, no MLflow database or run
