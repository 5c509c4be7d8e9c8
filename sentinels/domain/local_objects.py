"""Kubernetes-shaped Job and Pod objects for jobs that run as local processes.

The local executor reports its jobs exactly as a Knative ApiServerSource (Resource mode)
reports real ones, so the lifecycle function has one code path for Kubernetes and this
machine. Pure: the executor passes every time, counter and exit code in `info`.

`info` for `job_object` (all optional except `created`):
  generation  the record's `attempts` when launched: a requeued job is a new Job uid, and
              the annotation sentinels.io/attempt lets the lifecycle drop a stale run's events
  created, started, finished   ISO times; resource_version  an int, monotonic
  active, ready, succeeded, failed   pod counts
  outcome  None | "Complete" | "Failed";  reason, message  for a "Failed" outcome
`info` for `pod_object`:
  generation, created, started, finished, resource_version,
  phase  "Pending" | "Running" | "Succeeded" | "Failed";  pid;  exit_code;
  terminated_reason  (default Completed / Error from the exit code);  message
  waiting_reason, waiting_message  a Pending pod's trouble (ErrImagePull, ImagePullBackOff, ...)
  container_id  "podman://<id>" for a container (default process://<pid>)
  pod_reason, pod_message  the pod's own status.reason / message (DeadlineExceeded)
"""

import hashlib
import uuid

from .events import APISERVER_ADD, APISERVER_DELETE, APISERVER_UPDATE, envelope
from .job import base_labels
from .names import ATTEMPT_ANNOTATION, CONTAINER
from .quantity import format_cpu, format_memory

NAMESPACE = "local"
NODE_NAME = "local"
SOURCE = "sentinels/local-executor"
_UID_NS = uuid.UUID("6f1c7a52-5d0e-4f57-9a5e-3c1d2b8e0a41")
_POD_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generated names
_EVENT_TYPES = {"add": APISERVER_ADD, "update": APISERVER_UPDATE, "delete": APISERVER_DELETE}

# Job condition reasons and messages, as the Job controller writes them
COMPLETE_REASON, COMPLETE_MESSAGE = "CompletionsReached", "Reached expected number of succeeded pods"
BACKOFF_REASON, BACKOFF_MESSAGE = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
DEADLINE_REASON, DEADLINE_MESSAGE = "DeadlineExceeded", "Job was active longer than specified deadline"
POD_DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
# ... and the ones only the local executor writes (no Kubernetes equivalent)
STOPPED_REASON, STOPPED_MESSAGE = "Stopped", "stopped"
LOST_REASON, LOST_MESSAGE = "ExecutorLost", "lost while the executor was down"
NO_COMMAND_REASON, NO_COMMAND_MESSAGE = "NoCommand", "the local runtime needs a command"
# a container whose end nobody saw: the kubelet reports exit 137 with this reason
UNKNOWN_EXIT_CODE, UNKNOWN_REASON = 137, "ContainerStatusUnknown"
UNKNOWN_MESSAGE = "The container could not be located when the pod was terminated"


def k8s_time(iso: str | None) -> str | None:
    """Kubernetes timestamps have whole seconds: 2026-01-13T18:40:00Z."""
    if not iso:
        return None
    return iso[:19] + "Z"


def job_uid(job_id: str, generation: int = 0) -> str:
    return str(uuid.uuid5(_UID_NS, f"job/{job_id}/{generation}"))


def pod_uid(job_id: str, attempt: int) -> str:
    return str(uuid.uuid5(_UID_NS, f"pod/{job_id}/{attempt}"))


def pod_name(record: dict, attempt: int) -> str:
    """`<job name>-<5 chars>` like a Job controller's generated pod name, stable per attempt."""
    digest = hashlib.sha256(pod_uid(record["id"], attempt).encode()).digest()
    suffix = "".join(_POD_SUFFIX_ALPHABET[b % len(_POD_SUFFIX_ALPHABET)] for b in digest[:5])
    return f"{record['k8s_job']}-{suffix}"


def _labels(record: dict) -> dict:
    spec = record.get("spec") or {}
    return {**(spec.get("labels") or {}), **base_labels(record)}


def _pod_labels(record: dict, uid: str) -> dict:
    return {**_labels(record), "batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": record["k8s_job"],
            "controller-uid": uid, "job-name": record["k8s_job"]}


