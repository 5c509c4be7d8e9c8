"""What a Kubernetes change means for a job (DESIGN §4, §6): pure, no I/O.

The ApiServerSource (Resource mode) and the local executor deliver whole Job, Pod and
Node objects with `status`; `observe()` turns one of them into an `Observation` the
lifecycle function can act on: a job ran, finished, failed on its own, was disrupted
(evicted, preempted, node lost: requeue, do not count), or a node came or went.

Events arrive at least once and out of order: an Observation carries the object's uid,
resourceVersion and the job's attempt so the caller can drop stale ones; `what` says
where the object is now, not how it got there. Jobs carry the final verdict (retries
spent); a Pod's "failed" is one attempt's failure with its exit code.
"""

from dataclasses import dataclass
from typing import Mapping, Optional

from .events import APISERVER_ADD, APISERVER_DELETE, APISERVER_UPDATE
from .job import is_job_id
from .names import ATTEMPT_ANNOTATION, CONTAINER, JOB_ID_LABEL

COMPONENT_LABEL, BUILD = "sentinels.io/component", "build"  # a Job that builds the job's image
IMAGE_ANNOTATION = "sentinels.io/image"  # on a build Job: the image it made (name:tag)
IMAGE_ID_ANNOTATION = "sentinels.io/image-id"  # ... and its id or digest (sha256:...)

RUNNING, SUCCEEDED, FAILED, DISRUPTED, DELETED, PENDING = "running", "succeeded", "failed", "disrupted", "deleted", "pending"
NODE_ADDED, NODE_REMOVED = "node-added", "node-removed"
NODE_CORDONED, NODE_UNCORDONED = "node-cordoned", "node-uncordoned"
NODE_NOTREADY, NODE_READY = "node-notready", "node-ready"
WHATS = (RUNNING, SUCCEEDED, FAILED, DISRUPTED, DELETED, PENDING, NODE_ADDED, NODE_REMOVED,
         NODE_CORDONED, NODE_UNCORDONED, NODE_NOTREADY, NODE_READY)

IMAGE_PULL = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable")
CANNOT_START = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError", "PreStartHookError")
# DisruptionTarget condition reasons (k8s 1.26+) in plain words
DISRUPTIONS = {
    "EvictionByEvictionAPI": "evicted",
    "PreemptionByScheduler": "preempted",
    "PreemptionByKubeScheduler": "preempted",
    "DeletionByTaintManager": "node lost or tainted",
    "DeletionByPodGC": "node lost",
    "TerminationByKubelet": "evicted by the node",
}
EVICTED_REASONS = ("Evicted", "NodeLost", "Shutdown", "NodeShutdown", "Terminated", "Preempting")
NODE_REJECTED = ("UnexpectedAdmissionError", "NodeAffinity", "InvalidNodeInfo", "OutOfpods")


@dataclass(frozen=True)
class Observation:
    kind: str  # "Job" | "Pod" | "Node"
    what: str  # one of WHATS
    name: Optional[str] = None  # the object's name
    job_id: Optional[str] = None  # from label sentinels.io/job-id; None for nodes or foreign objects
    uid: Optional[str] = None
    resource_version: Optional[str] = None
    reason: str = ""  # human readable
    node_name: Optional[str] = None  # pods: where it runs
    exit_code: Optional[int] = None  # pods: the main container's exit code once terminated
    attempt: Optional[int] = None  # annotation sentinels.io/attempt (which run of the job)
    problem: bool = False  # pending pods: cannot progress without help (image pull, bad config)
    deleted: bool = False  # the event was a deletion
    node_state: Optional[str] = None  # nodes: "ready" | "notready" | "cordoned" (keep it to pass back)
    build: bool = False  # the object builds the job's image (label sentinels.io/component: build)
    image: Optional[str] = None  # build Jobs: the image made
    image_id: Optional[str] = None  # build Jobs: its id or digest


