"""The adaptive search against a grid of the same budget, on a real fine-tune.

    .venv/bin/python benchmarks/bench_search.py                 # 3 seeds, budget 8 (about 45 min on 2 cores)
    .venv/bin/python benchmarks/bench_search.py --seeds 1 --budget 4   # a quick look

One `ablate run` of a suite of studies that differ only in their `search:` (laptop profile:
MAE pre-training of vit_fmnist, then the laptop fine-tune, 8 epochs on Fashion-MNIST), the fine-tune's
base learning rate searched over [1e-3, 1e-1] on the log scale, `--budget` candidates per seed:
- grid: evenly spaced on the log scale, no pruning (the non-adaptive baseline);
- tpe + halving: Optuna's TPE and successive halving (the default);
- with --median, tpe + median: Optuna's TPE and median stopping.
They share each seed's pre-training (one stage), and run as one pool of trials, side by side.
Per seed and search: the best validation top-1 among complete candidates, and the compute its
candidates took (seconds of their trials, from each stage's own records, and epochs run).
"""
from __future__ import annotations

import argparse
import json
import math
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

SEARCHES = {
    "grid": "sampler: grid\n  pruner: none",
    "tpe_halving": "sampler: tpe\n  pruner: halving",
}
MEDIAN = {"tpe_median": "sampler: tpe\n  pruner: median"}  # with --median (another ~15 minutes)
STUDY = """\
name: {name}
description: the fine-tune's base learning rate searched ({name}); benchmarks/bench_search.py
evaluations: [finetune]
search:
  space:
    finetune.blr: {{low: 1.0e-3, high: 1.0e-1, log: true}}
  budget: {budget}
  metric: ft_val_top1
  {how}
"""


def seconds_of(out: Path, trial) -> tuple[float, int]:
    """A candidate's trial seconds and epochs: its stage's whole attempt where it completed; where
    this search pruned it, up to the epoch it was pruned at (a stage that two searches proposed
    runs on for the other, and is counted so for each)."""
    from ablate.execution import store

    sid = trial.user_attrs["stage_id"]
    epochs = store.epochs(out, sid, timed=True)
    result = store.result(out, sid)
    if trial.state.name == "COMPLETE" and result is not None:
        return float(result["attempt_wall_s"]), len(epochs)
    done = max(trial.intermediate_values) if trial.intermediate_values else 0
    started = store.attempts(out, sid)[0]["started_at"]
    start = time.mktime(time.strptime(started[:19], "%Y-%m-%dT%H:%M:%S"))
    return (max(0.0, epochs[done - 1][store.TIME] / 1000 - start) if done else 0.0), done


