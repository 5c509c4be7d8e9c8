"""Capacity episodes: one "exhausted" event when the cluster stays full, one "recovered" when it ends.

The scheduler calls `step()` after every pass with what it saw; the state is a plain dict
it keeps in JetStream KV between passes. A condition (jobs waiting for room, or one
resource allocated above the threshold) must hold for `after_seconds` before an episode
opens, and the episode closes when no condition holds any more, so Slack hears once per
episode and never once per pass. Pure: the caller passes the time.
"""

from dataclasses import dataclass

from . import duration, placement, quantity, times
from .errors import ConfigError, InvalidSpec
from .events import CAPACITY_EXHAUSTED, CAPACITY_RECOVERED

RESOURCES = ("gpu", "cpu", "memory")
ROOM = "room"
LABEL = {"gpu": "GPUs", "cpu": "CPU cores", "memory": "memory", "slots": "job slots"}
SOURCE = "sentinels/schedule"


@dataclass(frozen=True)
class CapacityConfig:
    after_seconds: float = 600.0  # how long a condition must last before it is an episode
    threshold: float = 0.95       # allocated / allocatable above which a resource counts as used up

    @classmethod
    def from_dict(cls, raw) -> "CapacityConfig":
        """From {after: "10m" | seconds, threshold: 0.95}; None gives the defaults."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or set(raw) - {"after", "threshold"}:
            raise ConfigError("capacity alert configuration: expected a mapping with after (e.g. 10m) and threshold (e.g. 0.95)")
        try:
            after = duration.seconds(raw["after"], "capacity.after") if "after" in raw else cls.after_seconds
        except InvalidSpec as e:
            raise ConfigError(f"capacity alert configuration: {e.message}") from None
        threshold = raw.get("threshold", cls.threshold)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ConfigError(f"capacity alert configuration: threshold must be a fraction in (0, 1], got {threshold!r}")
        return cls(float(after), float(threshold))


def initial() -> dict:
    return {"since": {}, "episode": None}


def step(state: dict | None, observation: dict, now: float, cfg: CapacityConfig = CapacityConfig()) -> tuple[dict, list[dict]]:
    """Advance the watch by one scheduling pass.

    observation: {"waiting_for_room": n, "by_resource": {"gpu": n, "cpu": n, "memory": n},
    "largest_request": {"gpu": n, "cpu": millis, "memory": bytes},
    "allocated": {"gpu": (used, total), "cpu": (used_m, total_m), "memory": (used, total)}}.
    Returns (new state, events) where each event is {"type", "id", "data"} for
    `events.envelope(type, SOURCE, id, data, time)`; at most one per call.
    """
    state = state or initial()
    old_since = state.get("since") or {}
    active = conditions(observation, cfg.threshold)
    since: dict[str, float] = {c: (old_since[c] if old_since.get(c) is not None else now) for c in active}
    episode = state.get("episode")
    out: list[dict] = []
    if episode is None:
        lasting = [c for c in active if now - since[c] >= cfg.after_seconds]
        if lasting:
            start = min(since[c] for c in lasting)
            episode = {"id": f"capacity-{int(start)}", "started": start, "causes": sorted(lasting)}
            data = _data(episode, "exhausted", observation, now, cfg, since)
            out.append({"type": CAPACITY_EXHAUSTED, "id": f"{episode['id']}:exhausted", "data": data})
    elif not active:
        data = _data(episode, "recovered", observation, now, cfg, since)
        out.append({"type": CAPACITY_RECOVERED, "id": f"{episode['id']}:recovered", "data": data})
        episode = None
    return {"since": since, "episode": episode}, out


def conditions(observation: dict, threshold: float) -> list[str]:
    """Which conditions hold in this pass: "room" and/or resources allocated above threshold."""
    out = [ROOM] if _int(observation.get("waiting_for_room")) > 0 else []
    for resource, (used, total) in _allocated(observation).items():
        if total > 0 and used / total > threshold:
            out.append(resource)
    return out


def _data(episode: dict, status: str, observation: dict, now: float, cfg: CapacityConfig, since: dict) -> dict:
    allocated = {r: {"used": u, "total": t, "free": max(0, t - u), "text": f"{amount(r, max(0, t - u))} of {amount(r, t)} {LABEL.get(r, r)} free"}
                 for r, (u, t) in _allocated(observation).items()}
    waiting = _int(observation.get("waiting_for_room"))
    by_resource = {r: _int(n) for r, n in (observation.get("by_resource") or {}).items() if _int(n) > 0}
    largest = {r: _int(n) for r, n in (observation.get("largest_request") or {}).items() if _int(n) > 0}
    if status == "exhausted":
        summary = _exhausted_summary(waiting, by_resource, largest, allocated, since, now, cfg)
    else:
        summary = _recovered_summary(now - episode["started"], waiting, allocated)
    return {"episode": episode["id"], "status": status, "causes": episode["causes"],
            "started_at": iso(episode["started"]), "at": iso(now), "for_seconds": round(now - episode["started"]),
            "waiting_for_room": waiting, "by_resource": by_resource, "largest_request": largest,
            "allocated": allocated, "threshold": cfg.threshold, "summary": summary}


def _exhausted_summary(waiting, by_resource, largest, allocated, since, now, cfg) -> str:
    """E.g. "12 jobs wait for GPUs; 0 of 16 free for 20 min; largest request 8"."""
    parts, main = [], None
    if waiting:
        ranked = sorted(by_resource, key=lambda r: (-by_resource[r], RESOURCES.index(r) if r in RESOURCES else 9))
        main = ranked[0] if ranked else None
        lasted = minutes(now - since.get(ROOM, now))
        if main:
            others = "".join(f", {by_resource[r]} for {LABEL.get(r, r)}" for r in ranked[1:])
            parts.append(f"{_jobs(by_resource[main])} for {LABEL.get(main, main)}{others}")
        else:
            parts.append(f"{_jobs(waiting)} for room for {lasted}")
        if main and main in allocated:
            parts.append(f"{allocated[main]['text']} for {lasted}")
        elif main:
            parts.append(f"waiting for {lasted}")
        if main and main in largest:
            parts.append(f"largest request {amount(main, largest[main])}")
    for r in RESOURCES:
        if r in since and r in allocated and r != main:
            row = allocated[r]
            parts.append(f"{LABEL[r]} over {cfg.threshold:.0%} allocated ({amount(r, row['used'])} of "
                         f"{amount(r, row['total'])}) for {minutes(now - since[r])}")
    return "; ".join(parts)


def _recovered_summary(lasted: float, waiting: int, allocated: dict) -> str:
    parts = [f"room again after {minutes(lasted)}",
             "no job waits for room" if not waiting else f"{_jobs(waiting)} for room"]
    parts += [row["text"] for row in allocated.values()]
    return "; ".join(parts)


def _jobs(n: int) -> str:
    return "1 job waits" if n == 1 else f"{n} jobs wait"


def amount(resource: str, n: int) -> str:
    """A resource amount as people read it: GPUs as a count, CPU in cores, memory in Gi."""
    if resource == "cpu":
        return quantity.format_cpu(n) if n % 1000 == 0 else f"{n / 1000:.1f}"
    if resource == "memory":
        return f"{n / 2**30:.0f}Gi" if n >= 10 * 2**30 else f"{n / 2**30:.1f}Gi"
    return str(n)


def minutes(seconds: float) -> str:
    m = int(seconds // 60)
    if m < 1:
        return "under a minute"
    if m < 120:
        return f"{m} min"
    return f"{m // 60} h {m % 60} min" if m % 60 else f"{m // 60} h"


def iso(t: float) -> str:
    return times.iso(t, timespec="seconds")


def _allocated(observation: dict) -> dict[str, tuple[int, int]]:
    out = {}
    for resource, pair in (observation.get("allocated") or {}).items():
        if isinstance(pair, (list, tuple)) and len(pair) == 2:
            out[resource] = (_int(pair[0]), _int(pair[1]))
    return out


def _int(value) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def pass_observation(decision, nodes: list, waiting: list) -> dict:
    """What one scheduling pass saw, in the shape `step()` takes.

    Only jobs placement says wait for room count (codes NO_ROOM, RESERVED): a job held back
    by order waits for priority, one that can never fit waits for a bigger node, a refused
    launch for the cluster's consent; none of them makes the cluster full. Each counts
    under the resource placement found short (GPU, CPU, memory or job slots).
    """
    live = [n for n in nodes if n.ready and n.schedulable]
    free = {n.name: [n.free_gpu, n.free_cpu_millis, n.free_memory_bytes] for n in live}
    by_id = {w.id: w for w in waiting}
    for job_id, node in decision.placements:
        w = by_id.get(job_id)
        if w is not None and node in free:
            free[node][0] -= w.gpu
            free[node][1] -= w.cpu_millis
            free[node][2] -= w.memory_bytes
    totals = [sum(n.gpu for n in live), sum(n.cpu_millis for n in live), sum(n.memory_bytes for n in live)]
    left = [sum(max(0, f[i]) for f in free.values()) for i in range(3)]
    room = [(by_id[j], wait) for j, wait in decision.waits.items()
            if j in by_id and wait.code in placement.WAITING_FOR_ROOM]
    by_resource = dict.fromkeys(RESOURCES, 0)
    largest = dict.fromkeys(RESOURCES, 0)
    for w, wait in room:
        if wait.resource is not None:
            by_resource[wait.resource] = by_resource.get(wait.resource, 0) + 1
        for r, n in zip(RESOURCES, (w.gpu, w.cpu_millis, w.memory_bytes)):
            largest[r] = max(largest[r], n)
    return {"waiting_for_room": len(room), "by_resource": by_resource, "largest_request": largest,
            "allocated": {r: (totals[i] - left[i], totals[i]) for i, r in enumerate(RESOURCES)}}
