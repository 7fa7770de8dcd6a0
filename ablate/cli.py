"""`ablate`: the MAE paper's ablation studies as declarative, resumable, one-command experiments.

Each command is a few lines over the library: load and plan the study (which validates every
arm), then show, run, or report. Bad input is one line on stderr and exit status 2, before
anything is created.
"""
from __future__ import annotations

import enum
import importlib
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
import typer.core
from rich.console import Console
from typer.core import TyperGroup

from ablate.errors import EXIT_BAD_INPUT, CannotRun, StudyError
from ablate.execution import preflight, store
from ablate.execution.search import found
from ablate.planning.plan import Plan, plan, union
from ablate.presentation import crash
from ablate.spec.profiles import DEFAULT_PROFILE, load_profile
from ablate.spec.study import load_study
from ablate.spec.suite import Suite, load_suite

# The click typer parses with: typer 0.29 vendors it as `typer._click`, older typers use `click`.
_CLICK = getattr(typer.core, "_click", None) or importlib.import_module("click")
click_errors = importlib.import_module(f"{_CLICK.__name__}.exceptions")
# Vendored click raises typer's own Abort (it has no `exceptions.Abort`); plain click its own.
ABORT: tuple[type[BaseException], ...] = tuple({typer.Abort, getattr(click_errors, "Abort", typer.Abort)})


