"""The local executor's record of one job run (`jobs/<id>/state.json`): its declared shape.

The executor keeps one `RunState` per job (the Job object's facts) with the current
attempt's `PodState` (the pod's facts); both are written to disk after every change and
read back by the next executor. Every field any code writes is listed here: `Kubelet._save`
refuses a state with a field these do not declare.
"""

from typing import Any, NotRequired, Optional, TypedDict


class PodState(TypedDict):
    attempt: int  # 1, 2, ... within this run (the Job's backoff retries)
    created: str  # ISO times
    started: Optional[str]
    finished: Optional[str]
    phase: str  # Pending | Running | Succeeded | Failed
    exit_code: Optional[int]
    terminated_reason: Optional[str]
    message: Optional[str]
    pid: Optional[int]
    pgid: Optional[int]
    proc_start: Optional[int]  # the process's start time (clock ticks), so a recycled pid is not taken for it
    gpus: list[int]  # device indices given to it
    rv: NotRequired[int]  # resourceVersion of the pod object last emitted
    runtime: NotRequired[str]  # process | podman | docker (runtimes.Runtime.name)
    # a container engine's facts (embedded.engine)
    container: NotRequired[str]  # the container's name
    container_id: NotRequired[str]  # <engine>://<id> once it runs
    oom_kills: NotRequired[int]  # the host's OOM kill count at start, to tell an OOM kill
    memory_limit: NotRequired[int]
    # an image pull that failed and is tried again
    pulls: NotRequired[int]
    retry_at: NotRequired[Optional[float]]  # wall-clock seconds
    waiting_reason: NotRequired[Optional[str]]  # ErrImagePull, ImagePullBackOff
    waiting_message: NotRequired[Optional[str]]
    # the pod's own status.reason / message when the kubelet ended it (DeadlineExceeded)
    pod_reason: NotRequired[str]
    pod_message: NotRequired[str]


class RunState(TypedDict):
    job: str  # the job id
    record: dict[str, Any]  # the job record as launched
    extra_env: dict[str, str]
    generation: int  # the record's attempts at launch: a requeued job is a new run
    created: str
    started: Optional[str]
    finished: Optional[str]
    deadline: Optional[float]  # wall-clock seconds after which the run is stopped (spec timeout)
    outcome: Optional[str]  # None while live, then Complete | Failed
    reason: Optional[str]
    message: Optional[str]
    succeeded: int  # pod counts, as a Job's status has them
    failed: int
    attempt: int  # the current pod's attempt number
    pod: Optional[PodState]
    stopping: Optional[dict[str, Any]]  # a stop in progress: {reason, message, kill_at}
    job_rv: int  # resourceVersion of the Job object last emitted
    outbox: list[dict[str, Any]]  # ApiServerSource events not yet published


def undeclared(state: dict) -> list[str]:
    """Fields of a run's state (and of its pod) that RunState / PodState do not declare."""
    bad = sorted(set(state) - set(RunState.__annotations__))
    pod = state.get("pod")
    if isinstance(pod, dict):
        bad += sorted(f"pod.{k}" for k in set(pod) - set(PodState.__annotations__))
    return bad
