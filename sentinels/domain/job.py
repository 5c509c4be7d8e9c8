"""Job records and queue entries as plain dicts, built without I/O.

A job id is derived from who submitted it and the CloudEvent's source and id, so a
retried submit lands on the same record instead of creating a second job.
"""

import base64
import hashlib
import re
from typing import TypeGuard

from .names import JOB_ID_LABEL, MANAGED_BY, MANAGED_BY_LABEL, OWNER_LABEL, PRIORITY_LABEL, job_name
from .spec import label_value
from .states import QUEUED

JOB_ID = re.compile(r"^[a-z2-7]{10}$")


def job_id_for(owner: str, source: str, event_id: str) -> str:
    digest = hashlib.sha256(f"{owner}\x00{source}\x00{event_id}".encode()).digest()
    return base64.b32encode(digest).decode().lower()[:10]


def is_job_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(JOB_ID.match(value))


def new_record(*, job_id: str, spec: dict, who: dict, klass: str, now: str, event_id: str,
               queue_seq: int) -> dict:
    return {
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
        "event_id": event_id,
    }


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
