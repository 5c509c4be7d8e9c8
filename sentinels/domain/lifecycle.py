"""What an observation means for a job record: pure, no I/O.

`decide()` maps one Observation (from `observe.py`) and the job's current record to a
`Step`: the state to move to (through the one guarded `states.transition`), the reason,
and the side effects the lifecycle function must carry out. Stale and duplicate
observations (older attempt, terminal job, a state the table does not allow) give
None, so a late event never moves a job backwards.
"""

from dataclasses import dataclass, field
from typing import Optional

from . import duration
from . import observe as ob
from . import states
from .errors import ConfigError
from .names import job_name

REQUEUE, STOP, LOGS, CAPACITY, HISTORY = "requeue", "stop", "logs", "capacity", "history"
ENQUEUE = "enqueue"  # a built job joins the queue (in submission order, not at the front)
PULL_ERROR, PULL_BACKOFF = "image pull failed: ErrImagePull", "image pull failed: ImagePullBackOff"
BACKOFF_LIMIT = "BackoffLimitExceeded"  # a Job's verdict that names no cause: the last pod has it


@dataclass(frozen=True)
class Policy:
    max_attempts: int = 3  # runs cut short by evictions / lost nodes before the job is failed
    image_pull_grace_seconds: float = 300.0  # a pod stuck pulling its image this long fails the job


@dataclass(frozen=True)
class LifecycleConfig:
    """The `lifecycle:` block of config.yaml, validated when `sentinels up` starts."""

    policy: Policy = Policy()
    outputs_root: Optional[str] = None  # where finished jobs' outputs are readable (Kubernetes)
    reconcile_seconds: float = 30.0  # how often active records are compared with the cluster's Jobs

    KEYS = ("max_attempts", "image_pull_grace_seconds", "outputs_root", "reconcile_seconds")

    @classmethod
    def from_dict(cls, raw: Optional[dict]) -> "LifecycleConfig":
        raw = raw or {}
        if not isinstance(raw, dict):
            raise ConfigError("lifecycle: expected a mapping (max_attempts, image_pull_grace_seconds, outputs_root)")
        unknown = sorted(str(k) for k in raw if k not in cls.KEYS)
        if unknown:
            raise ConfigError(f"lifecycle: unknown key(s) {', '.join(unknown)} (known: {', '.join(cls.KEYS)})")
        base = Policy()
        try:
            policy = Policy(max_attempts=int(raw.get("max_attempts", base.max_attempts)),
                            image_pull_grace_seconds=float(raw.get("image_pull_grace_seconds",
                                                                   base.image_pull_grace_seconds)))
            reconcile = float(raw.get("reconcile_seconds", cls.reconcile_seconds))
        except (TypeError, ValueError):
            raise ConfigError("lifecycle: max_attempts and image_pull_grace_seconds must be numbers "
                              "(and reconcile_seconds)") from None
        root = raw.get("outputs_root")
        if root is not None and not isinstance(root, str):
            raise ConfigError(f"lifecycle: outputs_root must be a path, not {root!r}")
        return cls(policy, root or None, reconcile)


@dataclass(frozen=True)
class Step:
    to: Optional[str]  # new state, or None: only `reason` changes
    reason: str
    effects: tuple = ()
    changes: dict = field(default_factory=dict)
    through: Optional[str] = None  # a state passed on the way (RUNNING, when its event came late)




def _stale(record: dict, obs: ob.Observation) -> bool:
    if obs.attempt is not None and obs.attempt != record.get("attempts", 1):
        return True
    return obs.kind == "Job" and obs.name is not None and obs.name != record.get("k8s_job")


def requeue_or_fail(record: dict, reason: str, policy: Policy, already_stopped: bool) -> Step:
    """Back to the queue for another attempt, or FAILED once the attempts are spent."""
    attempts = record.get("attempts", 1) + 1
    stop = () if already_stopped else (STOP,)
    if attempts > policy.max_attempts:
        return Step(states.FAILED, f"{reason}; gave up after {attempts - 1} attempts cut short by the infrastructure",
                    stop + (CAPACITY,))
    return Step(states.QUEUED, f"requeued after: {reason}", stop + (REQUEUE, CAPACITY),
                {"k8s_job": job_name(record["id"], attempts), "node": None})


def preempted(record: dict) -> Optional[Step]:
    """Back to the queue after a preemption the scheduler asked for: never a failure, and
    it does not use up an attempt budget (the attempt number still grows, so the old
    attempt's late events are recognised as stale)."""
    by = record.get("preempted_by")
    if record["state"] not in states.ACTIVE or not by or record.get("cancel_requested"):
        return None
    attempts = record.get("attempts", 1) + 1
    who = record.get("preempted_note") or f"preempted by {by}"  # who took the room: id, class, owner
    return Step(states.QUEUED, f"{who}; requeued at the front of {record['priority']}",
                (REQUEUE, CAPACITY), {"k8s_job": job_name(record["id"], attempts), "node": None,
                                      "preempted_by": None, "preemptions": record.get("preemptions", 0) + 1})


def built(record: dict, obs: ob.Observation) -> Optional[Step]:
    """What the Job building a job's image means for it: queued with the image, or failed."""
    if record["state"] != states.BUILDING or obs.kind != "Job" or obs.name != record.get("build_job"):
        return None
    if record.get("cancel_requested"):
        return Step(states.CANCELLED, record.get("reason") or "cancelled") if obs.what in (
            ob.SUCCEEDED, ob.FAILED, ob.DELETED) else None
    if obs.what == ob.SUCCEEDED and obs.image:
        return Step(states.QUEUED, f"built {obs.image}" + (f" ({obs.image_id})" if obs.image_id else ""), (ENQUEUE,),
                    {"spec": {**record["spec"], "image": obs.image}, "image_id": obs.image_id})
    if obs.what == ob.SUCCEEDED:
        return Step(states.FAILED, "build failed: the build Job says nothing about the image it made")
    if obs.what == ob.FAILED:
        return Step(states.FAILED, f"build failed: {obs.reason}")
    if obs.what == ob.DELETED:
        return Step(states.FAILED, "build failed: its Job was deleted before it finished")
    return None