def _meta(obj: Mapping) -> Mapping:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _base(kind: str, obj: Mapping) -> dict:
    meta = _meta(obj)
    raw_labels, raw_annotations = meta.get("labels"), meta.get("annotations")
    labels: Mapping = raw_labels if isinstance(raw_labels, Mapping) else {}
    annotations: Mapping = raw_annotations if isinstance(raw_annotations, Mapping) else {}
    job_id = labels.get(JOB_ID_LABEL) if kind != "Node" else None
    attempt = annotations.get(ATTEMPT_ANNOTATION)
    image, image_id = annotations.get(IMAGE_ANNOTATION), annotations.get(IMAGE_ID_ANNOTATION)
    return {"kind": kind, "name": meta.get("name"), "uid": meta.get("uid"),
            "resource_version": meta.get("resourceVersion"),
            "job_id": job_id if is_job_id(job_id) else None,
            "attempt": int(attempt) if isinstance(attempt, str) and attempt.isdigit() else None,
            "build": kind != "Node" and labels.get(COMPONENT_LABEL) == BUILD,
            "image": image if isinstance(image, str) and image else None,
            "image_id": image_id if isinstance(image_id, str) and image_id else None}


def _conditions(status: Mapping) -> dict:
    return {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, Mapping)}


def _true(conds: dict, kind: str) -> Optional[Mapping]:
    c = conds.get(kind)
    return c if c is not None and c.get("status") == "True" else None


def _words(*parts) -> str:
    return ": ".join(str(p).strip() for p in parts if p and str(p).strip())


# --- Jobs --------------------------------------------------------------------------

def _job_failure(cond: Mapping) -> str:
    reason, message = cond.get("reason"), cond.get("message")
    if reason == "DeadlineExceeded":
        return "deadline exceeded (activeDeadlineSeconds)"
    if reason == "BackoffLimitExceeded":
        return "BackoffLimitExceeded"
    return _words(reason or "failed", message)


def _job(event_type: str, obj: Mapping, base: dict) -> Optional[Observation]:
    conds = _conditions(obj.get("status") or {})
    deleted = event_type == APISERVER_DELETE
    failed, complete = _true(conds, "Failed"), _true(conds, "Complete")
    if failed:
        return Observation(what=FAILED, reason=_job_failure(failed), deleted=deleted, **base)
    if complete:
        return Observation(what=SUCCEEDED, reason="completed", deleted=deleted, **base)
    if deleted:
        return Observation(what=DELETED, reason="Job deleted before it finished", deleted=True, **base)
    return None  # created or progressing: its pods say more


# --- Pods --------------------------------------------------------------------------

def _container_statuses(status: Mapping) -> list:
    return [c for c in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
            if isinstance(c, Mapping)]


def _terminated(status: Mapping) -> Optional[Mapping]:
    """The main container's termination (else the first abnormal one, else any)."""
    ends = [(c.get("name"), (c.get("state") or {}).get("terminated")) for c in status.get("containerStatuses") or []
            if isinstance(c, Mapping) and (c.get("state") or {}).get("terminated")]
    for name, t in ends:
        if name == CONTAINER:
            return t
    for _, t in ends:
        if t and (t.get("exitCode") or t.get("reason") == "OOMKilled"):
            return t
    return ends[0][1] if ends else None


def _exit_reason(t: Mapping) -> str:
    code, reason = t.get("exitCode"), t.get("reason")
    if reason == "OOMKilled":
        return f"OOMKilled (exit {code})"
    if reason in (None, "", "Error", "Completed"):
        return f"exit code {code}"
    return _words(f"{reason} (exit {code})", t.get("message"))


def _disruption(status: Mapping, conds: dict) -> Optional[str]:
    target = _true(conds, "DisruptionTarget")
    if target:
        return _words(DISRUPTIONS.get(str(target.get("reason")), "disrupted"), target.get("reason"), target.get("message"))
    reason, message = status.get("reason"), status.get("message")
    if status.get("phase") == "Failed" and reason in EVICTED_REASONS:
        return _words("evicted", reason, message)
    if status.get("phase") == "Failed" and reason and (reason in NODE_REJECTED or reason.startswith("OutOf")):
        return _words("rejected by the node before it started", reason, message)
    if status.get("phase") == "Unknown":
        return _words("node lost (pod status Unknown)", message)
    return None


