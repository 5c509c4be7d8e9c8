"""The job state machine and the one guarded transition function.

Terminal states never change; a transition that is not in the table is refused, so a
late or duplicate event cannot move a job backwards.
"""

import copy

BUILDING = "BUILDING"  # a Dockerfile submit: its image is being built; QUEUED once it is
QUEUED, SCHEDULED, RUNNING = "QUEUED", "SCHEDULED", "RUNNING"
SUCCEEDED, FAILED, CANCELLED = "SUCCEEDED", "FAILED", "CANCELLED"
STATES = (BUILDING, QUEUED, SCHEDULED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({SCHEDULED, RUNNING})

ALLOWED = {
    BUILDING: {QUEUED, FAILED, CANCELLED},
    QUEUED: {SCHEDULED, CANCELLED, FAILED},  # FAILED: the cluster refused its launch for good
    SCHEDULED: {RUNNING, QUEUED, CANCELLED, FAILED, SUCCEEDED},
    RUNNING: {SUCCEEDED, FAILED, QUEUED, CANCELLED},
    SUCCEEDED: set(), FAILED: set(), CANCELLED: set(),
}


class IllegalTransition(Exception):
    """A transition outside the table; callers treat it as a stale event to ignore."""


def can_transition(state: str, to: str) -> bool:
    return to in ALLOWED.get(state, ())


def transition(record: dict, to: str, *, now: str, reason: str = "", **changes) -> dict:
    """Return a new record in state `to`; raise IllegalTransition if the table forbids it.

    Leaving SCHEDULED/RUNNING for QUEUED counts one more attempt (evicted, node lost,
    never started). `changes` are extra fields to set on the record.
    """
    state = record["state"]
    if not can_transition(state, to):
        raise IllegalTransition(f"{record.get('id')}: {state} -> {to} is not allowed")
    new = copy.deepcopy(record)
    new.update(changes)
    new["state"] = to
    new["reason"] = reason
    new.setdefault("timestamps", {})[to] = now
    new["updated_at"] = now
    if to == QUEUED and state in ACTIVE:
        new["attempts"] = record.get("attempts", 1) + 1
    return new


def reason_now(record: dict, waiting: dict | None) -> dict:
    """The one answer to "why is it in this state" for every reader (status, ls, queue):
    {"reason": text, "reason_code": code, "short": resource}.

    A QUEUED job's reason is the last scheduling pass's (`waiting`, the document the
    scheduler writes to the board: {"reasons": {id: text}, "codes": {id: [code, resource]}},
    codes from `domain.placement.CODES`); any other job's is its record's, without a code.
    """
    job_id = record.get("id")
    text = ((waiting or {}).get("reasons") or {}).get(job_id) if record.get("state") == QUEUED else None
    if not text:
        return {"reason": record.get("reason") or "", "reason_code": None, "short": None}
    code = ((waiting or {}).get("codes") or {}).get(job_id) or [None, None]
    return {"reason": text, "reason_code": code[0], "short": code[1] if len(code) > 1 else None}


def runs_made(record: dict) -> int:
    """How many times the job ran, its retries included: what people call its attempts.

    `attempts` counts the runs the infrastructure cut short (each a new Kubernetes Job);
    `runs` lists every ended run (pod) of the job, retries of its own failures included.
    """
    return max(int(record.get("attempts") or 0), len(record.get("runs") or []))


def history_entry(before: dict | None, after: dict) -> dict:
    entry = {
        "job": after["id"],
        "from": before["state"] if before else None,
        "to": after["state"],
        "reason": after.get("reason", ""),
        "attempts": runs_made(after),
        "at": after["updated_at"],
    }
    if after["state"] in (SUCCEEDED, FAILED) and after.get("exit_code") is not None:
        entry["exit_code"] = after["exit_code"]
    return entry
