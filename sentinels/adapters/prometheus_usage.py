"""Jobs' CPU, memory and GPU use on Kubernetes, from the Prometheus HTTP API.

cAdvisor's container series and DCGM's GPU series are joined to the job through
kube-state-metrics' `kube_pod_labels{label_sentinels_io_job_id=...}` (the chart sets the
`metricLabelsAllowlist` that exposes it). Current use is an instant query; peaks are
`max_over_time` subqueries over `window`. Any failure is `Unavailable` with one line.
"""

import json
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from ..domain.errors import Unavailable

LABEL = "label_sentinels_io_job_id"
CONTAINERS = '{container!="", container!="POD"}'


def _join(expr: str, job_id: Optional[str]) -> str:
    match = f'"{job_id}"' if job_id else '~".+"'
    pods = f"max by (namespace, pod, {LABEL}) (kube_pod_labels{{{LABEL}={match}}})"
    return f"sum by ({LABEL}) ({expr} * on (namespace, pod) group_left({LABEL}) {pods})"


def queries(job_id: Optional[str], window: str = "24h") -> dict[str, str]:
    cpu = _join(f"irate(container_cpu_usage_seconds_total{CONTAINERS}[2m])", job_id)  # now, not a 2-minute mean
    mem = _join(f"container_memory_working_set_bytes{CONTAINERS}", job_id)
    gpu_mem = _join("DCGM_FI_DEV_FB_USED", job_id) + " * 1048576"
    gpu = _join("DCGM_FI_DEV_GPU_UTIL", job_id) + " / " + _join("count by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL)", job_id)
    return {"cpu_cores": cpu, "peak_cpu_cores": f"max_over_time(({cpu})[{window}:30s])",
            "memory_bytes": mem, "peak_memory_bytes": f"max_over_time(({mem})[{window}:30s])",
            "gpu_util": gpu, "gpu_memory_bytes": gpu_mem,
            "peak_gpu_memory_bytes": f"max_over_time(({gpu_mem})[{window}:30s])"}


def peak_queries(job_id: str, seconds: float) -> dict[str, str]:
    """Peaks and CPU-seconds of a job over its last `seconds`, as subqueries: the pod and its
    series are gone once it ended, the join is made at each past step."""
    span = max(60, int(seconds) + 60)
    w = f"{span}s:{max(5, span // 500)}s"  # about 500 steps at most; a short job still gets a few
    q = queries(job_id)
    total_cpu = _join(f"container_cpu_usage_seconds_total{CONTAINERS}", job_id)
    return {"peak_cpu_cores": f"max_over_time(({q['cpu_cores']})[{w}])",
            "peak_memory_bytes": f"max_over_time(({q['memory_bytes']})[{w}])",
            "cpu_seconds": f"max_over_time(({total_cpu})[{w}])",
            "peak_gpu_memory_bytes": f"max_over_time(({q['gpu_memory_bytes']})[{w}])",
            "peak_gpu_util": f"max_over_time(({q['gpu_util']})[{w}])"}


class PrometheusUsage:
    def __init__(self, url: Optional[str], timeout: float = 5.0):
        self.url, self.timeout = (url or "").rstrip("/"), timeout

    async def usage(self, job_id: Optional[str]) -> list[dict]:
        """The `UsageSource` port: rows for running jobs (or one job), from a thread."""
        import asyncio

        if not self.url:
            raise Unavailable("usage on Kubernetes comes from Prometheus: set SENTINELS_PROMETHEUS_URL or "
                              "prometheus_url in config.yaml (meanwhile: kubectl top pod -l sentinels.io/job-id)")
        return list((await asyncio.to_thread(self.by_job, job_id)).values())

    def query(self, expr: str) -> dict[str, float]:
        """{job id: value} of an instant query."""
        req = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                why = json.loads(e.read()).get("error") or e.reason
            except ValueError:
                why = e.reason
            raise Unavailable(f"Prometheus at {self.url} answered {e.code} ({str(why)[:160]})") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise Unavailable(f"Prometheus at {self.url} is unreachable ({getattr(e, 'reason', e)})") from None
        if body.get("status") != "success":
            raise Unavailable(f"Prometheus at {self.url} answered an error ({body.get('error', '?')})")
        out = {}
        for row in body["data"].get("result", []):
            job = row.get("metric", {}).get(LABEL)
            if job:
                out[job] = float(row["value"][1])
        return out

    async def peaks(self, job_id: str, seconds: float) -> dict:
        """The `PeakUsage` port: what a job that has just ended used at most (and its
        CPU-seconds); {} when Prometheus has no series of it."""
        import asyncio

        if not self.url:
            return {}
        qs = peak_queries(job_id, seconds)

        def ask() -> dict:
            with ThreadPoolExecutor(len(qs)) as pool:
                answers = dict(zip(qs, pool.map(self.query, qs.values())))
            return {k: v[job_id] for k, v in answers.items() if job_id in v}

        return await asyncio.to_thread(ask)

    def by_job(self, job_id: Optional[str] = None, window: str = "24h") -> dict[str, dict]:
        """{job id: {cpu_cores, peak_cpu_cores, memory_bytes, ...}} for running jobs (or one job)."""
        qs = queries(job_id, window)
        with ThreadPoolExecutor(len(qs)) as pool:
            answers = dict(zip(qs, pool.map(self.query, qs.values())))
        jobs: dict[str, dict] = {}
        for key, by_job in answers.items():
            for job, value in by_job.items():
                jobs.setdefault(job, {"job": job, "running": True})[key] = value
        for row in jobs.values():  # a peak is at least what is used now (the subquery lags a step)
            for key in ("cpu_cores", "memory_bytes", "gpu_memory_bytes"):
                if key in row:
                    row["peak_" + key] = max(row.get("peak_" + key, row[key]), row[key])
        return jobs
