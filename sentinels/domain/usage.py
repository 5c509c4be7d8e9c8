"""CPU, memory and GPU use of one job, accumulated from samples: pure, no I/O, no clock.

A sample is what the process tree (or container, or `nvidia-smi`) shows at one instant:
CPU-seconds used so far per process, resident memory, GPU memory and utilisation. `step`
folds it into the job's running record: current use, peaks, CPU-seconds and GPU-seconds
(allocated GPUs x time running). `sentinels top` prints the record; the run's MLflow
metrics at the end come from it too (`system_metrics`).
"""

from dataclasses import dataclass, field

USAGE_FILE = "usage.json"  # per job directory, written by the executor's sampler, read for `top`


@dataclass(frozen=True)
class Sample:
    at: float  # seconds (any epoch; only differences matter)
    cpu_seconds: dict = field(default_factory=dict)  # pid -> user+system CPU-seconds so far
    memory_bytes: int = 0  # resident set of the whole tree
    gpus: int = 0  # GPUs allocated to the job
    gpu_util: float | None = None  # mean utilisation of its GPUs, percent
    gpu_memory_bytes: int = 0


def empty() -> dict:
    return {"cpu_cores": 0.0, "memory_bytes": 0, "gpu_util": None, "gpu_memory_bytes": 0,
            "peak_cpu_cores": 0.0, "peak_memory_bytes": 0, "peak_gpu_util": None, "peak_gpu_memory_bytes": 0,
            "cpu_seconds": 0.0, "gpu_seconds": 0.0, "at": None, "pids": {}}


def step(usage: dict, sample: Sample) -> dict:
    """The usage record after one more sample (a new dict; the old one is not changed)."""
    u = {**empty(), **usage}
    last_at, last = u["at"], {int(k): v for k, v in (u.get("pids") or {}).items()}
    if last_at is None:  # the first look: what was spent so far counts, no rate yet
        used, dt = sum(sample.cpu_seconds.values()), 0.0
    else:  # a process that appeared since the last look: all of its CPU is new
        used = sum(max(0.0, s - last.get(pid, 0.0)) for pid, s in sample.cpu_seconds.items())
        dt = max(0.0, sample.at - last_at)
    cores = used / dt if dt > 0 else 0.0
    u.update(cpu_cores=round(cores, 3), memory_bytes=sample.memory_bytes, gpu_util=sample.gpu_util,
             gpu_memory_bytes=sample.gpu_memory_bytes,
             peak_cpu_cores=round(max(u["peak_cpu_cores"], cores), 3),
             peak_memory_bytes=max(u["peak_memory_bytes"], sample.memory_bytes),
             peak_gpu_memory_bytes=max(u["peak_gpu_memory_bytes"], sample.gpu_memory_bytes),
             cpu_seconds=round(u["cpu_seconds"] + used, 3), gpu_seconds=round(u["gpu_seconds"] + sample.gpus * dt, 3),
             at=sample.at, pids={str(k): v for k, v in sample.cpu_seconds.items()})
    if sample.gpu_util is not None:
        u["peak_gpu_util"] = max(u["peak_gpu_util"] or 0.0, sample.gpu_util)
    return u


def ended(usage: dict) -> dict:
    """The record once the job stopped: nothing in use now, peaks and totals kept."""
    return {**empty(), **usage, "cpu_cores": 0.0, "memory_bytes": 0, "gpu_util": None, "gpu_memory_bytes": 0,
            "pids": {}}


def system_metrics(usage: dict) -> dict[str, float]:
    """What the job's MLflow run gets at the end (MLflow's `system/` prefix)."""
    out = {"system/peak_memory_bytes": float(usage.get("peak_memory_bytes") or 0),
           "system/cpu_seconds": float(usage.get("cpu_seconds") or 0),
           "system/peak_cpu_cores": float(usage.get("peak_cpu_cores") or 0),
           "system/gpu_seconds": float(usage.get("gpu_seconds") or 0)}
    if usage.get("peak_gpu_memory_bytes"):
        out["system/peak_gpu_memory_bytes"] = float(usage["peak_gpu_memory_bytes"])
    if usage.get("peak_gpu_util") is not None:
        out["system/peak_gpu_utilization_percentage"] = float(usage["peak_gpu_util"])
    return out