def _resources(spec: dict) -> dict:
    res = spec.get("resources") or {}
    amounts = {}
    if res.get("cpu_millis"):
        amounts["cpu"] = format_cpu(res["cpu_millis"])
    if res.get("memory_bytes"):
        amounts["memory"] = format_memory(res["memory_bytes"])
    if res.get("gpu"):
        amounts["nvidia.com/gpu"] = str(res["gpu"])
    return {"limits": dict(amounts), "requests": dict(amounts)} if amounts else {}


def _container(record: dict) -> dict:
    spec = record.get("spec") or {}
    container = {"name": CONTAINER, "image": spec.get("image") or "local",
                 "env": [{"name": "SENTINELS_JOB_ID", "value": record["id"]}]
                 + [{"name": k, "value": str(v)} for k, v in (spec.get("env") or {}).items()],
                 "resources": _resources(spec), "terminationMessagePath": "/dev/termination-log",
                 "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}
    if spec.get("command"):
        container["command"] = list(spec["command"])
    if spec.get("args"):
        container["args"] = list(spec["args"])
    return container


def _pod_spec(record: dict, node: str | None = None) -> dict:
    spec = record.get("spec") or {}
    out = {"containers": [_container(record)], "restartPolicy": "Never", "terminationGracePeriodSeconds": 30,
           "dnsPolicy": "ClusterFirst", "automountServiceAccountToken": False, "schedulerName": "default-scheduler",
           "securityContext": {}}
    if spec.get("node_selector"):
        out["nodeSelector"] = dict(spec["node_selector"])
    if node:
        out["nodeName"] = node
    return out


def _annotations(info: dict) -> dict:
    """Which run of the job (the record's `attempts`), as the Kubernetes adapter writes it,
    plus what the caller adds (a build Job: the image it made)."""
    return {ATTEMPT_ANNOTATION: str(int(info.get("generation") or 0)), **(info.get("annotations") or {})}


def _metadata(name: str, uid: str, info: dict, labels: dict) -> dict:
    return {"name": name, "namespace": NAMESPACE, "uid": uid, "resourceVersion": str(int(info.get("resource_version") or 1)),
            "generation": 1, "creationTimestamp": k8s_time(info.get("created")), "labels": labels,
            "annotations": _annotations(info)}


def _condition(kind: str, status: bool, at: str | None, reason: str | None = None, message: str | None = None,
               probe: bool = True) -> dict:
    cond = {"type": kind, "status": "True" if status else "False", "lastProbeTime": at if probe else None,
            "lastTransitionTime": at}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def job_object(record: dict, info: dict) -> dict:
    """A batch/v1 Job as the API server would show it for this local run."""
    spec = record.get("spec") or {}
    uid = job_uid(record["id"], info.get("generation", 0))
    job_spec = {
        "parallelism": 1, "completions": 1, "backoffLimit": int(spec.get("retries") or 0),
        "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
        "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}, "manualSelector": False,
        "template": {"metadata": {"labels": _pod_labels(record, uid), "annotations": _annotations(info)},
                     "spec": _pod_spec(record)},
        "completionMode": "NonIndexed", "suspend": False, "podReplacementPolicy": "Failed",
    }
    if spec.get("timeout_seconds"):
        job_spec["activeDeadlineSeconds"] = int(spec["timeout_seconds"])
    finished = k8s_time(info.get("finished"))
    outcome = info.get("outcome")
    status: dict = {}
    if outcome == "Complete":
        status["conditions"] = [_condition(t, True, finished, COMPLETE_REASON, COMPLETE_MESSAGE)
                                for t in ("SuccessCriteriaMet", "Complete")]
    elif outcome == "Failed":
        reason, message = info.get("reason") or BACKOFF_REASON, info.get("message") or BACKOFF_MESSAGE
        status["conditions"] = [_condition(t, True, finished, reason, message) for t in ("FailureTarget", "Failed")]
    if info.get("started"):
        status["startTime"] = k8s_time(info["started"])
    if outcome == "Complete":
        status["completionTime"] = finished
    for key in ("active", "succeeded", "failed"):
        if info.get(key):
            status[key] = int(info[key])
    status.update(terminating=0, uncountedTerminatedPods={}, ready=int(info.get("ready") or 0))
    labels = {**_labels(record), "batch.kubernetes.io/job-name": record["k8s_job"]}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata(record["k8s_job"], uid, info, labels),
            "spec": job_spec, "status": status}


