"""The demand sentinels holds in its own queue, for whoever adds nodes (pure, no I/O).

Queued jobs never become pending pods, so a cluster autoscaler cannot see them. This
module sums what waiting jobs ask for per priority class and per node shape (the kind of
node a job needs: GPUs or not, and its node selector), for the metrics, and turns it
into placeholder workloads an autoscaler does see: one Deployment of pause pods per shape,
each pod as big as the largest waiting job of that shape, at a negative priority so that
real pods preempt them at once. `PlaceholderConfig` is the `demand.placeholders` block of
config.yaml; the schedule function applies what `placeholders` returns (off by default).
"""

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .errors import ConfigError
from .placement import GPU_TAINT, LAUNCH_REFUSED, QUOTA, Wait, Waiting

PLACEHOLDER_PRIORITY_CLASS = "sentinels-placeholder"
PLACEHOLDER_IMAGE = "registry.k8s.io/pause:3.10"
PLACEHOLDER_LABELS = {"app.kubernetes.io/part-of": "sentinels", "app.kubernetes.io/component": "placeholder"}
METRICS = {  # name -> (help, unit key of Demand); labels: class, shape
    "sentinels_queued_demand_jobs": ("Jobs waiting in sentinels' queue", "jobs"),
    "sentinels_queued_demand_cpu_cores": ("CPU cores asked for by waiting jobs", "cpu_cores"),
    "sentinels_queued_demand_memory_bytes": ("Memory asked for by waiting jobs", "memory_bytes"),
    "sentinels_queued_demand_gpus": ("GPUs asked for by waiting jobs", "gpu"),
}


@dataclass
class Demand:
    jobs: int = 0
    cpu_millis: int = 0
    memory_bytes: int = 0
    gpu: int = 0
    largest: tuple[int, int, int] = (0, 0, 0)  # (gpu, cpu_millis, memory_bytes) of the biggest waiting job

    @property
    def cpu_cores(self) -> float:
        return self.cpu_millis / 1000


def shape(spec: dict) -> str:
    """The node shape a job needs: "gpu" or "cpu", then its node selector (sorted k=v)."""
    resources = spec.get("resources") or {}
    kind = "gpu" if int(resources.get("gpu") or 0) > 0 else "cpu"
    selector = spec.get("node_selector") or {}
    return ",".join([kind] + [f"{k}={selector[k]}" for k in sorted(selector)])


def _count(out: dict[tuple[str, str], Demand], key: tuple[str, str], cpu: int, mem: int, gpu: int) -> None:
    d = out.setdefault(key, Demand())
    d.jobs += 1
    d.cpu_millis += cpu
    d.memory_bytes += mem
    d.gpu += gpu
    d.largest = max(d.largest, (gpu, cpu, mem))


def waiting(records) -> dict[tuple[str, str], Demand]:
    """(class, shape) -> Demand of the QUEUED records."""
    out: dict[tuple[str, str], Demand] = {}
    for r in records:
        if r.get("state") != "QUEUED":
            continue
        spec = r.get("spec") or {}
        res = spec.get("resources") or {}
        _count(out, (str(r.get("priority") or ""), shape(spec)),
               int(res.get("cpu_millis") or 0), int(res.get("memory_bytes") or 0), int(res.get("gpu") or 0))
    return out


NOT_FOR_NODES = (QUOTA, LAUNCH_REFUSED)  # more nodes would not start these


def of_pass(waiting_jobs: Iterable[Waiting], waits: Mapping[str, Wait]) -> dict[tuple[str, str], Demand]:
    """(class, shape) -> Demand of the jobs a scheduling pass left waiting that more nodes
    would let start (not those a quota holds or whose launch the cluster refused)."""
    out: dict[tuple[str, str], Demand] = {}
    for w in waiting_jobs:
        why = waits.get(w.id)
        if why is None or why.code in NOT_FOR_NODES:
            continue
        spec = {"resources": {"gpu": w.gpu}, "node_selector": w.node_selector}
        _count(out, (w.klass, shape(spec)), w.cpu_millis, w.memory_bytes, w.gpu)
    return out


