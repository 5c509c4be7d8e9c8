"""The names every part shares: JetStream streams, subjects, KV buckets and their keys.

These are the public contract the `nats` CLI (and an operator) must make sense of, so
they live in one place instead of as literals spread over adapters, functions and CLI.
Plain data: no I/O, and nothing heavier than `re` imported (the CLI checks job ids with it).
"""

import re

TYPE_CHECKING = False  # typing stays unimported at run time (the CLI's start-up)
if TYPE_CHECKING:
    from typing import TypeGuard

JOB_ID = re.compile(r"^[a-z2-7]{10}$")  # what `job.job_id_for` derives: 10 base32 characters


def is_job_id(value: object) -> "TypeGuard[str]":
    return isinstance(value, str) and bool(JOB_ID.match(value))


# --- streams and their subjects ---------------------------------------------------------
QUEUE_STREAM = "SENTINELS_QUEUE"  # one message per waiting job
QUEUE_SUBJECTS = "sentinels.queue.>"
QUEUE_SUBJECT = "sentinels.queue.{}"  # .format(priority class); `.requeued` appended for requeued jobs
REQUEUED_SUFFIX = ".requeued"

HISTORY_STREAM = "SENTINELS_HISTORY"  # every job state transition
HISTORY_SUBJECTS = "sentinels.history.*"
HISTORY_SUBJECT = "sentinels.history.{}"  # .format(job id)

EVENTS_STREAM = "SENTINELS_EVENTS"  # the embedded broker's CloudEvents
EVENTS_SUBJECTS = "sentinels.events.>"
EVENTS_SUBJECT = "sentinels.events.{}"  # .format(events.subject_token(type))

DEADLETTER_STREAM = "SENTINELS_DEADLETTERS"  # events the embedded broker gave up on (replayable)
DEADLETTER_SUBJECT = "sentinels.deadletter.{}"  # .format(trigger name)

INDEX_STREAM = "SENTINELS_INDEX"  # the job store's listings: live, finished and sweep jobs
INDEX_PREFIX = "sentinels.index"  # .active.<team>.<owner>.<id>, .sweep.<sweep>.<id>
FINISHED_STREAM = "SENTINELS_FINISHED"  # the job store's listing of ended jobs, one subject per owner
FINISHED_PREFIX = "sentinels.finished"  # .<team>.<owner>: every job of theirs that ended, in order of ending

DUPLICATE_WINDOW = 120.0  # seconds in which a stream drops a message id seen before

DEADLETTER_SUBJECTS = "sentinels.deadletter.>"

# --- core NATS request/reply --------------------------------------------------------------
LOCAL_SUBJECT = "sentinels.local.{}"  # .format(verb): the local executor's Cluster verbs

# --- core NATS, no stream: counts from functions for the metrics exporter ------------------
METRICS_SUBJECT = "sentinels.metrics.{}.{}"  # .format(what, label)
METRICS_SUBJECTS = "sentinels.metrics.>"

# --- KV buckets and keys ------------------------------------------------------------------
JOBS_BUCKET = "sentinels_jobs"  # job records by id
STATE_BUCKET = "sentinels_state"  # small shared documents (the Board)
ALERTS_BUCKET = "sentinels_alerts"  # (event, channel) pairs already sent to Slack
ALERTS_TTL = 7 * 86400.0  # redeliveries come within minutes; a week is plenty

WAITING_KEY = "waiting"  # Board: {"at": iso, "reasons": {job id: text}, "codes": {job id: [code, resource]}}
CAPACITY_KEY = "capacity"  # Board: the capacity watch's episode state
MLFLOW_OWED_KEY = "mlflow_owed"  # Board: {"jobs": [ids whose MLflow run is behind]}
USAGE_KEY = "usage"  # Board: the fair-share ledger {"usage": {key: [usage, at]}, "marks": {job id: charged until}, "held": {"team": {name: amounts}, "user": {...}}}

# --- the objects a job runs as: Kubernetes manifests and the local executor's alike ----------
JOB_ID_LABEL = "sentinels.io/job-id"
PRIORITY_LABEL = "sentinels.io/priority"
OWNER_LABEL = "sentinels.io/owner"
ATTEMPT_ANNOTATION = "sentinels.io/attempt"  # which run of the job an object belongs to
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "sentinels"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set by the Job controller on its pods
CONTAINER = "main"  # the job's container, whose exit code and logs count


def job_name(job_id: str, attempts: int = 1) -> str:
    """The Job of each attempt has its own name, so a late event of an old attempt can
    never be mistaken for the new one."""
    return f"sentinels-{job_id}" if attempts <= 1 else f"sentinels-{job_id}-a{attempts}"


def is_job_name(job_id: str, name: object) -> bool:
    """Whether `name` is the Job name of some attempt of this job."""
    return isinstance(name, str) and (name == job_name(job_id) or
                                      (name.startswith(job_name(job_id) + "-a") and name.rsplit("-a", 1)[1].isdigit()))
