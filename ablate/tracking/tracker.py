"""MLflow tracking, from the driver only: one parent run per study, exactly one child run per stage.

The tracker is a stage listener (ablate/execution/events.py) fed by the backend's driver-side callback, so
workers never open the database: the sqlite file is created here before any trial starts
(environment.md: concurrent creation races), and a crash, a retry or a rerun of the study finds
the same runs again by their tags (`role`, `profile`, `stage_id`) instead of opening new ones.
MLflow's own Ray integrations are not used: they open a new run per retry or restore.

Metrics have one route: the stage's folder. A stage appends each epoch to its metrics.jsonl with
the time it recorded it (ablate/execution/stages.py; an epoch a retry repeats counts as first recorded,
store.epochs); the backend's events only tell the tracker when to look (`follow`), and it logs the
epochs it has not sent yet, each with its recorded time as the MLflow timestamp. MLflow's store keeps one row per (metric, step, timestamp, value), so a line sent
again (a run found again after the driver was killed, a stage finished by another driver) adds
nothing: a stage's run holds one point per metric and step by construction, and the tracker never
reads MLflow's metric history. A final metric (result.json) is logged at the last step unless that
epoch's line has it. A driver killed outright leaves runs RUNNING; the next run of the study finds
them, follows their folders and ends them as their stages are (`backfill`).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from ablate.execution import lease, store
from ablate.planning.plan import Plan
from ablate.presentation import pictures
from core.files import replacing

PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
METRIC_BATCH = 1000
PARENT_ROLE, CHILD_ROLE = "study", "stage"
# Per-epoch metric names as logged: a stage's run holds one stage, so most keep core's name; the
# pre-training loss gets the stable name the results table uses.
SUMMARY = "summary.json"  # the parent run's table: per arm, each metric's mean and interval over seeds
LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"  # the tag that lists a run's tables (mlflow.utils.mlflow_tags)
RENAME = {"pretrain": {"loss": "pretrain_loss"}}
END_STATUS = {store.DONE: "FINISHED", store.FAILED: "FAILED", store.PRUNED: "KILLED"}  # MLflow has no "pruned"
LEFT_OPEN = ("RUNNING", "KILLED")  # a run its driver did not end (killed), or ended as interrupted


def lineage_config(plan: Plan, stage_id: str) -> dict[str, Any]:
    """The stage's resolved config and its ancestors' (an evaluation also has its pre-training's
    `pretrain.*`), under the study's dotted names: in the MLflow UI every stage of a study can be
    compared on any axis of it. A stage's own value wins where both have a key."""
    out: dict[str, Any] = {}
    sid: str | None = stage_id
    while sid is not None:
        stage = plan.stages[sid]
        out = {**stage.flat_config(), **out}
        sid = stage.parent
    return out


def _from_template(uri: str) -> None:
    """A new sqlite database starts as a copy of an empty one this MLflow version made before (in
    ~/.cache/mae-ablate): MLflow builds a new database's tables through its whole migration
    history, about 2 s per study. The copy is MLflow's own empty database, byte for byte."""
    import shutil

    import mlflow

    from ablate.presentation.crash import cache_dir

    if not uri.startswith("sqlite:///"):
        return
    target = Path(uri.removeprefix("sqlite:///"))
    if target.exists():
        return
    template = cache_dir() / f"mlflow-{mlflow.__version__}-empty.db"
    if not template.is_file():
        from mlflow.tracking import MlflowClient

        try:
            template.parent.mkdir(parents=True, exist_ok=True)
            with replacing(template, private=True) as scratch:  # other drivers may make it at once
                scratch.unlink(missing_ok=True)  # one a killed process of the same pid left
                MlflowClient(tracking_uri=f"sqlite:///{scratch}").search_experiments()  # creates the tables
        except Exception:  # noqa: BLE001 - no cache here: MLflow creates the study's database itself
            return
    try:
        with replacing(target) as partial:
            shutil.copyfile(template, partial)
    except OSError:  # a full disk, say: nothing half-written is left, and MLflow tries itself
        pass


