"""Job records and queue entries as plain dicts, built without I/O.

A job id is derived from who submitted it and the CloudEvent's source and id, so a
retried submit lands on the same record instead of creating a second job.
"""

import base64
import hashlib
from typing import Any, Optional, TypedDict

from .names import JOB_ID, JOB_ID_LABEL, MANAGED_BY, MANAGED_BY_LABEL, OWNER_LABEL, PRIORITY_LABEL, is_job_id, job_name
from .spec import label_value
from .states import QUEUED


class JobRecord(TypedDict, total=False):
    """The job record in KV `sentinels_jobs`: every field any part writes, and who writes it.

    The in-memory job store refuses a record with a field not declared here, so the
    function tests keep this list complete."""

    # submit (new_record)
    id: str
    name: str
    owner: str
    team: Optional[str]
    state: str  # one of states.STATES
    priority: str  # the class; reprioritize changes it
    spec: dict[str, Any]  # the validated spec (domain.spec.validate)
    attempts: int  # the attempt number: +1 each time it is put back in the queue
    reason: str  # why it is in its state, for people
    timestamps: dict[str, str]  # state -> when it last entered it (ISO)
    submitted_at: str
    updated_at: str
    k8s_job: str  # names.job_name(id, attempts)
    mlflow_run_id: Optional[str]
    queue_seq: Optional[int]  # its entry in SENTINELS_QUEUE while QUEUED (None while BUILDING)
    order: Optional[int]  # its place in its class (the first queue sequence), kept across requeues
    cancel_requested: bool
    sweep: dict[str, Any]  # a member of a sweep or array: {id, index, size, values[, array_index]}
    runtime: str  # the embedded default's local runtime (process, podman, docker)
    runtime_note: str  # what that runtime means for this image, for people
    build: dict[str, Any]  # a Dockerfile submit: {dockerfile, context} (domain.build.validate)
    build_job: str  # the Job that builds its image
    build_started: bool  # the scheduler handed the build to a builder
    image_id: Optional[str]  # the built image's id or digest
    config: dict[str, Any]  # what the job reads at SENTINELS_CONFIG (domain.spec.job_config)
    # schedule
    node: Optional[str]  # where it was placed
    mlflow: dict[str, Any]  # {run_id, experiment_id, url, synced_state} (domain.tracking)
    usage: dict[str, Any]  # peaks and totals of a finished run (domain.usage keys), from ports.PeakUsage
    links: dict[str, str]  # label -> URL (MLflow run, ...)
    preempted_by: Optional[str]  # the waiting job this one is stopped for (the lifecycle requeues it)
    preempted_note: str  # the same, for people
    # on_job_event
    queue_front: bool  # requeued: waits on the class's `.requeued` subject
    last_observation: str  # the last event applied (redeliveries are recognised)
    last_step: dict[str, Any]  # the last transition's effects, to finish them after a crash
    previous_job: Optional[str]  # the attempt's Job to stop when it was requeued
    log_tail: list[str]  # the last log lines of a failed job
    exit_code: Optional[int]
    runs: list[dict[str, Any]]  # every ended run (pod), retries included: {run, generation, exit_code, reason, pod}
    preemptions: int  # times it was stopped for another job (not counted as attempts cut short)


FIELDS = frozenset(JobRecord.__annotations__)


def undeclared(record: dict) -> list[str]:
    """Fields of `record` that JobRecord does not declare."""
    return sorted(set(record) - FIELDS)


def job_id_for(owner: str, source: str, event_id: str) -> str:
    digest = hashlib.sha256(f"{owner}\x00{source}\x00{event_id}".encode()).digest()
    return base64.b32encode(digest).decode().lower()[:10]


def new_record(*, job_id: str, spec: dict, who: dict, klass: str, now: str, queue_seq: Optional[int]) -> dict:
    """A new QUEUED record (type-checked against JobRecord; records travel as plain dicts)."""
    record: JobRecord = {
        "id": job_id,
        "name": spec["name"],
        "owner": who["user"],
        "team": who.get("team"),
        "state": QUEUED,
        "priority": klass,
        "spec": spec,
        "attempts": 1,  # the attempt number: +1 each time it is put back in the queue
        "reason": "waiting for the scheduler",
        "timestamps": {QUEUED: now},
        "submitted_at": now,
        "updated_at": now,
        "k8s_job": job_name(job_id),
        "mlflow_run_id": None,
        "queue_seq": queue_seq,
        "order": queue_seq,
        "cancel_requested": False,
    }
    return dict(record)


def queue_entry(*, job_id: str, spec: dict, klass: str, submitted_at: str, order: int | None = None,
                owner: str | None = None, team: str | None = None) -> dict:
    """What the queue stream holds per waiting job: enough to place it without its record
    (owner and team for quotas and fair share)."""
    res = spec["resources"]
    entry = {"id": job_id, "class": klass, "submitted": submitted_at,
             "cpu_millis": res["cpu_millis"], "memory_bytes": res["memory_bytes"], "gpu": res["gpu"]}
    if owner:
        entry["owner"] = owner
    if team:
        entry["team"] = team
    if spec.get("node_selector"):
        entry["node_selector"] = spec["node_selector"]
    if order is not None:
        entry["order"] = order
    return entry


def base_labels(record: dict) -> dict[str, str]:
    """The labels on every object made for a job (Kubernetes Job, pods, ConfigMap, local objects)."""
    labels = {JOB_ID_LABEL: record["id"]}
    for key, value in ((PRIORITY_LABEL, record.get("priority")), (OWNER_LABEL, record.get("owner"))):
        if label_value(value):
            labels[key] = label_value(value)
    labels[MANAGED_BY_LABEL] = MANAGED_BY
    return labels