def samples(demand: dict[tuple[str, str], Demand]) -> list[tuple[str, dict, float]]:
    """(metric, labels, value) for every (class, shape) and metric of METRICS."""
    return [(name, {"class": klass, "shape": shp}, float(getattr(d, unit)))
            for (klass, shp), d in sorted(demand.items()) for name, (_, unit) in METRICS.items()]


def by_shape(demand: dict[tuple[str, str], Demand]) -> dict[str, Demand]:
    """Classes folded together: what each node shape is asked for."""
    out: dict[str, Demand] = {}
    for (_, shp), d in demand.items():
        s = out.setdefault(shp, Demand())
        s.jobs += d.jobs
        s.cpu_millis += d.cpu_millis
        s.memory_bytes += d.memory_bytes
        s.gpu += d.gpu
        s.largest = max(s.largest, d.largest)
    return out


def placeholder_name(shp: str) -> str:
    """A Deployment name that stays the same for a shape while other shapes come and go."""
    return f"sentinels-placeholder-{shp.split(',')[0]}-{hashlib.sha256(shp.encode()).hexdigest()[:10]}"


def placeholders(demand: dict[tuple[str, str], Demand], namespace: str, max_per_shape: int = 10) -> list[dict]:
    """One Deployment of pause pods per node shape with waiting jobs (replicas: the waiting
    jobs, at most max_per_shape; each pod the size of the largest waiting job)."""
    out: list[dict] = []
    for shp, d in sorted(by_shape(demand).items()):
        gpu, cpu, mem = d.largest
        requests = {"cpu": f"{cpu}m", "memory": str(mem)}
        if gpu:
            requests[GPU_TAINT] = str(gpu)
        kind, *pairs = shp.split(",")
        selector = dict(p.split("=", 1) for p in pairs)
        name = placeholder_name(shp)
        labels = {**PLACEHOLDER_LABELS, "sentinels.io/placeholder": name[len("sentinels-placeholder-"):]}
        pod: dict = {"priorityClassName": PLACEHOLDER_PRIORITY_CLASS, "terminationGracePeriodSeconds": 0,
                     "automountServiceAccountToken": False,
                     "containers": [{"name": "pause", "image": PLACEHOLDER_IMAGE,
                                     "resources": {"requests": requests, "limits": dict(requests)}}]}
        if selector:
            pod["nodeSelector"] = selector
        if gpu:
            pod["tolerations"] = [{"key": GPU_TAINT, "operator": "Exists", "effect": "NoSchedule"}]
        out.append({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name, "namespace": namespace, "labels": labels,
                                 "annotations": {"sentinels.io/shape": shp}},
                    "spec": {"replicas": min(d.jobs, max_per_shape), "selector": {"matchLabels": labels},
                             "template": {"metadata": {"labels": labels}, "spec": pod}}})
    return out


@dataclass(frozen=True)
class PlaceholderConfig:
    """`demand.placeholders` of config.yaml: whether the scheduler keeps placeholder
    Deployments for queued demand, how many pods per shape at most, and how often it looks."""

    enabled: bool = False
    max_per_shape: int = 10
    interval_seconds: float = 30.0

    @classmethod
    def from_dict(cls, raw: Any) -> "PlaceholderConfig":
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or set(raw) - {"placeholders"}:
            raise ConfigError("configuration: demand takes only placeholders")
        block = raw.get("placeholders") or {}
        known = {"enabled", "max_per_shape", "interval_seconds"}
        if not isinstance(block, dict) or set(block) - known:
            raise ConfigError(f"configuration: demand.placeholders takes {', '.join(sorted(known))}")
        enabled = block.get("enabled", False)
        if not isinstance(enabled, bool):
            raise ConfigError("configuration: demand.placeholders.enabled must be true or false")
        most = block.get("max_per_shape", cls.max_per_shape)
        if isinstance(most, bool) or not isinstance(most, int) or not 1 <= most <= 1000:
            raise ConfigError("configuration: demand.placeholders.max_per_shape must be a whole number from 1 to 1000")
        every = block.get("interval_seconds", cls.interval_seconds)
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not 1 <= every <= 86400:
            raise ConfigError("configuration: demand.placeholders.interval_seconds must be from 1 to 86400")
        return cls(enabled, most, float(every))
