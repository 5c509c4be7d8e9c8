"""The Tracker port on MLflow: one run per job, brought up to date when MLflow answers.

A job's run is found again by its tag `sentinels.job_id`, so creating it twice (an event
delivered twice, a sync retried after MLflow came back) returns the same run. `sync`
performs what `domain.tracking.pending_ops` says the record still owes and returns the
updated record; when MLflow does not answer it raises `Unavailable` quickly (no retries,
a short timeout) so the caller keeps the job's state and tries again on the next tick.

MLflow's client takes its HTTP timeout and retries only from the environment, per
request; `fail_fast_defaults` sets them once when a process wires its tracker (before any
thread; values the operator set win), so calls are never serialised behind a lock.

`import mlflow` costs about a second, so it happens on first use, never at import.
"""

import functools
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any, Optional

from ..domain import runtime
from ..domain.errors import InvalidSpec, SentinelsError, Unavailable
from ..domain.job import is_job_id
from ..domain.spec import flat_params
from ..domain.states import SCHEDULED
from ..domain.tracking import apply_synced, epoch_ms, pending_ops, run_id_of

JOB_TAG = "sentinels.job_id"
FINISHED_TAG = "sentinels.finished"  # set last by finish_run: the status it completed
TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "SERVICE_UNDER_MAINTENANCE"}
FAIL_FAST = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


def fail_fast_defaults(environ=os.environ) -> None:
    """MLflow's HTTP timeout (5 s) and retries (none) for this process, set once at start."""
    for key, value in FAIL_FAST.items():
        environ.setdefault(key, value)