def replay(curves: list[list[list[float]]], make_pruner, orders: int = 60) -> tuple[float, float, float]:
    """A pruning rule replayed on the grid's measured per-epoch curves (per seed, each candidate's
    validation top-1 after each epoch) in `orders` random orders of its candidates: the share of
    the grid's epochs it runs, and how far below the grid's best its best complete candidate ends
    (mean, 90th percentile)."""
    import random

    import optuna

    share, regret = [], []
    for per_seed in curves:
        best_grid = max(c[-1] for c in per_seed)
        for order_seed in range(orders):
            order = per_seed[:]
            random.Random(order_seed).shuffle(order)
            study = optuna.create_study(direction="maximize", pruner=make_pruner())
            epochs, best = 0, -math.inf
            for curve in order:
                trial = study.ask()
                for step, value in enumerate(curve, start=1):
                    epochs += 1
                    trial.report(value, step)
                    if step < len(curve) and trial.should_prune():
                        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                        break
                else:
                    study.tell(trial, curve[-1])
                    best = max(best, curve[-1])
            share.append(epochs / sum(len(c) for c in per_seed))
            regret.append(best_grid - best)
    regret.sort()
    return statistics.mean(share), statistics.mean(regret), regret[int(0.9 * len(regret))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="output root (default: a fresh temporary folder)")
    parser.add_argument("--median", action="store_true", help="also TPE with median stopping")
    parser.add_argument("--no-run", action="store_true", help="only read the run already in --out")
    parser.add_argument("--only", default=None, help="run only this search (e.g. tpe_median), compared with the "
                                                     "grid of an earlier run of this script (--grid-from its --out)")
    parser.add_argument("--grid-from", type=Path, default=None)
    args = parser.parse_args()
    searches = {**SEARCHES, **(MEDIAN if args.median or args.only else {})}
    if args.only:
        searches = {args.only: searches[args.only]}
    work = Path(tempfile.mkdtemp(prefix="bench-search-")) if args.out is None else args.out
    folder = work / "search_bench"
    folder.mkdir(parents=True, exist_ok=True)
    for name, how in searches.items():
        (folder / f"{name}.yaml").write_text(STUDY.format(name=name, budget=args.budget, how=how))
    (folder / "profiles").mkdir(exist_ok=True)
    (folder / "profiles" / "laptop.yaml").write_text((ROOT / "studies" / "profiles" / "laptop.yaml").read_text())
    out = work / "runs"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    started = time.time()
    if not args.no_run:
        done = subprocess.run([sys.executable, "-m", "ablate.cli", "run", str(folder), "--seeds", str(args.seeds),
                               "--out", str(out)], env=env, cwd=work, text=True, capture_output=True)
        (work / "run.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            sys.exit(f"ablate run failed (exit {done.returncode}); see {work / 'run.log'}")
        (work / "wall_s").write_text(f"{time.time() - started:.0f}")
    wall = float((work / "wall_s").read_text()) if (work / "wall_s").is_file() else math.nan

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sources = {"grid": (args.grid_from / "runs") if args.grid_from else out, **{n: out for n in searches}}
    rows: dict[str, list[dict]] = {name: [] for name in sources}
    for name, where in sources.items():
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
            str(where / name / "optuna.journal")))
        for seed in range(args.seeds):
            study = optuna.load_study(study_name=f"base/seed{seed}/finetune", storage=storage)
            trials = study.get_trials()
            complete = [t for t in trials if t.state.name == "COMPLETE"]
            spent = [seconds_of(where, t) for t in trials]
            best = max(complete, key=lambda t: t.value)
            rows[name].append({"seed": seed, "best": best.value, "blr": best.params["finetune.blr"],
                               "seconds": sum(s for s, _ in spent), "epochs": sum(e for _, e in spent),
                               "pruned": sum(t.state.name == "PRUNED" for t in trials), "candidates": len(trials)})
    (work / "search_rows.json").write_text(json.dumps(rows, indent=1))
    curves = []  # the grid's complete candidates' per-epoch validation top-1, per seed
    grid_storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(sources["grid"] / "grid" / "optuna.journal")))
    for seed in range(args.seeds):
        study = optuna.load_study(study_name=f"base/seed{seed}/finetune", storage=grid_storage)
        curves.append([[t.intermediate_values[k] for k in sorted(t.intermediate_values)]
                       for t in study.get_trials() if t.state.name == "COMPLETE"])

    grid = rows["grid"]
    lines = [f"## Adaptive search against a grid of the same budget ({args.budget} candidates per seed, "
             f"{args.seeds} seeds)\n",
             f"`benchmarks/bench_search.py`: one `ablate run` of {len(searches)} studies that differ only in `search:` "
             "(laptop profile: the laptop fine-tune of vit_fmnist after its MAE pre-training, 8 epochs on "
             "Fashion-MNIST; `finetune.blr` in [1e-3, 1e-1], log scale), run side by side as one pool of trials "
             "sharing each seed's pre-training. Best: the best validation top-1 (%) among complete candidates. "
             "Compute: the candidates' trial seconds (each stage's own records; a pruned one up to its last "
             f"epoch) and epochs. Whole run {wall / 60:.1f} min.\n"
             + (f"\nThe grid's rows come from an earlier run of this script ({args.grid_from}): its numbers are the "
                "same in every run (same stages, bit for bit on this CPU); its seconds were measured in that run, its "
                "epochs are exact.\n" if args.grid_from else ""),
             "| search | seed | best val top-1 | its blr | vs grid (points) | candidates (pruned) | epochs | "
             "trial seconds | compute vs grid |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, per_seed in rows.items():
        for row, base in zip(per_seed, grid):
            lines.append(f"| {name} | {row['seed']} | {row['best']:.2f} | {row['blr']:.3g} | "
                         f"{row['best'] - base['best']:+.2f} | {row['candidates']} ({row['pruned']}) | "
                         f"{row['epochs']} | {row['seconds']:.0f} | {row['seconds'] / base['seconds']:.2f} |")
    lines += ["", "| search | mean best vs grid (points) | worst seed vs grid | compute vs grid (seconds) | "
                  "(epochs) |", "|---|---|---|---|---|"]
    for name, per_seed in rows.items():
        gaps = [r["best"] - g["best"] for r, g in zip(per_seed, grid)]
        ratio = sum(r["seconds"] for r in per_seed) / sum(g["seconds"] for g in grid)
        epochs = sum(r["epochs"] for r in per_seed) / sum(g["epochs"] for g in grid)
        lines.append(f"| {name} | {statistics.mean(gaps):+.2f} | {min(gaps):+.2f} | {ratio:.2f} | {epochs:.2f} |")
    lines.append(f"\nTarget (issue 18): within 0.5 points of the grid's best at no more than 0.60 of its compute, "
                 f"over at least 3 seeds. Output kept in {work}.\n")
    pruners = optuna.pruners
    rules = {"successive halving, first rung after 1 epoch": lambda: pruners.SuccessiveHalvingPruner(1, 3),
             "successive halving, first rung after 2 epochs (`pruner: halving` at 8)": lambda: pruners.SuccessiveHalvingPruner(2, 3),
             "successive halving, first rung after 3 epochs": lambda: pruners.SuccessiveHalvingPruner(3, 3),
             "median stopping after 2 complete candidates and 2 epochs (`pruner: median` at 8)":
                 lambda: pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
             "median stopping after 3 complete candidates and 2 epochs":
                 lambda: pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
             "33rd percentile after 2 complete candidates and 2 epochs":
                 lambda: pruners.PercentilePruner(33, n_startup_trials=2, n_warmup_steps=2)}
    lines += ["Pruning rules replayed on the grid's measured per-epoch curves (each seed's candidates in 60 random "
              "orders; no sampler, so this isolates the pruner):\n",
              "| rule | share of the grid's epochs | best below the grid's best: mean | 90th percentile |",
              "|---|---|---|---|"]
    for rule, make in rules.items():
        share, mean, p90 = replay(curves, make)
        lines.append(f"| {rule} | {share:.2f} | {mean:.2f} | {p90:.2f} |")
    text = "\n".join(lines)
    print(text)
    save("search", text)


if __name__ == "__main__":
    main()