def _reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Raise, in one line, when nothing answers as an MLflow server at `uri` (its /health): MLflow's
    own client retries a refused connection for minutes before it says so."""
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s).raise_for_status()
    except requests.RequestException as e:
        raise ConnectionError(f"no MLflow server answers there ({type(e).__name__}); start one "
                              f"(mlflow server --host <host> --port <port>) or leave --tracking-uri out "
                              f"for a database in the study folder") from None


# File systems sqlite must not live on: its locks do not hold over them (sqlite.org/useovernet.html).
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "lustre", "gpfs", "beegfs", "glusterfs", "wekafs",
    "panfs", "davfs", "fuse.sshfs", "fuse.glusterfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.rclone"})


def filesystem_type(path: Path, mounts: str | None = None) -> str | None:
    """The type of the file system `path` is on (the longest mount point above it in
    /proc/self/mounts); None where that is unknown (no /proc: not Linux)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    target, best, kind = str(Path(path).resolve()), "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def default_uri(study_dir: Path) -> str:
    """The study's sqlite database: `mlflow.db` in its folder, or, where that folder is on a network
    mount, a file on this machine's disk named after the folder (~/.cache/mae-ablate/mlflow/)."""
    folder = Path(study_dir).resolve()
    if filesystem_type(folder) in NETWORK_FILESYSTEMS:
        from ablate.presentation.crash import cache_dir

        digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
        return f"sqlite:///{cache_dir() / 'mlflow' / f'{folder.name}-{digest}.db'}"
    return f"sqlite:///{folder / 'mlflow.db'}"


