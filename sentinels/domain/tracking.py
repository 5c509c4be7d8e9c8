"""Which MLflow operations a job still owes, derived from its record alone.

MLflow being down must not lose a job's state: the state transition is recorded first,
and MLflow is brought up to date when it answers again. So the record itself says how far
MLflow has been told, and this pure module compares that with the job's state. The
lifecycle calls the tracker's `sync` after each transition and on each timer tick for
records where `pending_ops` is not empty.

The record keeps a sub-dict `mlflow` (absent until the first successful operation):

    "mlflow": {
        "run_id": "3f2a...",          # the job's one MLflow run
        "experiment_id": "7",
        "url": "http://mlflow/#/experiments/7/runs/3f2a..." or None,
        "synced_state": "RUNNING",    # the last job state MLflow reflects; None = run created only
    }

and, for readers that only know the top-level shape, `mlflow_run_id` and `links.mlflow`.

A run is owed from the moment the job is scheduled (it needs `MLFLOW_RUN_ID` to launch);
a job cancelled before it was ever scheduled gets none. Job states map to MLflow run
statuses (`MLFLOW_STATUS`). Operations, in order:

    {"op": "create"}
    {"op": "mark", "state": "RUNNING", "status": "RUNNING"}      # or SCHEDULED (queued again)
    {"op": "finish", "state": "FAILED", "status": "FAILED", "metrics": {...}}

`metrics` are `time_in_queue_seconds` (submission to the last start) and
`duration_seconds` (last start to the end), from the record's timestamps.
"""

import copy

from . import times, usage
from .states import (CANCELLED, FAILED, QUEUED, RUNNING, SCHEDULED, SUCCEEDED, TERMINAL)

MLFLOW_STATUS = {
    QUEUED: "SCHEDULED", SCHEDULED: "SCHEDULED", RUNNING: "RUNNING",
    SUCCEEDED: "FINISHED", FAILED: "FAILED", CANCELLED: "KILLED",
}


def epoch_ms(iso: str | None) -> int | None:
    """Milliseconds since the epoch of an ISO-8601 timestamp, None if absent or malformed."""
    t = times.seconds(iso)
    return None if t is None else int(t * 1000)


def metrics_of(record: dict) -> dict:
    """Queue time and run time in seconds of a finished job (`times.job_times`), and its
    peaks and totals when the record has them (`usage`, on Kubernetes from Prometheus)."""
    in_queue, run = times.job_times(record)
    out: dict = {}
    if in_queue is not None:
        out["time_in_queue_seconds"] = in_queue
    if run is not None:
        out["duration_seconds"] = run
    if record.get("usage"):
        out.update(usage.system_metrics(record["usage"]))
    return out


def run_id_of(record: dict) -> str | None:
    return (record.get("mlflow") or {}).get("run_id") or record.get("mlflow_run_id")


def _ever_scheduled(record: dict) -> bool:
    stamps = record.get("timestamps") or {}
    return record.get("state") in (SCHEDULED, RUNNING) or SCHEDULED in stamps or RUNNING in stamps


def pending_ops(record: dict) -> list[dict]:
    """The MLflow operations this record still owes, in the order they must run."""
    state = record.get("state")
    want = MLFLOW_STATUS.get(state or "")
    if want is None:
        return []
    run_id = run_id_of(record)
    if not run_id and not _ever_scheduled(record):
        return []
    ops: list[dict] = [] if run_id else [{"op": "create"}]
    synced = (record.get("mlflow") or {}).get("synced_state") if run_id else None
    if synced in TERMINAL or (synced is not None and MLFLOW_STATUS.get(synced) == want):
        return ops
    if state in TERMINAL:
        ops.append({"op": "finish", "state": state, "status": want, "metrics": metrics_of(record)})
    else:
        ops.append({"op": "mark", "state": state, "status": want})
    return ops


def apply_synced(record: dict, op: dict, result: dict | None = None) -> dict:
    """A new record noting that `op` was done (`result` is start_run's answer for a create)."""
    new = copy.deepcopy(record)
    sub = dict(new.get("mlflow") or {})
    if op["op"] == "create":
        if result is None:
            raise ValueError("a create needs start_run's answer")
        sub.update(run_id=result["run_id"], experiment_id=result.get("experiment_id"),
                   url=result.get("url"), synced_state=None)
        new["mlflow_run_id"] = result["run_id"]
        if result.get("url"):
            new["links"] = {**(new.get("links") or {}), "mlflow": result["url"]}
    elif op["op"] in ("mark", "finish"):
        sub["run_id"] = run_id_of(record)
        sub["synced_state"] = op["state"]
    else:
        raise ValueError(f"unknown MLflow operation {op['op']!r}")
    new["mlflow"] = sub
    return new
