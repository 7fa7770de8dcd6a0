"""What several test modules share: the tiny profiles, the corpus of bad study files, running
`ablate run` in process, and reading back the stage store and MLflow. Not a test module: test
modules import from here, never from each other."""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ablate.cli import app
from ablate.execution import store
from ablate.planning.plan import plan
from ablate.spec.profiles import load_profile
from ablate.spec.study import load_study

def tiny_profile(what: str, *, pretrain_epochs: int = 2, probe_epochs: int = 1, finetune: bool = True,
                 threads: bool = True, resources: bool = True, throughput: bool = False) -> str:
    """A profile of the test-sized model on 64 synthetic images, one or two epochs a stage: the
    one the test modules share, varied where a test needs it (more epochs to stop one mid-way,
    a time estimate for `ablate plan`)."""
    one = ", threads: 1" if threads else ""
    lines = [f"description: tiny {what} profile", "base:", "  model: {variant: vit_test}",
             "  data: {dataset: synthetic, synthetic_size: 64, num_workers: 0}",
             f"  pretrain: {{epochs: {pretrain_epochs}, warmup_epochs: 0, batch_size: 16, device: cpu{one}}}",
             f"  linear_probe: {{epochs: {probe_epochs}, warmup_epochs: 0, batch_size: 16, augmentation: none, "
             f"device: cpu{one}}}"]
    if finetune:
        lines.append("  finetune: {epochs: 1, warmup_epochs: 0, batch_size: 16, mixup: 0, cutmix: 0, rand_augment: null, "
                     f"reprob: 0, drop_path: 0, device: cpu{one}}}")
    if resources:
        lines.append("resources: {cpu: 1, gpu: 0}")
    if throughput:
        lines.append("throughput: {vit_test: 1000}")
    return "\n".join(lines) + "\n"


# The backend contract tests' profile (tests/test_runner.py), also the fault, worker and shipped-study tests'.
PROFILE = tiny_profile("contract-test")
# The study-file tests' profile (tests/test_study.py, tests/test_bad_input.py): one epoch of everything.
TINY_PROFILE = tiny_profile("test", pretrain_epochs=1, threads=False, resources=False)


BAD = {
    # name: (file text, what the one line must contain)
    "unknown top-level key": ("name: s\nevaluatons: [finetune]\n", ["evaluatons", "unknown key", "allowed:"]),
    "unknown config key": ("name: s\nbase:\n  model: {mask_rate: 0.5}\n", ["base.model.mask_rate", "unknown key"]),
    "wrong type": ("name: s\nbase:\n  pretrain: {epochs: many}\n", ["base.pretrain.epochs", "integer"]),
    "mask ratio out of range": ("name: s\nbase:\n  model: {mask_ratio: 1.5}\n", ["base.model.mask_ratio", "less than 1"]),
    "axis value out of range": ("name: s\naxes:\n  model.mask_ratio: [0.5, 1.5]\n",
                                ["axes.model.mask_ratio[1]", "less than 1", "1.5"]),
    "axis over a missing key": ("name: s\naxes:\n  model.mask_rate: [0.5]\n", ["axes.model.mask_rate", "unknown key",
                                                                             "mask_ratio"]),
    "axis over a missing section": ("name: s\naxes:\n  optim.lr: [0.1]\n", ["axes.optim.lr", "unknown section"]),
    "unknown evaluation": ("name: s\nevaluations: [knn]\n", ["evaluations[0]", "linear_probe"]),
    "unknown figure": ("name: s\nfigures: [fig99]\n", ["figures[0]", "fig99", "fig5_mask_ratio"]),
    "unknown table": ("name: s\ntables: [table9]\n", ["tables[0]", "table9"]),
    "yaml syntax error": ("name: s\naxes: [1, 2\n", ["line", "YAML syntax error"]),
    "empty file": ("", ["empty"]),
    "not a mapping": ("- 1\n- 2\n", ["mapping"]),
    "indivisible image and patch": ("name: s\nbase:\n  model: {img_size: 30, patch_size: 8}\n",
                                    ["not divisible by patch_size"]),
    "heads do not divide width": ("name: s\naxes:\n  model.num_heads: [2, 3]\n", ["divisible by num_heads", "arm"]),
    "python object tag": ("name: s\ndescription: !!python/object/apply:os.system ['true']\n", ["YAML"]),
    "import target key": ("name: s\nbase:\n  model: {_target_: os.system}\n", ["_target_", "unknown key"]),
    "duplicate key": ("name: s\nname: t\n", ["duplicate key"]),
    "zip lengths differ": ("name: s\nzip:\n  model.mask_ratio: [0.5, 0.75]\n  pretrain.epochs: [1]\n",
                           ["zip", "same length"]),
    "bad study name": ("name: ../escape\n", ["name", "pattern"]),
    "tune_blocks deeper than model": ("name: s\nevaluations: [partial_finetune]\n"
                                      "partial_finetune: {blocks: [1, 5]}\n", ["tune_blocks 5.0 exceeds the encoder depth 2", "arm 'tune_blocks=5'"]),
    "partial_finetune without its blocks": ("name: s\nevaluations: [partial_finetune]\n", ["partial_finetune"]),
    "search on the test metric": ("name: s\nevaluations: [finetune]\nsearch: {param: finetune.blr, low: 1.0e-4, "
                                  "high: 1.0e-3, log: true, metric: ft_top1}\n", ["search.metric", "ft_val_top1"]),
    "seed not an integer": ("name: s\nseeds: [zero]\n", ["seeds[0]", "integer"]),
    "profile overlay on a key that is no axis": ("name: s\naxes:\n  model.mask_ratio: [0.5]\nprofiles:\n  tiny: "
                                                 "{axes: {model.depth: [2]}}\n",
                                                 ["profiles.tiny.axes.model.depth", "not an axis", "model.mask_ratio"]),
    "profile overlay breaks the config": ("name: s\nprofiles:\n  tiny: {base: {model: {img_size: 30}}}\n",
                                          ["not divisible by patch_size"]),
}


def run(project: Path, study: Path, *extra: str, backend: str = "ray"):
    result = CliRunner().invoke(app, ["run", str(study), "--profile", "tiny", "--out", str(project / "runs"),
                                      "--backend", backend, *extra])
    assert "Traceback" not in result.output, result.output
    return result


def the_plan(study: Path):
    s = load_study(study)
    return plan(s, load_profile("tiny", s.source))


def mlflow_client(project: Path, name: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{project / 'runs' / name / 'mlflow.db'}")


def mlflow_runs(project: Path, name: str) -> list[dict]:
    client = mlflow_client(project, name)
    experiment = client.get_experiment_by_name(name)
    return [{"id": r.info.run_id, "status": r.info.status, **r.data.tags, "params": r.data.params,
             "metrics": r.data.metrics} for r in client.search_runs([experiment.experiment_id], max_results=1000)]


def stamps(project: Path, stage_ids) -> dict[str, tuple]:
    out = {}
    for sid in stage_ids:
        folder = store.stage_dir(project / "runs", sid)
        out[sid] = ((folder / store.RESULT).stat().st_mtime_ns, (folder / store.CONFIG).stat().st_mtime_ns,
                    (folder / "stage.json").read_text())
    return out