def needs_record(obs: ob.Observation) -> bool:
    """Whether `decide` can take anything from this observation: a pod that is only starting
    (pending with no problem: just created, bound, creating its container) never moves a
    record, so its events need no read of the store (two of a job's dozen events)."""
    return not (obs.what == ob.PENDING and not obs.problem and not obs.build)


def decide(record: dict, obs: ob.Observation, now: float, policy: Policy = Policy(),
           scheduled_at: Optional[float] = None) -> Optional[Step]:
    """The step this observation asks for, or None (stale, duplicate, or nothing to do)."""
    state = record["state"]
    if obs.build:
        return built(record, obs)
    if state in states.TERMINAL or state == states.BUILDING or _stale(record, obs):
        return None
    what = obs.what
    if what == ob.RUNNING:  # the pod names its node: a record repaired without one gets it here
        node = {"node": obs.node_name} if obs.node_name and not record.get("node") else {}
        return Step(states.RUNNING, obs.reason, (), node) if state == states.SCHEDULED else None
    ran = states.RUNNING if state == states.SCHEDULED else None  # it ended, so it ran
    if what == ob.SUCCEEDED:
        return Step(states.SUCCEEDED, "completed", (CAPACITY,), {"exit_code": obs.exit_code or 0}, ran) \
            if state in states.ACTIVE else None
    if what == ob.FAILED:
        if state not in states.ACTIVE:
            return None
        if record.get("preempted_by"):  # ended by the preemption's stop (its end can beat the requeue)
            return preempted(record)
        code = {"exit_code": obs.exit_code} if obs.exit_code is not None else {}
        if obs.deadline:
            return Step(states.FAILED, timed_out(record), (LOGS, CAPACITY), code,
                        ran if obs.exit_code is not None else None)
        retries = record["spec"].get("retries", 0)
        if obs.kind == "Pod":  # one run ended; the last one allowed ends the job
            mine = runs_of(record)
            if any(r.get("pod") == obs.uid for r in mine):
                return None  # this run's end is recorded already
            n = len(mine) + 1
            run = {"run": n, "generation": record.get("attempts", 1), "exit_code": obs.exit_code,
                   "reason": obs.reason, "pod": obs.uid}
            changes = {**code, "runs": list(record.get("runs") or []) + [run]}
            if n <= retries:
                return Step(None, f"attempt {n} failed ({obs.reason}); retried ({n} of {retries} "
                                  f"retr{'y' if retries == 1 else 'ies'} used)", (HISTORY,), changes)
            reason = obs.reason if n == 1 else f"{obs.reason} (attempt {n} of {n})"
            return Step(states.FAILED, reason, (LOGS, CAPACITY), changes, ran if obs.exit_code is not None else None)
        mine = runs_of(record)
        if mine and obs.reason == "BackoffLimitExceeded":
            last = mine[-1]
            reason = last["reason"] if len(mine) == 1 else f"{last['reason']} (attempt {len(mine)} of {len(mine)})"
            return Step(states.FAILED, reason, (LOGS, CAPACITY), code)
        return Step(states.FAILED, obs.reason, (LOGS, CAPACITY), code, ran if obs.exit_code is not None else None)
    if what == ob.DISRUPTED and record.get("preempted_by") and state in states.ACTIVE:
        return preempted(record)  # our own preemption's DisruptionTarget (Kubernetes)
    if what == ob.DISRUPTED:
        return requeue_or_fail(record, obs.reason, policy, False) if state in states.ACTIVE else None
    if what == ob.DELETED:
        if state not in states.ACTIVE:
            return None
        if record.get("cancel_requested"):
            return Step(states.CANCELLED, record.get("reason") or "cancelled", (CAPACITY,))
        if record.get("preempted_by"):
            return preempted(record)
        return requeue_or_fail(record, "its Kubernetes Job was deleted outside sentinels", policy, True)
    if what == ob.PENDING and obs.problem and state in states.ACTIVE:
        reason = _pull_words(obs.reason, record.get("reason"))
        if scheduled_at is not None and now - scheduled_at >= policy.image_pull_grace_seconds:
            return Step(states.FAILED, reason, (STOP, LOGS, CAPACITY))
        return Step(None, f"{reason} (fails after {int(policy.image_pull_grace_seconds)}s)")
    return None


def _pull_words(reason: str, before: Optional[str]) -> str:
    """A kubelet's ImagePullBackOff says only "Back-off pulling image": keep the pull's own
    error seen before it (ErrImagePull: "401 Unauthorized", "not found"), which says why."""
    if reason.startswith(PULL_BACKOFF) and before and before.startswith(PULL_ERROR):
        return before.rsplit(" (fails after ", 1)[0]
    return reason


def runs_of(record: dict) -> list[dict]:
    """The ended runs (pods) of the job's current attempt, oldest first."""
    gen = record.get("attempts", 1)
    return [r for r in record.get("runs") or [] if r.get("generation") == gen]


def timed_out(record: dict) -> str:
    seconds = (record.get("spec") or {}).get("timeout_seconds")
    if seconds:
        return f"timed out: deadline of {duration.human(seconds)} exceeded"
    return "timed out: deadline exceeded (activeDeadlineSeconds)"


def jobs_on_lost_node(records: list[dict], node: str) -> list[dict]:
    return [r for r in records if r.get("node") == node and r["state"] in states.ACTIVE]
