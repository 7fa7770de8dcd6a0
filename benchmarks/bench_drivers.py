"""Two drivers of one study on one output root: wall clock against one driver alone, side by side.

    .venv/bin/python benchmarks/bench_drivers.py                    # studies/quickstart.yaml, laptop profile
    .venv/bin/python benchmarks/bench_drivers.py --profile FILE     # another profile (a smaller one to try it)

Runs `ablate run STUDY --out A` alone, then two `ablate run STUDY --out B` started together (each
a real process with its own Ray, as two users would), on fresh output roots. The second pair
must do the work once: the target is a total wall clock under 1.3x the single run. Also checks
what the pair leaves: both exit 0, one MLflow parent and one child run per stage, every
pre-training epoch once in MLflow and in the stage store. Writes benchmarks/results/drivers.md.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def ablate(study: str, out: Path, profile: str | None) -> subprocess.Popen:
    extra = ["--profile", profile] if profile else []
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "ablate.cli", "run", study, "--out", str(out), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs: list[subprocess.Popen]) -> list[str]:
    outputs = [p.communicate()[0] for p in procs]
    for p, text in zip(procs, outputs):
        if p.returncode != 0:
            raise SystemExit(f"ablate run failed ({p.returncode}):\n{text[-3000:]}")
    return outputs


def check(out: Path, study_name: str) -> dict:
    """What the drivers left in MLflow and the stage store."""
    from mlflow.tracking import MlflowClient

    from ablate.execution import store

    client = MlflowClient(f"sqlite:///{out / study_name / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study_name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    stages = [r for r in runs if r.data.tags.get("role") == "stage"]
    repeated = 0
    for run in stages:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            repeated += sum(n - 1 for n in collections.Counter(steps).values())
    epochs_twice = 0
    for folder in store.stages_root(out).iterdir():
        epochs = [json.loads(line)["epoch"] for line in (folder / store.METRICS).read_text().splitlines()]
        epochs_twice += len(epochs) - len(set(epochs))
    return {"runs": len(runs), "parents": len(runs) - len(stages), "children": len(stages),
            "distinct_stages": len({r.data.tags["stage_id"] for r in stages}), "points_repeated": repeated,
            "epochs_repeated": epochs_twice}


def machine() -> str:
    from benchmarks.run_all import machine as describe

    return describe()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/quickstart.yaml")
    parser.add_argument("--profile", default=None, help="default: the study's (laptop)")
    args = parser.parse_args()
    from ablate.spec.study import load_study

    name = load_study(ROOT / args.study).name
    root = Path(tempfile.mkdtemp(prefix="bench-drivers-"))

    started = time.perf_counter()
    finish([ablate(args.study, root / "alone", args.profile)])
    alone = time.perf_counter() - started

    started = time.perf_counter()
    pair = [ablate(args.study, root / "shared", args.profile)]
    time.sleep(2)  # as in the issue: the second started 2 s after the first
    pair.append(ablate(args.study, root / "shared", args.profile))
    outputs = finish(pair)
    together = time.perf_counter() - started
    left = check(root / "shared", name)
    elsewhere = sum(text.count("running elsewhere") for text in outputs)

    ratio = together / alone
    text = (f"### Two drivers on one output root\n\n`benchmarks/bench_drivers.py`: `ablate run {args.study}"
            f"{' --profile ' + args.profile if args.profile else ''}` alone, then two of it started 2 s apart on "
            f"one fresh output root, each its own process and Ray. Machine: {machine()}.\n\n"
            f"| run | wall clock s | MLflow runs (parents + children) | stages | points logged twice | epochs "
            f"recorded twice |\n|---|---|---|---|---|---|\n"
            f"| one driver | {alone:.1f} | | | | |\n"
            f"| two drivers together | {together:.1f} | {left['runs']} ({left['parents']} + {left['children']}) | "
            f"{left['distinct_stages']} | {left['points_repeated']} | {left['epochs_repeated']} |\n\n"
            f"Two together / one alone: **{ratio:.2f}x** (target: under 1.3x); the drivers' live views said "
            f"\"running elsewhere\" {elsewhere} times.\n")
    print(text)
    from benchmarks.results_file import save

    save("drivers", text)


if __name__ == "__main__":
    main()