class OneLineUsage(TyperGroup):
    """Command-line mistakes (an unknown option or command, a bad option value, a missing argument)
    as one line on stderr and exit status 2, as a bad study file is, instead of click's usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as e:  # plain `ablate`: the help, as asked for
            e.show()
            sys.exit(e.exit_code)
        except click_errors.ClickException as e:
            typer.echo(usage_line(e), err=True)
            sys.exit(e.exit_code)
        except (*ABORT, KeyboardInterrupt):
            typer.echo("aborted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as e:  # noqa: BLE001 - the last resort: one line, the traceback in a file
            typer.echo(crash.report(e), err=True)
            sys.exit(EXIT_FAILED)
        sys.exit(code if isinstance(code, int) else 0)


def usage_line(e: Exception) -> str:
    """'--bogus: no such option of `ablate run`; allowed: --profile, ...': what, where, what is allowed."""
    ctx = getattr(e, "ctx", None)
    command = ctx.command_path if ctx is not None else "ablate"
    if isinstance(e, click_errors.NoSuchOption) and ctx is not None:
        allowed = [o for param in ctx.command.params for o in param.opts + param.secondary_opts if o.startswith("-")]
        return f"{e.option_name}: no such option of `{command}`; allowed: {', '.join([*allowed, '--help'])}"
    if isinstance(e, click_errors.BadOptionUsage):
        return f"{e.option_name}: {e.message} (see `{command} --help`)"
    if isinstance(e, click_errors.BadParameter) and e.param is not None:
        options = e.param.opts if e.param.param_type_name == "option" else []
        name = "/".join(options) or (e.param.name or "argument").upper()
        what = "missing" if isinstance(e, click_errors.MissingParameter) else e.message
        return f"{name}: {what} (see `{command} --help`)"
    if ctx is not None and hasattr(ctx.command, "list_commands"):
        return f"{command}: {e.format_message()} Commands: {', '.join(ctx.command.list_commands(ctx))}"
    return f"{command}: {e.format_message()} (see `{command} --help`)"


app = typer.Typer(
    help="Run the ablation studies of Masked Autoencoders (He et al., 2021) on Ray Tune, tracked in MLflow. "
         "A study file (studies/*.yaml) expands into arms and stages; a folder of them (studies/) runs as one "
         "suite, with a combined report that judges the paper's findings; rerunning `ablate run` resumes it.",
    cls=OneLineUsage, no_args_is_help=True, add_completion=False, rich_markup_mode=None,
    pretty_exceptions_enable=False)

StudyArg = Annotated[Path, typer.Argument(help="The study file, e.g. studies/masking_ratio.yaml.",
                                          show_default=False)]
StudiesArg = Annotated[list[Path], typer.Argument(
    help="A study file (studies/masking_ratio.yaml); or a suite: a folder of study files (studies/: every study), "
         "a suite file (a YAML file listing `studies:`) or several study files. A suite runs as one: shared stages "
         "once, one pool of trials, each study's own folder, report and MLflow experiment, and the suite's.",
    show_default=False)]
ProfileOpt = Annotated[Optional[str], typer.Option(
    "--profile", "-p", help=f"Profile name (studies/profiles/<name>.yaml) or a profile file. "
                            f"Default: {DEFAULT_PROFILE}; for status and report, the one the study last ran with.",
    show_default=False)]
SeedsOpt = Annotated[Optional[int], typer.Option(
    "--seeds", "-s", min=1, max=100, help="Run each arm at this many seeds (the study's own seeds first, then 0, 1, "
                                          "2, ... not yet listed); stages of seeds already run are reused. Default: "
                                          "the study's seeds; for status and report, the count the study last ran "
                                          "with.", show_default=False)]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output root: the shared stage store and one folder per "
                                                           "study.")]

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130  # some stage failed; stopped by Ctrl-C


class BackendName(str, enum.Enum):
    ray = "ray"
    serial = "serial"


@contextmanager
def bad_input() -> Iterator[None]:
    """StudyError -> one line on stderr, exit status 2, no traceback."""
    try:
        yield
    except StudyError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _console() -> Console:
    # Piped or captured output (CI, logs) gets wide lines instead of rich's default 80 columns.
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def load(study_file: Path, profile: str | None, out: Path | None = None, *, seeds: int | None = None,
         say: bool = True) -> Plan:
    """Study + profile (+ a seed count) -> a validated plan, printing which profile runs. Given
    `out`, a profile or seed count left out is the one the study last ran with."""
    with bad_input():
        study = load_study(study_file)
        if out is not None:  # reuse what the study last ran with
            from ablate.execution.runner import last_profile, last_run
            folder = store.study_dir(out, study.name)
            profile = profile if profile is not None else last_profile(folder)
            seeds = seeds if seeds is not None else last_run(folder).get("seed_count")
        prof = load_profile(profile or DEFAULT_PROFILE, study.source)
        the_plan = plan(study.with_seeds(seeds), prof)
    if say:
        _console().print(f"profile {prof.name}: {prof.description}")
    return the_plan


@app.command()
def validate(study: StudyArg, profile: ProfileOpt = None, seeds: SeedsOpt = None) -> None:
    """Check a study against a profile: schema, and the merged config of every arm. Writes nothing."""
    p = load(study, profile, seeds=seeds)
    _console().print(f"ok: {study} is valid: {len(p.arms)} arm(s) x {len(p.study.seeds)} seed(s), "
                     f"{len(p.stages)} stage(s)")


def load_many(paths: list[Path], profile: str | None, out: Path | None = None, *, seeds: int | None = None
              ) -> tuple[Suite | None, list[Plan], Plan]:
    """What `paths` name, planned: (None, [the plan], the plan) for one study file; (the suite, a plan
    per study, their union: ablate.planning.plan.union) for a suite. Bad input as one line (exit
    status 2). Given `out`, each study's profile and seed count left out are those it last ran with."""
    with bad_input():
        suite = load_suite(paths)
    if suite is None:
        one = load(paths[0], profile, out, seeds=seeds)
        return None, [one], found(one, out) if out is not None else one
    plans = [load(path, profile, out, seeds=seeds, say=False) for path in suite.files]
    with bad_input():  # one pool of trials: the studies must take the same resources
        whole = union(suite.name, plans, suite.description, suite.source)
    for line in dict.fromkeys(f"profile {p.profile.name}: {p.profile.description}" for p in plans):
        _console().print(line)
    if out is not None:  # the candidates the studies' searches proposed so far (the same dicts in the union's runs)
        for p in [*plans, whole]:
            found(p, out)
    return suite, plans, whole


@app.command(name="plan")
def show_plan(study: StudiesArg, profile: ProfileOpt = None, out: OutOpt = store.DEFAULT_OUT,
              seeds: SeedsOpt = None) -> None:
    """Show the stage table (arm, stage, stage id, done?) with a cost estimate; for a suite, one row
    per study (shared stages counted once) and the whole suite's cost. Runs and writes nothing."""
    from ablate.presentation.views import plan_table, suite_table

    suite, plans, _ = load_many(study, profile, seeds=seeds)
    if suite is not None:
        suite_table(plans, out, _console())
        return
    plan_table(plans[0], out, _console())


