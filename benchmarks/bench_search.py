"""The adaptive search against a grid of the same budget, on a real fine-tune.

    .venv/bin/python benchmarks/bench_search.py                 # 3 seeds, budget 8 (about 40 min on 2 cores)
    .venv/bin/python benchmarks/bench_search.py --seeds 1 --budget 4   # a quick look
    .venv/bin/python benchmarks/bench_search.py --only tpe_quartile,tpe_median --grid-from <an earlier --out>

One `ablate run` of a suite of studies that differ only in their `search:` (laptop profile:
MAE pre-training of vit_fmnist, then the laptop fine-tune, 8 epochs on Fashion-MNIST), the fine-tune's
base learning rate searched over [1e-3, 1e-1] on the log scale, `--budget` candidates per seed:
- grid: evenly spaced on the log scale, no pruning (the non-adaptive baseline);
- tpe_best: Optuna's TPE and the default pruner (`best`: behind the best complete candidate);
- with --more (or named in --only): TPE with the other pruners (quartile, median, halving).
They share each seed's pre-training (one stage), and run as one pool of trials, side by side.
Per seed and search: the best validation top-1 among complete candidates, and the compute its
candidates took (the seconds each stage recorded per epoch, and epochs run). Then the pruning rules
replayed on the grid's measured curves, alone and with TPE in the loop (a design aid).
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
    "tpe_best": "sampler: tpe\n  pruner: best",
}
MORE = {name: f"sampler: tpe\n  pruner: {name[4:]}" for name in ("tpe_quartile", "tpe_median", "tpe_halving")}
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
    """A candidate's trial seconds and epochs: the seconds its stage recorded for each epoch it ran
    (training, validation and, in the last, the test evaluation; `epoch_time_s`), up to the end
    where it completed, up to the epoch it was pruned at where this search pruned it (a stage that
    two searches proposed runs on for the other, and is counted so for each). Summed per epoch, so
    that a stage pruned for one search and resumed later for another is not charged the wait."""
    from ablate.execution import store

    epochs = store.epochs(out, trial.user_attrs["stage_id"])
    done = len(epochs) if trial.state.name == "COMPLETE" else \
        (max(trial.intermediate_values) if trial.intermediate_values else 0)
    return sum(float(e.get("epoch_time_s", 0.0)) for e in epochs[:done]), done


def feed(study, trial, curve: list[float]) -> tuple[int, float]:
    """One candidate's per-epoch curve, reported to its study's pruner epoch by epoch: the epochs it
    ran and its final value (-inf where the pruner stopped it)."""
    import optuna

    for step, value in enumerate(curve, start=1):
        trial.report(value, step)
        if step < len(curve) and trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return step, -math.inf
    study.tell(trial, curve[-1])
    return len(curve), curve[-1]


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
                ran, final = feed(study, study.ask(), curve)
                epochs, best = epochs + ran, max(best, final)
            share.append(epochs / sum(len(c) for c in per_seed))
            regret.append(best_grid - best)
    regret.sort()
    return statistics.mean(share), statistics.mean(regret), regret[int(0.9 * len(regret))]


def replay_tpe(grids: list[list[tuple[float, list[float]]]], make_pruner, budget: int,
               searches: int = 20) -> tuple[float, float, float]:
    """A pruning rule with TPE in the loop (sequential, as `parallel: 1`), on curves interpolated from
    the grid's: a proposed blr gets, at each epoch, the validation top-1 interpolated linearly in
    log10(blr) between the two grid points around it. A design aid, not a measurement: the real
    candidates' seed-to-seed noise is not there. Per seed `searches` TPE seeds: the share of the grid's
    epochs, and how far below the grid's best the best complete candidate ends (mean, 90th percentile)."""
    import optuna

    from ablate.execution.search import tpe_sampler
    from ablate.spec.study import Search

    spec = Search(space={"finetune.blr": {"low": 1e-3, "high": 1e-1, "log": True}}, budget=budget)
    share, regret = [], []
    for points in grids:
        points = sorted(points)
        logs = [math.log10(blr) for blr, _ in points]
        best_grid = max(curve[-1] for _, curve in points)
        grid_epochs = sum(len(curve) for _, curve in points)

        def curve_at(blr: float) -> list[float]:
            x = min(max(math.log10(blr), logs[0]), logs[-1])
            i = max(k for k in range(len(logs) - 1) if logs[k] <= x) if x < logs[-1] else len(logs) - 2
            w = (x - logs[i]) / (logs[i + 1] - logs[i])
            return [a + w * (b - a) for a, b in zip(points[i][1], points[i + 1][1])]

        for search_seed in range(searches):
            study = optuna.create_study(direction="maximize", pruner=make_pruner())
            epochs, best = 0, -math.inf
            for number in range(budget):
                study.sampler = tpe_sampler(spec, search_seed, number)  # as a search proposes
                trial = study.ask({"finetune.blr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)})
                ran, final = feed(study, trial, curve_at(trial.params["finetune.blr"]))
                epochs, best = epochs + ran, max(best, final)
            share.append(epochs / grid_epochs)
            regret.append(best_grid - best)
    regret.sort()
    return statistics.mean(share), statistics.mean(regret), regret[int(0.9 * len(regret))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="output root (default: a fresh temporary folder)")
    parser.add_argument("--more", action="store_true", help="also TPE with the other pruners (about 35 min more)")
    parser.add_argument("--no-run", action="store_true", help="only read the run already in --out")
    parser.add_argument("--only", default=None, help="run only these searches (e.g. tpe_median,tpe_best), compared "
                                                     "with the grid of an earlier run of this script (--grid-from "
                                                     "its --out)")
    parser.add_argument("--grid-from", type=Path, default=None)
    args = parser.parse_args()
    searches = {**SEARCHES, **(MORE if args.more or args.only else {})}
    if args.only:
        searches = {name: searches[name] for name in args.only.split(",")}
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
    grids = []  # per seed, the grid's complete candidates: (blr, per-epoch validation top-1)
    grid_storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(sources["grid"] / "grid" / "optuna.journal")))
    for seed in range(args.seeds):
        study = optuna.load_study(study_name=f"base/seed{seed}/finetune", storage=grid_storage)
        grids.append([(t.params["finetune.blr"], [t.intermediate_values[k] for k in sorted(t.intermediate_values)])
                      for t in study.get_trials() if t.state.name == "COMPLETE"])
    curves = [[curve for _, curve in points] for points in grids]

    grid = rows["grid"]
    lines = [f"## Adaptive search against a grid of the same budget ({args.budget} candidates per seed, "
             f"{args.seeds} seeds)\n",
             f"`benchmarks/bench_search.py`: one `ablate run` of {len(searches)} studies that differ only in `search:` "
             "(laptop profile: the laptop fine-tune of vit_fmnist after its MAE pre-training, 8 epochs on "
             "Fashion-MNIST; `finetune.blr` in [1e-3, 1e-1], log scale), run side by side as one pool of trials "
             "sharing each seed's pre-training. Best: the best validation top-1 (%) among complete candidates. "
             "Compute: the candidates' trial seconds (the seconds each stage recorded per epoch, up to the "
             f"epoch a pruned one stopped at) and epochs. Whole run {wall / 60:.1f} min.\n"
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
                 lambda: pruners.PercentilePruner(33, n_startup_trials=2, n_warmup_steps=2),
             "top quarter after 2 complete candidates and 2 epochs (`pruner: quartile` at 8)":
                 lambda: pruners.PercentilePruner(25, n_startup_trials=2, n_warmup_steps=2),
             "behind the best after 2 complete candidates and 2 epochs (`pruner: best` at 8)":
                 lambda: pruners.PercentilePruner(0, n_startup_trials=2, n_warmup_steps=2),
             "no pruning": pruners.NopPruner}
    lines += ["Pruning rules replayed on the grid's measured per-epoch curves: alone (each seed's candidates in 60 "
              "random orders; no sampler, so this isolates the pruner), and with TPE in the loop (20 TPE seeds a "
              f"seed, budget {args.budget}, one candidate at a time, each proposed blr given the curve interpolated "
              "in log10(blr) between its two grid neighbours: a design aid without the candidates' own noise):\n",
              "| rule | share of the grid's epochs | best below the grid's best: mean | 90th percentile | "
              "with TPE: share | mean | 90th percentile |",
              "|---|---|---|---|---|---|---|"]
    for rule, make in rules.items():
        share, mean, p90 = replay(curves, make)
        tpe_share, tpe_mean, tpe_p90 = replay_tpe(grids, make, args.budget)
        lines.append(f"| {rule} | {share:.2f} | {mean:.2f} | {p90:.2f} | {tpe_share:.2f} | {tpe_mean:.2f} | "
                     f"{tpe_p90:.2f} |")
    text = "\n".join(lines)
    print(text)
    save("search", text)


if __name__ == "__main__":
    main()