def _pending(status: Mapping, conds: dict) -> tuple[str, bool]:
    for c in _container_statuses(status):
        waiting = (c.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in IMAGE_PULL:
            return _words(f"image pull failed: {reason}", waiting.get("message")), True
        if reason in CANNOT_START:
            return _words(f"cannot start: {reason}", waiting.get("message")), True
    scheduled = conds.get("PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        return _words(f"not scheduled: {scheduled.get('reason') or 'waiting'}", scheduled.get("message")), False
    for c in _container_statuses(status):
        reason = ((c.get("state") or {}).get("waiting") or {}).get("reason")
        if reason:
            return f"starting ({reason})", False
    return "pending", False


def _pod(event_type: str, obj: Mapping, base: dict) -> Optional[Observation]:
    status = obj.get("status") or {}
    conds = _conditions(status)
    base = {**base, "node_name": (obj.get("spec") or {}).get("nodeName"), "deleted": event_type == APISERVER_DELETE}
    disrupted = _disruption(status, conds)
    if disrupted:
        return Observation(what=DISRUPTED, reason=disrupted, **base)
    if base["deleted"]:
        return None  # its Job reports what a deletion means (finished, cancelled, retried)
    phase = status.get("phase")
    if phase in ("Succeeded", "Failed") and _meta(obj).get("deletionTimestamp"):
        return None  # killed because it was deleted (deadline, cancel, requeue): its Job says why
    ended = _terminated(status)
    code = ended.get("exitCode") if ended else None
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    if phase == "Succeeded":
        return Observation(what=SUCCEEDED, reason="completed", exit_code=0 if code is None else code, **base)
    if phase == "Failed":
        if status.get("reason") == "DeadlineExceeded":
            return Observation(what=FAILED, reason="deadline exceeded (activeDeadlineSeconds)", exit_code=code, **base)
        reason = _exit_reason(ended) if ended else _words("failed", status.get("reason"), status.get("message"))
        return Observation(what=FAILED, reason=reason, exit_code=code, **base)
    if phase == "Running":
        return Observation(what=RUNNING, reason=f"running on {base['node_name']}", **base)
    if phase == "Pending":
        reason, problem = _pending(status, conds)
        return Observation(what=PENDING, reason=reason, problem=problem, **base)
    return None


# --- Nodes -------------------------------------------------------------------------

def node_state(obj: Mapping) -> tuple[str, str]:
    """("ready" | "notready" | "cordoned", why) for a Node object."""
    status = obj.get("status") or {}
    ready = _conditions(status).get("Ready")
    if not ready or ready.get("status") != "True":
        why = _words("NotReady", (ready or {}).get("reason") or "no Ready condition", (ready or {}).get("message"))
        return "notready", why
    if (obj.get("spec") or {}).get("unschedulable"):
        return "cordoned", "cordoned (spec.unschedulable)"
    return "ready", "Ready and schedulable"


_STATE_WHAT = {"ready": NODE_READY, "notready": NODE_NOTREADY, "cordoned": NODE_CORDONED}


def _node(event_type: str, obj: Mapping, base: dict, previous: Optional[str]) -> Optional[Observation]:
    state, why = node_state(obj)
    base = {**base, "node_name": base["name"], "node_state": state}
    if event_type == APISERVER_ADD:
        return Observation(what=NODE_ADDED, reason=_words("added", why), **base)
    if event_type == APISERVER_DELETE:
        return Observation(what=NODE_REMOVED, reason="removed from the cluster", deleted=True, **base)
    if previous == state:
        return None  # a status refresh that changes nothing for placement
    what = NODE_UNCORDONED if (previous == "cordoned" and state == "ready") else _STATE_WHAT[state]
    return Observation(what=what, reason=why, **base)


def observe(event_type: str, obj: dict, previous_node_state: Optional[str] = None) -> Optional[Observation]:
    """Interpret one ApiServerSource event; None when it means nothing for sentinels.

    `previous_node_state` (from an earlier Observation's `node_state`) lets a Node update
    that changes nothing return None, and tells an uncordon from a node becoming Ready;
    without it an update reports the node's current state.
    """
    if event_type not in (APISERVER_ADD, APISERVER_UPDATE, APISERVER_DELETE) or not isinstance(obj, Mapping):
        return None
    kind = obj.get("kind")
    if kind not in ("Job", "Pod", "Node"):
        return None
    base = _base(kind, obj)
    if kind == "Job":
        return _job(event_type, obj, base)
    if kind == "Pod":
        return _pod(event_type, obj, base)
    return _node(event_type, obj, base, previous_node_state)