def _transient(err: BaseException) -> bool:
    """Whether an error means MLflow (or its database) did not answer, rather than refused."""
    import requests
    import sqlalchemy.exc

    seen: Optional[BaseException] = err
    while seen is not None:
        if isinstance(seen, (requests.exceptions.RequestException, sqlalchemy.exc.OperationalError,
                             ConnectionError, TimeoutError)):
            return True
        if getattr(seen, "error_code", None) in TRANSIENT_CODES:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _guarded(what: str):
    """Run a tracker call with fail-fast HTTP settings; map failures to domain errors."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except SentinelsError:
                raise
            except Exception as e:
                first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                if _transient(e):
                    raise Unavailable(f"MLflow at {self.where} did not answer ({what}): {first}") from None
                raise SentinelsError(f"MLflow at {self.where} refused {what}: {first}") from None
        return call
    return wrap


def output_files(outputs_dir: Optional[str]) -> list[tuple[Path, Optional[str]]]:
    """The regular files under a job's outputs directory, with their folder in the run's
    artifacts. The job wrote that directory, this process reads it with its own rights: a
    symbolic link (to a credentials file, a platform secret) or a device is never followed."""
    root = Path(outputs_dir) if outputs_dir else None
    if root is None or not root.is_dir() or root.is_symlink():
        return []
    out = []
    for folder, dirs, files in os.walk(root):  # does not descend into linked directories
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink())
        rel = here.relative_to(root).as_posix()
        for name in sorted(files):
            path = here / name
            if stat.S_ISREG(path.lstat().st_mode):
                out.append((path, None if rel == "." else rel))
    return out


class SyncUnavailable(Unavailable):
    """MLflow stopped answering part-way through a sync; `record` keeps what was done (or None)."""

    def __init__(self, message: str, record: Optional[dict]):
        super().__init__(message)
        self.record = record


class MlflowTracker:
    """Experiment tracking on an MLflow tracking server or a local sqlite store."""

    def __init__(self, tracking_uri: str, ui_url: Optional[str] = None):
        self.tracking_uri = tracking_uri
        self.ui_url = ui_url
        self._remote = tracking_uri.startswith(("http://", "https://"))
        self._client_obj: Any = None  # mlflow's MlflowClient, made on first use
        self._client_lock = threading.Lock()

    # --- plumbing -----------------------------------------------------------------------
    @property
    def where(self) -> str:
        return self.tracking_uri.split("@")[-1] if self._remote else "the local store"

    def _sqlite_dir(self) -> Optional[Path]:
        prefix = "sqlite:///"
        if not self.tracking_uri.startswith(prefix) or self.tracking_uri == prefix + ":memory:":
            return None
        return Path(self.tracking_uri[len(prefix):]).resolve().parent

    def _client(self):
        with self._client_lock:
            if self._client_obj is None:
                from mlflow.tracking import MlflowClient

                folder = self._sqlite_dir()
                if folder is not None:
                    folder.mkdir(parents=True, exist_ok=True)
                self._client_obj = MlflowClient(tracking_uri=self.tracking_uri)
            return self._client_obj

    def warm(self) -> None:
        """Import mlflow and open the store ahead of the first job (a local store is created here)."""
        self._client().search_experiments(max_results=1)

    def run_url(self, experiment_id: str, run_id: str) -> Optional[str]:
        base = self.ui_url or (self.tracking_uri if self._remote else None)
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}" if base else None

    # --- experiments and runs -------------------------------------------------------------
    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        client = self._client()
        exp = client.get_experiment_by_name(name)
        if exp is None:
            folder = self._sqlite_dir()
            try:
                return client.create_experiment(name, artifact_location=str(folder / "artifacts") if folder else None)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = client.get_experiment_by_name(name)  # another caller created it just now
        if exp.lifecycle_stage == "deleted":
            self._client().restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def _runs_of(self, experiment_id: str, job_id: str) -> list:
        runs = self._client().search_runs([experiment_id], filter_string=f"tags.`{JOB_TAG}` = '{job_id}'")
        return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))

    @staticmethod
    def _tags(record: dict) -> dict:
        spec = record.get("spec") or {}
        image = runtime.image_label(record.get("runtime"), spec["image"]) if spec.get("image") else None
        tags = {JOB_TAG: record["id"], "sentinels.image": image, "sentinels.runtime": record.get("runtime"),
                "sentinels.owner": record.get("owner"),
                "mlflow.user": record.get("owner"), "sentinels.priority": record.get("priority"),
                "sentinels.attempts": str(record.get("attempts", 0)),
                "sentinels.sweep": (record.get("sweep") or {}).get("id")}  # members of one sweep share it
        return {k: str(v) for k, v in tags.items() if v not in (None, "")}

    def _log_missing_params(self, run, params: dict) -> None:
        from mlflow.entities import Param

        missing = [Param(str(k), str(v)) for k, v in params.items() if str(k) not in run.data.params]
        for i in range(0, len(missing), 100):  # MLflow takes at most 100 params per batch
            self._client().log_batch(run.info.run_id, params=missing[i:i + 100])

    @_guarded("start_run")
    def start_run(self, record: dict) -> dict:
        """Get or create the job's one run (tags, params); {"run_id", "experiment_id", "url"}."""
        if not is_job_id(record.get("id")):
            raise InvalidSpec(f"not a job id: {record.get('id')!r}", "id")
        client = self._client()
        spec = record.get("spec") or {}
        exp_id = self._experiment_id(spec.get("experiment") or record["name"])
        runs = self._runs_of(exp_id, record["id"])
        if not runs:
            stamps = record.get("timestamps") or {}
            start = epoch_ms(stamps.get(SCHEDULED)) or epoch_ms(record.get("submitted_at"))
            created = client.create_run(exp_id, start_time=start, tags=self._tags(record), run_name=record["name"])
            runs = self._runs_of(exp_id, record["id"]) or [created]
            if runs[0].info.run_id != created.info.run_id:  # lost a race: keep the older run only
                client.delete_run(created.info.run_id)
        run = runs[0]
        self._log_missing_params(run, flat_params(spec.get("params") or {}))
        return {"run_id": run.info.run_id, "experiment_id": exp_id, "url": self.run_url(exp_id, run.info.run_id)}

    @_guarded("mark")
    def mark(self, run_id: str, status: str, attempts: Optional[int] = None) -> None:
        """Set a live run's status: RUNNING, or SCHEDULED when the job is queued again."""
        self._client().update_run(run_id, status=status)
        if attempts is not None:
            self._client().set_tag(run_id, "sentinels.attempts", str(attempts))

    @_guarded("finish_run")
    def finish_run(self, record: dict, status: str, metrics: dict, outputs_dir: Optional[str]) -> None:
        """Log metrics and outputs, then end the run with `status`; a second call does nothing."""
        from mlflow.entities import Metric, RunTag

        client = self._client()
        run_id = run_id_of(record)
        if not run_id:
            raise InvalidSpec(f"job {record.get('id')} has no MLflow run to finish", "mlflow_run_id")
        if client.get_run(run_id).data.tags.get(FINISHED_TAG) == status:
            return
        end = epoch_ms((record.get("timestamps") or {}).get(record.get("state"))) or int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), end, 0) for k, v in (metrics or {}).items()],
                         tags=[RunTag("sentinels.attempts", str(record.get("attempts", 0))),
                               RunTag("sentinels.reason", str(record.get("reason") or "")[:5000])])
        files = output_files(outputs_dir)
        unreadable = [str(p.relative_to(outputs_dir or "")) for p, _ in files if not os.access(p, os.R_OK)]
        for path, folder in files:
            if os.access(path, os.R_OK):
                client.log_artifact(run_id, str(path), folder)
        if unreadable:  # e.g. written mode 0600 by a root job: said on the run, not a failed sync
            client.set_tag(run_id, "sentinels.outputs_unreadable", ", ".join(unreadable)[:5000])
        client.set_terminated(run_id, status=status, end_time=end)
        client.set_tag(run_id, FINISHED_TAG, status)

    # --- catching up ----------------------------------------------------------------------
    def sync(self, record: dict, outputs_dir: Optional[str] = None) -> Optional[dict]:
        """Perform the MLflow operations the record owes; the updated record, None if none.

        Raises Unavailable when MLflow does not answer; its `record` attribute then holds
        the progress made before (or None), which the caller may store.
        """
        ops = pending_ops(record)
        if not ops:
            return None
        current = record
        try:
            for op in ops:
                result = None
                if op["op"] == "create":
                    result = self.start_run(current)
                elif op["op"] == "mark":
                    self.mark(run_id_of(current), op["status"], attempts=current.get("attempts"))
                else:
                    self.finish_run(current, op["status"], op["metrics"], outputs_dir)
                current = apply_synced(current, op, result)
        except Unavailable as e:
            raise SyncUnavailable(e.message, current if current is not record else None) from None
        return current
