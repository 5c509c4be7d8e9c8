"""CloudEvent type names and the shape of the envelope, as plain data."""

JOB_SUBMIT = "io.sentinels.job.submit"
JOB_CANCEL = "io.sentinels.job.cancel"
JOB_REPRIORITIZE = "io.sentinels.job.reprioritize"
JOB_QUEUED = "io.sentinels.job.queued"
JOB_BUILDING = "io.sentinels.job.building"  # submit -> schedule: start the build of a Dockerfile submit
JOB_SCHEDULED = "io.sentinels.job.scheduled"
JOB_STARTED = "io.sentinels.job.started"
JOB_REQUEUED = "io.sentinels.job.requeued"
JOB_SUCCEEDED = "io.sentinels.job.succeeded"
JOB_FAILED = "io.sentinels.job.failed"
JOB_CANCELLED = "io.sentinels.job.cancelled"
JOB_CANCEL_REQUESTED = "io.sentinels.job.cancel_requested"  # submit -> on_job_event: stop a running job
JOB_PREEMPT_REQUESTED = "io.sentinels.job.preempt_requested"  # schedule -> on_job_event: stop and requeue a victim
CAPACITY_CHANGED = "io.sentinels.capacity.changed"
CAPACITY_EXHAUSTED = "io.sentinels.capacity.exhausted"
CAPACITY_RECOVERED = "io.sentinels.capacity.recovered"
PING = "dev.knative.sources.ping"
APISERVER_ADD = "dev.knative.apiserver.resource.add"
APISERVER_UPDATE = "dev.knative.apiserver.resource.update"
APISERVER_DELETE = "dev.knative.apiserver.resource.delete"

WRITE_TYPES = (JOB_SUBMIT, JOB_CANCEL, JOB_REPRIORITIZE)


def subject_token(event_type: str) -> str:
    """The NATS subject token for an event type (dots are subject separators)."""
    return event_type.replace(".", "_")


def envelope(event_type: str, source: str, event_id: str, data: dict, time: str, subject: str | None = None) -> dict:
    """A structured-mode CloudEvent as a dict (specversion 1.0, JSON data)."""
    ce = {"specversion": "1.0", "type": event_type, "source": source, "id": event_id,
          "time": time, "datacontenttype": "application/json", "data": data}
    if subject:
        ce["subject"] = subject
    return ce


def binary_headers(event: dict) -> dict[str, str]:
    """HTTP headers of a CloudEvent in binary content mode: `ce-<attribute>` for each set
    attribute, `content-type` from datacontenttype (JSON by default); `data` goes in the body."""
    headers = {f"ce-{k}": str(v) for k, v in event.items() if k not in ("data", "datacontenttype") and v is not None}
    headers["content-type"] = event.get("datacontenttype") or "application/json"
    return headers