def _container_state(info: dict, container_id: str | None) -> dict:
    phase = info.get("phase", "Pending")
    started = k8s_time(info.get("started"))
    if phase == "Running":
        return {"running": {"startedAt": started}}
    if phase in ("Succeeded", "Failed"):
        code, reason, message = info.get("exit_code"), info.get("terminated_reason"), info.get("message")
        if code is None:  # nobody saw it end
            code, reason, message = UNKNOWN_EXIT_CODE, reason or UNKNOWN_REASON, message or UNKNOWN_MESSAGE
        reason = reason or ("Completed" if code == 0 else "Error")
        done = {"exitCode": int(code), "reason": reason, "startedAt": started, "finishedAt": k8s_time(info.get("finished"))}
        if message:
            done["message"] = message
        if container_id:
            done["containerID"] = container_id
        return {"terminated": done}
    if info.get("waiting_reason"):  # ErrImagePull, ImagePullBackOff, ... with the engine's words
        return {"waiting": {"reason": info["waiting_reason"], "message": info.get("waiting_message") or ""}}
    return {"waiting": {"reason": "ContainerCreating"}}


def _pod_conditions(phase: str, created: str | None, started: str | None, finished: str | None) -> list[dict]:
    running = phase == "Running"
    done = {"Succeeded": "PodCompleted", "Failed": "PodFailed"}.get(phase)
    ready_at = finished if done else started or created
    return [
        _condition("PodReadyToStartContainers", running, finished if done else started or created, probe=False),
        _condition("Initialized", True, created, "PodCompleted" if phase == "Succeeded" else None, probe=False),
        _condition("Ready", running, ready_at, done, probe=False),
        _condition("ContainersReady", running, ready_at, done, probe=False),
        _condition("PodScheduled", True, created, probe=False),
    ]


def pod_object(record: dict, attempt: int, info: dict) -> dict:
    """The v1 Pod of one attempt (1-based) of this local run, owned by its Job."""
    uid, owner_uid = pod_uid(record["id"], attempt), job_uid(record["id"], info.get("generation", 0))
    name = pod_name(record, attempt)
    phase = info.get("phase", "Pending")
    created, started, finished = (k8s_time(info.get(k)) for k in ("created", "started", "finished"))
    meta = _metadata(name, uid, info, _pod_labels(record, owner_uid))
    meta["generateName"] = f"{record['k8s_job']}-"
    meta["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": record["k8s_job"], "uid": owner_uid,
                                "controller": True, "blockOwnerDeletion": True}]
    if phase in ("Pending", "Running"):
        meta["finalizers"] = ["batch.kubernetes.io/job-tracking"]
    container = _container(record)
    container_id = info.get("container_id") or (f"process://{info['pid']}" if info.get("pid") else None)
    cstatus = {"name": CONTAINER, "image": container["image"], "imageID": "", "ready": phase == "Running",
               "restartCount": 0, "started": phase == "Running", "lastState": {},
               "state": _container_state(info, container_id)}
    if container_id:
        cstatus["containerID"] = container_id
    status = {"phase": phase, "conditions": _pod_conditions(phase, created, started, finished),
              **({"reason": info["pod_reason"], "message": info.get("pod_message") or ""} if info.get("pod_reason") else {}),
              "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}], "qosClass": "Guaranteed" if container["resources"] else "BestEffort",
              "containerStatuses": [cstatus]}
    if started or created:
        status["startTime"] = started or created
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": _pod_spec(record, NODE_NAME), "status": status}


def subject_of(obj: dict) -> str:
    """The ApiServerSource subject: /apis/<group>/<version>/... or /api/v1/... for the core group."""
    meta, api_version = obj["metadata"], obj["apiVersion"]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{meta['namespace']}/{obj['kind'].lower()}s/{meta['name']}"


def apiserver_event(event_type: str, obj: dict, now: str) -> dict:
    """A CloudEvent as an ApiServerSource in Resource mode emits it: data is the whole object.

    `event_type` is add / update / delete or the full `dev.knative.apiserver.resource.*`
    type. The id is derived from the object's uid, resourceVersion and the type, so it is
    unique per change and a re-sent change keeps its id (JetStream drops the duplicate).
    """
    ce_type = _EVENT_TYPES.get(event_type, event_type)
    if ce_type not in _EVENT_TYPES.values():
        raise ValueError(f"unknown ApiServerSource event type {event_type!r} (add, update or delete)")
    meta = obj["metadata"]
    event_id = str(uuid.uuid5(_UID_NS, f"{ce_type}/{meta['uid']}/{meta['resourceVersion']}"))
    event = envelope(ce_type, SOURCE, event_id, obj, now, subject_of(obj))
    event.update(kind=obj["kind"], name=meta["name"], namespace=meta["namespace"])
    return event
