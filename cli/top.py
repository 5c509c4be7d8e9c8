"""`sentinels top [ID]`: current and peak CPU, memory and GPU use of running jobs.

The numbers come from the read API (`GET /v1/usage`, `GET /v1/jobs/{id}/usage`): in the
embedded default the executor samples each job's process tree (psutil) and GPUs
(`nvidia-smi`) every two seconds; on Kubernetes the API asks Prometheus (cAdvisor and
DCGM joined to the job's pods). This module only formats them.
"""

import time

from .client import CliError

STALE_SECONDS = 15


def _cores(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _bytes(v) -> str:
    if v is None:
        return "-"
    for unit, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if v >= size:
            return f"{v / size:.1f}{unit}"
    return f"{int(v)}B"


def _pct(v) -> str:
    return "-" if v is None else f"{v:.0f}%"


def show(rows: list[dict], job_id: str | None, fmt: str, emit) -> int:
    if job_id and not rows:
        raise CliError(f"no usage recorded for job {job_id} (it has not run yet, or ran before usage was sampled)")
    if fmt != "table":
        emit(rows, fmt)
        return 0
    now = time.time()
    view = [{"id": r["job"], "name": r.get("name") or "", "state": "running" if r.get("running") else "ended",
             "cpu": _cores(r.get("cpu_cores")), "peak_cpu": _cores(r.get("peak_cpu_cores")),
             "mem": _bytes(r.get("memory_bytes")), "peak_mem": _bytes(r.get("peak_memory_bytes")),
             "gpu": _pct(r.get("gpu_util")), "gpu_mem": _bytes(r.get("gpu_memory_bytes")),
             "peak_gpu_mem": _bytes(r.get("peak_gpu_memory_bytes")),
             "cpu_s": "-" if r.get("cpu_seconds") is None else f"{r['cpu_seconds']:.0f}",
             "gpu_s": "-" if r.get("gpu_seconds") is None else f"{r['gpu_seconds']:.0f}"} for r in rows]
    if not view:
        print("no running jobs")
        return 0
    emit(view, fmt, [("ID", "id"), ("NAME", "name"), ("STATE", "state"), ("CPU", "cpu"), ("PEAK CPU", "peak_cpu"),
                     ("MEM", "mem"), ("PEAK MEM", "peak_mem"), ("GPU", "gpu"), ("GPU MEM", "gpu_mem"),
                     ("PEAK GPU MEM", "peak_gpu_mem"), ("CPU-S", "cpu_s"), ("GPU-S", "gpu_s")])
    stale = [r["job"] for r in rows if r.get("running") and r.get("at") and now - r["at"] > STALE_SECONDS]
    if stale:
        print(f"(not sampled for over {STALE_SECONDS} s: {', '.join(stale)}; is the executor running?)")
    return 0
