"""Study overhead: what Ray, Tune and tracking cost on top of the trials' own compute.

    .venv/bin/python benchmarks/bench_study.py                   # Ray start, per-trial overhead, masking_ratio study
    .venv/bin/python benchmarks/bench_study.py --study studies/quickstart.yaml
    .venv/bin/python benchmarks/bench_study.py --study studies/ --seeds 3 --trials 0   # the whole suite

Measured in one run, on this machine:
- Ray start: a cold local `ray.init` as `ablate run` does it (no dashboard).
- Per-trial overhead: a wave of N trials that do nothing but import torch and report once,
  one at a time, with and without actor reuse: (wave wall-clock) / N.
- A real study or suite (`ablate run`, laptop profile, into a fresh folder): its wall-clock against the
  trials' own compute, read from each stage's result.json (`attempt_wall_s`). With several
  trials at once the lower bound is not the sum but the critical path of the stage graph packed
  onto the slots Ray has; both are shown. Peak resident memory per trial from result.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_file import save  # noqa: E402


def ray_start_seconds(repeats: int) -> float:
    """A cold `ray.init` in a fresh interpreter each time (what `ablate run` pays once)."""
    code = ("import time, logging, os, ray; s = time.perf_counter(); "
            "ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False, "
            "logging_level=logging.ERROR); print(time.perf_counter() - s); ray.shutdown()")
    times = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        times.append(float(out.strip().splitlines()[-1]))
    return statistics.median(times)


def _noop_trial(config: dict) -> None:
    import torch  # noqa: F401 - a real trial imports torch; the first import in a fresh worker costs
    from ray import tune
    tune.report({"x": config["i"]})


def per_trial_seconds(trials: int, reuse: bool) -> float:
    from ray import tune

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        tune.Tuner(
            tune.with_resources(_noop_trial, {"cpu": 1}),
            param_space={"i": tune.grid_search(list(range(trials)))},
            tune_config=tune.TuneConfig(reuse_actors=reuse, max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=tmp, verbose=0),
        ).fit()
        return (time.perf_counter() - start) / trials


def critical_path_seconds(stages: dict[str, dict], slots: int) -> float:
    """Lower bound on a study's wall-clock: list-schedule the stages (longest first among the
    runnable ones) onto `slots` parallel slots, each stage after its parent."""
    finish: dict[str, float] = {}
    free = [0.0] * slots
    pending = dict(stages)
    while pending:
        ready = [s for s in pending.values() if s["parent"] is None or s["parent"] in finish]
        stage = max(ready, key=lambda s: s["wall"])
        slot = min(range(slots), key=lambda i: free[i])
        start = max(free[slot], finish.get(stage["parent"], 0.0))
        free[slot] = finish[stage["id"]] = start + stage["wall"]
        del pending[stage["id"]]
    return max(finish.values())


def study_overhead(study: Path, profile: str, seeds: int | None = None, keep: Path | None = None) -> dict:
    from ablate.planning.plan import plan, union
    from ablate.spec.profiles import load_profile
    from ablate.spec.study import load_study
    from ablate.spec.suite import load_suite

    suite = load_suite([study])  # a folder of studies (or a suite file) runs as one suite
    files = [study] if suite is None else list(suite.files)
    plans = [plan(load_study(f).with_seeds(seeds), load_profile(profile, f)) for f in files]
    the_plan = plans[0] if suite is None else union(suite.name, plans)
    with tempfile.TemporaryDirectory() as tmp:
        out = keep if keep is not None else Path(tmp) / "runs"
        if keep is not None and keep.exists():
            raise SystemExit(f"--keep {keep}: exists; the study must run from a fresh output folder")
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        start = time.perf_counter()
        subprocess.run([str(ROOT / ".venv" / "bin" / "ablate"), "run", str(study), "--profile", profile,
                        "--out", str(out), *(["--seeds", str(seeds)] if seeds else [])], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        stages = {}
        for sid, stage in the_plan.stages.items():
            result = json.loads((out / "stages" / sid / "result.json").read_text())
            stages[sid] = {"id": sid, "parent": stage.parent, "wall": result["attempt_wall_s"],
                           "kind": stage.kind, "rss": result.get("peak_rss_mb")}
        claims = out / suite.name / "report" / "tables" / "claims.md" if suite is not None else None
        verdicts = claims.read_text() if claims is not None and claims.is_file() else ""
    slots = int(len(os.sched_getaffinity(0)) // load_profile(profile).resources.cpu)
    return {"wall": wall, "sum": sum(s["wall"] for s in stages.values()),
            "bound": critical_path_seconds(stages, slots), "slots": slots, "stages": stages, "claims": verdicts}


def run(args: argparse.Namespace) -> str:
    import ray

    suite = Path(args.study).is_dir() if args.study else False
    lines = ["### The whole suite (`ablate run studies/`)" if suite else "### Study overhead", ""]
    if args.trials == 0:
        return _study_lines(args, lines)
    start = ray_start_seconds(args.repeats)
    lines.append(f"Cold local `ray.init` (no dashboard): **{start:.2f} s** (median of {args.repeats}).")
    print(lines[-1], flush=True)
    ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    fresh = per_trial_seconds(args.trials, reuse=False)
    reused = per_trial_seconds(args.trials, reuse=True)
    ray.shutdown()
    lines += ["", f"Per-trial overhead, {args.trials} trials that import torch and report once, one at a time:", "",
              "| actors | s per trial |", "|---|---|", f"| fresh per trial | {fresh:.2f} |",
              f"| reused (`reuse_actors=True`, what ablate uses) | **{reused:.2f}** |", ""]
    print("\n".join(lines[-6:]), flush=True)
    return _study_lines(args, lines)


def _study_lines(args: argparse.Namespace, lines: list[str]) -> str:
    if args.study:
        s = study_overhead(Path(args.study), args.profile, args.seeds, Path(args.keep) if args.keep else None)
        kinds: dict[str, list[dict]] = {}
        for stage in s["stages"].values():
            kinds.setdefault(stage["kind"], []).append(stage)
        seeds = f" --seeds {args.seeds}" if args.seeds else ""
        lines += [f"`ablate run {args.study}{seeds}` (profile {args.profile}, {len(s['stages'])} stages, "
                  f"{s['slots']} trial slots), from a fresh output folder:", "",
                  "| | seconds |", "|---|---|",
                  f"| study wall-clock (process start to exit, Ray start, tracking, report included) | {s['wall']:.1f} |",
                  f"| sum of the trials' own compute | {s['sum']:.1f} |",
                  f"| lower bound: stage graph packed on {s['slots']} slots | {s['bound']:.1f} |",
                  f"| **wall-clock / lower bound** | **{s['wall'] / s['bound']:.2f}** |", "",
                  "| stage kind | count | median compute s | peak RSS MB (max) |", "|---|---|---|---|"]
        for kind, group in kinds.items():
            rss = [g["rss"] for g in group if g["rss"]]
            lines.append(f"| {kind} | {len(group)} | {statistics.median(g['wall'] for g in group):.1f} | "
                         f"{max(rss):.0f} |" if rss else f"| {kind} | {len(group)} | "
                         f"{statistics.median(g['wall'] for g in group):.1f} | - |")
        if s["claims"]:
            lines += ["", "The paper's findings as the combined report judged them:", "", s["claims"].rstrip()]
        from run_all import machine
        lines += ["", f"Machine: {machine()}."]
        print("\n".join(lines[-12:]), flush=True)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(ROOT / "studies" / "masking_ratio.yaml"),
                        help="study to run end to end ('' to skip); the target names the laptop masking_ratio study")
    parser.add_argument("--profile", default="laptop")
    parser.add_argument("--seeds", type=int, default=None, help="run the study at this many seeds (ablate --seeds)")
    parser.add_argument("--keep", default=None, help="run the study into this (new) folder and keep it")
    parser.add_argument("--trials", type=int, default=8, help="trials of the per-trial overhead (0: skip it and "
                                                               "the Ray start)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    text = run(args)
    save("suite" if args.study and Path(args.study).is_dir() else "study", text)


if __name__ == "__main__":
    main()