@app.command()
def run(study: StudiesArg, profile: ProfileOpt = None, out: OutOpt = store.DEFAULT_OUT, seeds: SeedsOpt = None,
        address: Annotated[Optional[str], typer.Option(help="Join a running Ray cluster ('auto' or host:port) "
                                                            "instead of starting a private local one; a head "
                                                            "with token authentication gets your Ray token "
                                                            "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                                                            "~/.ray/auth_token).")] = None,
        rerun_failed: Annotated[bool, typer.Option("--rerun-failed", help="Retry stages that failed (otherwise "
                                                                          "they are reported, not retried).")] = False,
        max_concurrent: Annotated[Optional[int], typer.Option(min=1, help="At most this many trials at once "
                                                                          "(default: as resources allow).")] = None,
        rerun_stale: Annotated[bool, typer.Option("--rerun-stale", help="Recompute finished stages of another "
                                                                        "numerics version of core/ (their folders "
                                                                        "are kept beside).")] = False,
        keep_stale: Annotated[bool, typer.Option("--keep-stale", help="Use finished stages of another numerics "
                                                                      "version of core/ as they are (recorded in "
                                                                      "their result.json).")] = False,
        backend: Annotated[BackendName, typer.Option(help="ray: stages as Ray Tune trials, in parallel (a private "
                                                          "local Ray, or --address); serial: one after another in "
                                                          "this process, without Ray (a breakpoint in core/ stops "
                                                          "here; no data-parallel stages).")] = BackendName.ray,
        tracking_uri: Annotated[Optional[str], typer.Option("--tracking-uri", help="Log to this MLflow tracking "
                                                            "server (http://host:5000) or database (sqlite:///path, "
                                                            "any SQLAlchemy URL) instead of the study's tracking.uri "
                                                            "or a sqlite file in the study folder; keep sqlite on "
                                                            "the driver's local disk, never on a network mount.",
                                                            show_default=False)] = None,
        storage: Annotated[Optional[str], typer.Option("--storage", help="Keep the stage store at this URI as "
                                                       "well, for a cluster whose nodes share no mount with the "
                                                       "driver: a path or s3://bucket/prefix (any pyarrow "
                                                       "filesystem). Trials work in a copy on their node and copy "
                                                       "it up as they go; --out keeps the records, tables, report "
                                                       "and MLflow. One driver at a time per URI.",
                                                       show_default=False)] = None,
        ) -> None:
    """Run a study or a suite of them (or resume it: finished stages are skipped), tracked in MLflow,
    then draw its report (a suite's: each study's and the combined one, with the paper's findings judged).
    A study's `search:` has Optuna propose its candidates from the results as it runs (and prune the
    ones behind); a rerun continues the search from its storage in the study folder."""
    from ablate.execution.runner import run_study, run_suite
    from ablate.presentation.views import outcome_summary, suite_summary

    if storage is not None and rerun_stale:  # the stale stages' folders at the URI would be read back as done
        typer.echo("--rerun-stale: not with --storage (an object store cannot set a folder aside); move the stale "
                   "stages' folders at the URI aside, or run them without --storage", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    if backend is BackendName.serial and (address or max_concurrent):
        option = "--address" if address else "--max-concurrent"
        typer.echo(f"{option}: only for --backend ray (the serial backend runs one stage at a time, here)", err=True)
        raise typer.Exit(2)
    suite, plans, p = load_many(study, profile, seeds=seeds)
    name = p.study.name  # the study's, or the suite's
    crash.write_into(store.study_dir(out, name))
    with bad_input():  # before anything is written or started
        for folder in dict.fromkeys([*(q.study.name for q in plans), name]):
            preflight.check_output(out, folder)
        if address is None:  # on a cluster the trials read the data on their nodes
            for q in plans:
                preflight.check_data(q)
        stored = None if storage is None else preflight.check_storage(storage, p)
    if stored is not None:
        stored.pull_records(out, p.stages)  # what earlier runs, from any machine, left there
    _settle_stale(p, out, rerun_stale, keep_stale)
    console = _console()
    for line in preflight.summary(p, out, data_checked=address is None, studies=len(plans)):
        console.print(line)
    engine = make_backend(backend, address, max_concurrent, console.print, storage=stored)
    try:
        if suite is None:
            outcome = run_study(p, out, backend=engine, rerun_failed=rerun_failed, console=console,
                                tracking_uri=tracking_uri, storage=stored)
        else:
            outcome = run_suite(suite, plans, out, backend=engine, rerun_failed=rerun_failed, console=console,
                                tracking_uri=tracking_uri, storage=stored)
    except CannotRun as e:
        typer.echo(f"cannot run {name}: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    resume = _resume_command(study, profile, out, seeds, tracking_uri)
    code = (outcome_summary(p, outcome, console, resume=resume) if suite is None else
            suite_summary(suite, plans, outcome, console, resume=resume))
    raise typer.Exit(EXIT_INTERRUPTED if outcome.interrupted else code)


def _settle_stale(p: Plan, out: Path, rerun: bool, keep: bool) -> None:
    """Finished stages of another numerics version: refused in one line unless the user chose."""
    if rerun and keep:
        typer.echo("--rerun-stale, --keep-stale: choose one", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    stale = store.stale(out, {sid: stage.runner for sid, stage in p.stages.items()})
    if not stale:
        return
    if not (rerun or keep):
        from ablate.presentation.views import stale_line
        typer.echo(f"cannot run {p.study.name}: {stale_line(stale)}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    if keep:
        for sid in stale:
            store.keep_stale(out, sid, p.stages[sid].runner)
        return
    rerun_ids = set(stale)
    for sid, stage in p.stages.items():  # plan order: parents first; a child of a rerun stage read the old encoder
        if stage.parent in rerun_ids and store.result(out, sid) is not None:
            rerun_ids.add(sid)
    for sid in rerun_ids:
        store.set_aside(out, sid)


def make_backend(name: BackendName, address: str | None, max_concurrent: int | None, say, launch=None,
                 storage=None):
    """The backend `ablate run` runs a study on; `launch` runs each stage's engine (ablate/execution/stages.py:
    a program embedding the CLI may wrap it, e.g. to profile; the tests inject faults so)."""
    if name is BackendName.serial:
        from ablate.execution.serial_backend import SerialBackend
        return SerialBackend(launch, storage=storage)
    from ablate.execution.ray_backend import RayBackend
    return RayBackend(address, max_concurrent, say=say, launch=launch, storage=storage)


@app.command()
def status(study: StudiesArg, profile: ProfileOpt = None, out: OutOpt = store.DEFAULT_OUT,
           seeds: SeedsOpt = None) -> None:
    """Per-stage state from the stage store: done (and from which numerics version), failed (with the
    error), blocked, pruned or pending; where each ran; each search's candidates (complete, pruned,
    running, failed) and its best so far; this study's (or suite's: every distinct stage of its
    studies) and the whole store's size, and what `ablate clean` frees of each."""
    from ablate.presentation.views import status_table

    _, _, p = load_many(study, profile, out, seeds=seeds)
    crash.write_into(store.study_dir(out, p.study.name))
    status_table(p, out, _console())


@app.command()
def ui(study: StudiesArg, out: OutOpt = store.DEFAULT_OUT,
       port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000) -> None:
    """Open the study's MLflow UI (mlflow ui on 127.0.0.1); for a suite, its experiment of every
    stage of every study."""
    with bad_input():
        suite = load_suite(study)
        s = load_study(study[0]) if suite is None else None
    from ablate.execution.runner import last_run

    name = s.name if s is not None else suite.name
    tracked = last_run(store.study_dir(out, name)).get("mlflow") or {}
    # where its last run logged (--tracking-uri), else the study file's
    uri = tracked.get("tracking_uri") or (s.tracking.uri if s is not None else None)
    if uri and uri.startswith(("http://", "https://")):
        where = f"{uri.rstrip('/')}/#/experiments/{tracked['experiment_id']}" if tracked.get("experiment_id") else uri
        typer.echo(f"{name} is tracked on the MLflow server {uri}; open {where}")
        return
    if uri and uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///")).resolve()
    elif uri:
        typer.echo(f"{name} is tracked in {uri}; run `mlflow ui --backend-store-uri {uri}`")
        return
    else:  # the default: in the study folder, or on this machine's disk when that folder is on a network mount
        from ablate.tracking.tracker import default_uri

        db = Path(default_uri(store.study_dir(out, name)).removeprefix("sqlite:///"))
    if not db.is_file():
        typer.echo(f"no MLflow database at {db}; run the study first: ablate run {' '.join(map(str, study))}", err=True)
        raise typer.Exit(EXIT_FAILED)
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port)]
    typer.echo(f"MLflow UI for {name} on http://127.0.0.1:{port} (Ctrl-C to stop): {' '.join(command)}")
    experiment_id = tracked.get("experiment_id")
    if experiment_id is not None:
        typer.echo(f"study experiment: http://127.0.0.1:{port}/#/experiments/{experiment_id}")
    typer.echo("to compare stages: search `tags.stage = 'linear_probe'` (or finetune, pretrain), select the runs and "
               "press Compare; every stage run has its whole lineage as params (pretrain.*, model.*, data.*), so "
               "the parallel-coordinates and scatter views plot lin_top1 or ft_top1 against any axis of the study")
    try:
        subprocess.run(command, check=False)
    except KeyboardInterrupt:
        pass


@app.command()
def report(study: StudiesArg, profile: ProfileOpt = None, out: OutOpt = store.DEFAULT_OUT,
           seeds: SeedsOpt = None) -> None:
    """Rebuild results.csv and history.csv from the stage store and redraw the figures and tables;
    for a suite, every study's and the combined report, from whatever is done (also while it runs)."""
    from ablate.execution.runner import last_run
    from ablate.presentation import results

    suite, plans, whole = load_many(study, profile, out, seeds=seeds)
    name = whole.study.name  # the study's, or the suite's
    crash.write_into(store.study_dir(out, name))
    drawn = [p for p in plans if store.study_dir(out, p.study.name).is_dir()]
    if not drawn:
        typer.echo(f"no results for {name} under {out}; run it first: ablate run {' '.join(map(str, study))}",
                   err=True)
        raise typer.Exit(EXIT_FAILED)
    for p in drawn:
        folder = store.study_dir(out, p.study.name)
        table, history = results.write_tables(p, out, folder)
        path = results.write_report(p, out, folder, table, history, mlflow=last_run(folder).get("mlflow"), force=True)
        if suite is None:
            typer.echo(f"results: {folder / results.RESULTS} ({len(table)} rows)")
            typer.echo(f"report: {path}" if path else "report: not drawn (the dashboards package is not installed)")
            return
        typer.echo(f"{p.study.name}: results {folder / results.RESULTS} ({len(table)} rows), report {path}")
    folder = store.study_dir(out, suite.name)
    results.write_tables(whole, out, folder)
    path = results.write_suite_report(suite, plans, out, folder, mlflow=last_run(folder).get("mlflow"), force=True)
    typer.echo(f"{suite.name}: combined report {path} ({len(drawn)} of {len(plans)} studies have results)")


@app.command()
def clean(out: OutOpt = store.DEFAULT_OUT,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False) -> None:
    """Free disk space: remove the resume checkpoints of finished stages (every study under --out).
    Results, metrics, encoders, pictures and MLflow stay; nothing unfinished is touched."""
    from ablate.presentation.views import human_bytes

    files = store.resume_files(out)
    size = store.size_of(files)  # before they go
    stages = len({p.parent for p in files})
    if not dry_run:
        for path in files:
            path.unlink(missing_ok=True)
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb} {len(files)} resume files of {stages} finished stages under {store.stages_root(out)}: "
               f"{human_bytes(size)}")


def _resume_command(study: list[Path], profile: str | None, out: Path, seeds: int | None = None,
                    tracking_uri: str | None = None) -> str:
    parts = ["ablate", "run", *map(str, study)]
    if profile is not None:
        parts += ["--profile", profile]
    if seeds is not None:
        parts += ["--seeds", str(seeds)]
    if Path(out) != store.DEFAULT_OUT:
        parts += ["--out", str(out)]
    if tracking_uri is not None:
        parts += ["--tracking-uri", tracking_uri]
    return " ".join(parts)


if __name__ == "__main__":
    app()