def _quiet() -> None:
    for name in ("alembic", "mlflow", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # It logs a database error (a full disk) with its traceback and then raises it; the listener
    # that called it says so in one line (ablate/execution/events.py).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


class StudyTracker:
    """Parent run per (study, profile) in the study's experiment; child run per stage, by tag."""

    def __init__(self, plan: Plan, out_root: Path, study_dir: Path, uri: str | None = None):
        self.plan, self.out_root, self.study_dir = plan, Path(out_root), Path(study_dir)
        self.uri = uri or plan.study.tracking.uri or default_uri(study_dir)
        self.note: str | None = None  # a line for the user when the database is not where they would look
        if self.uri.startswith("sqlite:///") and not (uri or plan.study.tracking.uri) \
                and Path(self.uri.removeprefix("sqlite:///")).parent != self.study_dir.resolve():
            self.note = (f"{self.study_dir} is on a {filesystem_type(self.study_dir)} mount, where sqlite is not safe: "
                         f"MLflow's database is {self.uri.removeprefix('sqlite:///')} on this machine (--tracking-uri "
                         f"for one that several machines share)")
        self.client = None
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.children: dict[str, str] = {}  # stage_id -> run id
        self._status: dict[str, str] = {}  # stage_id -> its run's status when this tracker opened
        self._followed: dict[str, int] = {}  # stage_id -> epochs of its metrics.jsonl this tracker sent
        self._started: set[str] = set()  # stages this driver's trials started

    # ------------------------------------------------------------------------- opening
    def open(self) -> StudyTracker:
        """Create the database and experiment, find or start the parent run, find the children."""
        from mlflow.tracking import MlflowClient

        _quiet()
        if self.uri.startswith(("http://", "https://")):
            _reachable(self.uri)
        if self.uri.startswith("sqlite:"):  # the database lives in the study's folder (or on this machine's disk)
            self.study_dir.mkdir(parents=True, exist_ok=True)
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        name = self.plan.study.name
        with self._creating():  # also the database's tables: two drivers creating them at once break it
            _from_template(self.uri)
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                location = (self.study_dir / "mlartifacts").resolve().as_uri() if self.uri.startswith("sqlite:") else None
                self.experiment_id = self.client.create_experiment(name, artifact_location=location)
            else:
                self.experiment_id = experiment.experiment_id
                if experiment.lifecycle_stage == "deleted":
                    self.client.restore_experiment(self.experiment_id)
            self.parent_id = self._find_or_create_parent()
        for run in self._search(f"tags.role = '{CHILD_ROLE}' and tags.`mlflow.parentRunId` = '{self.parent_id}'"):
            sid = run.data.tags.get("stage_id")
            if sid not in self.children:
                self.children[sid] = run.info.run_id
                self._status[sid] = run.info.status
        return self

    @contextmanager
    def _creating(self) -> Iterator[None]:
        """One driver at a time finds or creates the experiment, the parent or a child run: drivers
        sharing a study's sqlite database (on the driver's local disk) then find each other's runs
        instead of opening a second one. A tracking server is asked without this lock."""
        if not self.uri.startswith("sqlite:"):
            yield
            return
        with (self.study_dir / ".tracking.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _search(self, filter_string: str) -> list:
        out, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, max_results=1000, page_token=token)
            out += list(page)
            token = page.token
            if not token:
                return sorted(out, key=lambda r: r.info.start_time or 0)

    def _find_or_create_parent(self) -> str:
        study, profile = self.plan.study, self.plan.profile
        tags = {"role": PARENT_ROLE, "study": study.name, "profile": profile.name,
                "study_file": str(study.source or ""), "description": study.description[:4000],
                "arms": json.dumps(self.plan.arms)[:4000], "seeds": json.dumps(study.seeds),
                "evaluations": json.dumps(study.evaluations),
                "mlflow.note.content": f"{study.description}\n\nprofile {profile.name}: {profile.description}"}
        found = self._search(f"tags.role = '{PARENT_ROLE}' and tags.profile = '{profile.name}'")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=f"{study.name} ({profile.name})",
                                            tags=tags).info.run_id
        from mlflow.entities import RunTag
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return run_id

    # ------------------------------------------------------------------------- children
    def child(self, stage_id: str) -> str:
        """The stage's run: found (this process or by tag) or created once, with its params."""
        if stage_id in self.children:
            return self.children[stage_id]
        with self._creating():
            found = self._search(f"tags.role = '{CHILD_ROLE}' and tags.`mlflow.parentRunId` = '{self.parent_id}' "
                                 f"and tags.stage_id = '{stage_id}'")
            if found:  # opened meanwhile by another driver of this study
                self.children[stage_id] = found[0].info.run_id
                self._status[stage_id] = found[0].info.status
                return self.children[stage_id]
            return self._create_child(stage_id)

    def _create_child(self, stage_id: str) -> str:
        from mlflow.entities import Param

        stage = self.plan.stages[stage_id]
        users = self.plan.users(stage_id)
        arms = list(dict.fromkeys(run.arm for run, _ in users))
        seeds = sorted({run.seed for run, _ in users})
        names = list(dict.fromkeys(name for _, name in users))
        tags = {"role": CHILD_ROLE, "mlflow.parentRunId": self.parent_id, "study": self.plan.study.name,
                "profile": self.plan.profile.name, "stage_id": stage_id, "stage": names[0] if names else stage.kind,
                "kind": stage.kind, "arm": ", ".join(arms)[:4000], "seed": ",".join(map(str, seeds)),
                "parent_stage_id": stage.parent or "", "stage_dir": str(store.stage_dir(self.out_root, stage_id).resolve())}
        task = self.plan.search_of(stage_id)
        if task is not None:  # a search's candidate: which search, and (when it ends) how: tags search.*
            tags.update({"search": task.name, "search.sampler": task.spec.sampler, "search.metric": task.spec.metric})
        run_name = f"{arms[0] if len(arms) == 1 else f'{len(arms)} arms'}/{tags['stage']}"
        run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id
        params = {k: _param(v) for k, v in lineage_config(self.plan, stage_id).items()}
        params["parent_stage_id"] = stage.parent or "none"
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(run_id, params=items[i:i + PARAM_BATCH])
        self.client.log_inputs(run_id, datasets=[dataset_input(stage)])
        self.children[stage_id] = run_id
        return run_id

    def _log_metrics(self, run_id: str, rows: Iterable[tuple[str, float, int, int]]) -> None:
        """Log (metric, value, step, timestamp ms) rows, in batches."""
        from mlflow.entities import Metric

        items = [Metric(k, float(v), int(ms), int(step)) for k, v, step, ms in rows]
        for i in range(0, len(items), METRIC_BATCH):
            self.client.log_batch(run_id, metrics=items[i:i + METRIC_BATCH])

    def _epoch_rows(self, stage_id: str, epoch: dict[str, Any]) -> list[tuple[str, float, int, int]]:
        """One metrics.jsonl line as rows; a line written before lines carried their time gets 0."""
        rename = RENAME.get(self.plan.stages[stage_id].kind, {})
        step, ms = int(epoch.get("epoch", 0)), int(epoch.get(store.TIME, 0))
        return [(rename.get(k, k), v, step, ms) for k, v in epoch.items()
                if k not in ("epoch", store.TIME) and _number(v)]

    def follow(self, stage_id: str) -> None:
        """Log the epochs of the stage's metrics.jsonl this tracker has not sent yet (all of them
        for a run found again: MLflow keeps the points it holds already once)."""
        epochs = store.epochs(self.out_root, stage_id, timed=True)
        sent = self._followed.get(stage_id, 0)
        if len(epochs) > sent:
            run_id = self.child(stage_id)
            self._log_metrics(run_id, [row for epoch in epochs[sent:] for row in self._epoch_rows(stage_id, epoch)])
            self._followed[stage_id] = len(epochs)

    def _finish(self, stage_id: str, state: str, error: str | None) -> None:
        from mlflow.entities import RunTag

        run_id = self.child(stage_id)
        stage = self.plan.stages[stage_id]
        folder = store.stage_dir(self.out_root, stage_id)
        result = store.result(self.out_root, stage_id) or {}
        self.follow(stage_id)
        last = stage.epochs - 1  # the final metrics' step, unless the last epoch's line has them
        logged = {name for epoch in store.epochs(self.out_root, stage_id) if epoch.get("epoch") == last
                  for name, _, _, _ in self._epoch_rows(stage_id, epoch)}
        ms = _ms(result.get("finished_at"))
        self._log_metrics(run_id, [(k, v, last, ms) for k, v in result.items() if _number(v) and k not in logged
                                   and k not in ("epochs", "attempts", "attempt_wall_s", "epoch", "numerics")])
        for name in (store.CONFIG, "reconstructions.npz", store.ERROR):
            if (folder / name).is_file():
                self.client.log_artifact(run_id, str(folder / name))
        self._log_pictures(run_id, stage_id)
        tried = store.attempts(self.out_root, stage_id)
        if tried and "host" in tried[-1]:  # where it ran (its last attempt)
            last = tried[-1]
            self.client.log_batch(run_id, tags=[RunTag(f"node.{key}", str(last[key]))
                                                for key in ("host", "ray_node_id", "device") if last.get(key)])
        if result:  # what computed its numbers: core/'s numerics version and the code's commit
            self.client.log_batch(run_id, tags=[RunTag("numerics", str(store.numerics_of(result))),
                                                RunTag("code.commit", str(result.get("commit", "unknown")))])
        notes = [w["message"] for w in store.warnings(self.out_root, stage_id)]
        if notes:  # e.g. a damaged checkpoint skipped on resume
            self.client.set_tag(run_id, "warnings", "\n".join(notes)[-4000:])
        if state == store.PRUNED:
            why = store.pruned(self.out_root, stage_id)
            self.client.log_batch(run_id, tags=[RunTag("search.state", "PRUNED"),
                                                RunTag("search.pruned_after_epochs", str(why.get("epochs_done", "")))])
        elif self.plan.search_of(stage_id) is not None and state == store.DONE:
            self.client.set_tag(run_id, "search.state", "COMPLETE")
        if error:
            self.client.set_tag(run_id, "error", error[:4000])
        elif "error" in self.client.get_run(run_id).data.tags:  # a failed stage that now succeeded
            self.client.delete_tag(run_id, "error")
        self.client.set_terminated(run_id, END_STATUS.get(state, "KILLED"))

    def _log_pictures(self, run_id: str, stage_id: str) -> None:
        """The stage's own pictures (ablate/presentation/pictures.py), drawn by its worker; a stage finished by
        older code gets them drawn here once."""
        folder = store.stage_dir(self.out_root, stage_id)
        found = pictures.pictures(folder)
        if not found and store.state(self.out_root, stage_id) == store.DONE:
            found = pictures.draw(folder, f"{self.plan.stages[stage_id].kind} {stage_id}")
        for path in found:
            self.client.log_artifact(run_id, str(path))

    def backfill(self, states: dict[str, str]) -> int:
        """Bring the runs in line with the stage store before anything runs; returns the runs added.

        A stage finished earlier (by an earlier run or another study sharing the store) without a
        run in this study gets one now, from the files in its folder (tagged `reused`). A run left
        open (RUNNING: its driver was killed; KILLED: interrupted) gets the epochs its stage
        recorded meanwhile and ends as its stage is: FINISHED or FAILED, or KILLED while pending.
        """
        added = 0
        for sid, state in states.items():
            run_id = self.children.get(sid)
            if run_id is None:
                if state not in END_STATUS:
                    continue
                run_id = self.child(sid)  # with the epochs in its folder
                self.client.set_tag(run_id, "reused", "true")
                added += 1
            elif self._status.get(sid) in LEFT_OPEN:
                if state not in END_STATUS and lease.live_holder(store.stage_dir(self.out_root, sid)):
                    continue  # another driver runs it now and ends its run
                self.follow(sid)
            else:
                continue  # ended by the run that ran it, with every epoch it reported
            if state in END_STATUS:
                self._finish(sid, state, store.error_line(self.out_root, sid) or None)
            elif self._status.get(sid) == "RUNNING":
                self.client.set_terminated(run_id, "KILLED")  # resumed by this run or a later one
        return added

    # ------------------------------------------------------------------------- listener
    # A suite's trackers all listen to its one backend: each follows the stages of its own plan.
    def wave_started(self, wave: int, stage_ids) -> None:
        pass

    def stage_started(self, stage_id: str) -> None:
        if stage_id not in self.plan.stages:
            return
        self._started.add(stage_id)
        run_id = self.child(stage_id)
        self.client.update_run(run_id, status="RUNNING")

    def stage_epoch(self, stage_id: str, metrics: dict[str, Any]) -> None:
        if stage_id in self.plan.stages:
            self.follow(stage_id)  # the event says "look now"; the numbers come from the folder

    def stage_retrying(self, stage_id: str, error: str) -> None:
        if stage_id not in self.plan.stages:
            return
        run_id = self.child(stage_id)
        self.follow(stage_id)  # the attempt that died may have recorded epochs it never reported
        run = self.client.get_run(run_id)
        retries = int(run.data.tags.get("retries", "0")) + 1
        self.client.set_tag(run_id, "retries", str(retries))
        self.client.set_tag(run_id, "last_retry_error", _last_line(error)[:4000])

    def stage_ended(self, stage_id: str, state: str, error: str | None) -> None:
        if stage_id in self.plan.stages:
            self._finish(stage_id, state, error)

    def stage_elsewhere(self, stage_id: str, owner: str) -> None:
        pass  # its run belongs to the driver that runs it; this one ends it when it is done

    # ------------------------------------------------------------------------- closing
    def log_study_artifacts(self, paths: Iterable[Path]) -> None:
        for path in paths:
            path = Path(path)
            if path.is_dir():
                self.client.log_artifacts(self.parent_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(self.parent_id, str(path))

    def log_study_summary(self, results) -> None:
        """Per arm the mean and 95% interval of each metric over its seeds, as a table in the
        parent run (`summary.json`, shown in the UI's artifact view and by `mlflow.load_table`)."""
        from dashboards.tables import aggregate

        summary = aggregate(results)
        if not len(summary):
            return
        # Written as MlflowClient.log_table writes a table, but replaced on every run: log_table
        # appends to a table the run has already, so each resume would add the arms once more.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / SUMMARY
            summary.to_json(path, orient="split", index=False, date_format="iso")
            self.client.log_artifact(self.parent_id, str(path))
        run = self.client.get_run(self.parent_id)
        logged = json.loads(run.data.tags.get(LOGGED_ARTIFACTS, "[]"))
        if {"path": SUMMARY, "type": "table"} not in logged:  # the UI and mlflow.load_table find it as a table
            self.client.set_tag(self.parent_id, LOGGED_ARTIFACTS,
                                json.dumps([*logged, {"path": SUMMARY, "type": "table"}]))

    def mark_chosen(self) -> None:
        """Tag each search's best candidate so far `search.best = true` (the others false): the UI's
        filter `tags.search.best = 'true'` lists the candidates the results use."""
        from ablate.execution.search import best_candidate

        for run in self.plan.runs:
            for name in run.searches:
                best, _ = best_candidate(self.plan, self.out_root, run, name)
                for sid in run.candidates.get(name, ()):
                    state = store.state(self.out_root, sid)
                    if state not in END_STATUS:
                        continue
                    if sid not in self.children:  # a candidate this study adopted done (another search ran it)
                        self.backfill({sid: state})  # its run from its folder, ended as its stage is
                    self.client.set_tag(self.child(sid), "search.best", str(sid == best).lower())

    def log_study_metrics(self, counts: dict[str, int]) -> None:
        now = int(time.time() * 1000)
        self._log_metrics(self.parent_id, [(f"stages_{k}", v, 0, now) for k, v in counts.items()])

    def close(self, status: str) -> None:
        """End the parent run: FINISHED, FAILED (some stage failed) or KILLED (interrupted); a
        child left RUNNING (interrupted) is KILLED too."""
        if self.client is None:
            return
        if status == "KILLED":  # the runs of the stages this driver ran (another driver ends its own)
            for sid, run_id in self.children.items():
                if sid in self._started and self.client.get_run(run_id).info.status == "RUNNING":
                    self.client.set_terminated(run_id, "KILLED")
        self.client.set_terminated(self.parent_id, status)

    def info(self) -> dict[str, Any]:
        """For the report's links: the store, the experiment, the parent run, and per arm the
        pre-training run of each seed."""
        run_ids: dict[str, dict[str, str]] = {}
        for run in self.plan.runs:
            run_id = self.children.get(run.stages.get("pretrain", ""))
            if run_id:
                run_ids.setdefault(run.arm, {})[str(run.seed)] = run_id
        return {"tracking_uri": self.uri, "experiment_id": self.experiment_id, "parent_run_id": self.parent_id,
                "experiment_name": self.plan.study.name, "run_ids": run_ids}


def dataset_input(stage) -> Any:
    """The stage's data as an MLflow dataset input (the run page's "Datasets used"): the dataset's
    name; where it is read from (a folder, or the generator of synthetic data); a digest of what the
    stage takes from it (its data config: two stages with the same digest read the same images);
    the sizes of the splits it reads as its profile; the stage kind as context."""
    import hashlib

    from mlflow.entities import Dataset, DatasetInput, InputTag

    from core.data_files import carve, data_root, test_file_images, train_file_images

    data = stage.config["data"]
    name, root, size = data["dataset"], data.get("root"), data.get("synthetic_size", 0)
    where = data_root(name, root)
    source_type, source = (("local", {"uri": str(where.resolve())}) if where is not None
                           else ("code", {"tags": {"generator": "core.data.SyntheticSource", "synthetic_size": size}}))
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    total, test = train_file_images(name, root, size), test_file_images(name, root, size)
    profile = {"test_images": min(test, data.get("test_limit") or test) if test else None}
    if total is not None:
        profile["train_images"], profile["val_images"] = carve(total, data.get("val_fraction", 0.0), data.get("train_limit"))
    dataset = Dataset(name=name, digest=digest, source_type=source_type, source=json.dumps(source),
                      profile=json.dumps(profile))
    return DatasetInput(dataset=dataset, tags=[InputTag("mlflow.data.context", stage.kind)])


def _param(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def _ms(stamp: Any) -> int:
    """A result's `finished_at` (ablate/execution/stages.py writes %Y-%m-%dT%H:%M:%S%z) in ms; 0 if absent."""
    from datetime import datetime

    try:
        return int(datetime.strptime(str(stamp), "%Y-%m-%dT%H:%M:%S%z").timestamp() * 1000)
    except ValueError:
        return 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""
