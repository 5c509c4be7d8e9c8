"""The executor's usage sampler: CPU, memory and GPU of each running local job.

Every few seconds it looks at each running attempt's process group with psutil (jobs run
in their own session and process group; a container job's processes are found from the
engine's `inspect` of its container) and, when `nvidia-smi` answers, at the GPUs it holds; `domain.usage.step` folds the sample in, and the result goes to
`$SENTINELS_HOME/jobs/<id>/usage.json` for `sentinels top`. When the job ends its peaks and
totals are logged to its MLflow run as system metrics (in a thread: MLflow is slow to import).
"""

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from ..domain import usage

log = logging.getLogger("sentinels.usage")
SAMPLE_SECONDS = 2.0
USAGE_FILE = usage.USAGE_FILE
MLFLOW_TRIES = 5


def group_sample(pgid: int) -> tuple[dict, int]:
    """({pid: CPU-seconds}, resident bytes) of every process in a process group."""
    import psutil

    cpu, rss = {}, 0
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) != pgid:
                continue
            with p.oneshot():
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system
                rss += p.memory_info().rss
        except (ProcessLookupError, psutil.Error):
            continue
    return cpu, rss


def tree_sample(pid: int) -> tuple[dict, int]:
    """({pid: CPU-seconds}, resident bytes) of a process and all its descendants."""
    import psutil

    cpu: dict[int, float] = {}
    rss = 0
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return cpu, rss
    for p in procs:
        try:
            with p.oneshot():
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system
                rss += p.memory_info().rss
        except psutil.Error:
            continue
    return cpu, rss


def container_pid(container_id: str, name: str) -> Optional[int]:
    """The container's first process on this host, from its engine (`podman|docker inspect`)."""
    engine = container_id.split("://", 1)[0] if "://" in container_id else ""
    exe = shutil.which(engine) if engine in ("podman", "docker") else None
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "inspect", "--format", "{{.State.Pid}}", name], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return int(out) if out.isdigit() and int(out) > 0 else None


def nvidia_smi(devices: list[int], pids: set[int]) -> tuple[Optional[float], int]:
    """(mean utilisation % of `devices`, GPU memory bytes of `pids`); (None, 0) without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None or not devices:
        return None, 0
    try:
        util = subprocess.run([exe, "--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=5).stdout
        apps = subprocess.run([exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None, 0
    per = {}
    for line in util.splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].replace(".", "", 1).isdigit():
            per[int(parts[0])] = float(parts[1])
    mine = [per[d] for d in devices if d in per]
    mem = 0
    for line in apps.splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in pids and parts[1].isdigit():
            mem += int(parts[1]) << 20  # MiB
    return (sum(mine) / len(mine) if mine else None), mem


def read(job_dir: Path) -> Optional[dict]:
    try:
        return json.loads((job_dir / USAGE_FILE).read_text())
    except (OSError, ValueError):
        return None


class Sampler:
    def __init__(self, jobs_dir: Path, *, wall: Callable[[], float] = time.time, gpu=nvidia_smi, sample=group_sample,
                 mlflow_uri: Optional[str] = None):
        self.dir, self.wall, self.gpu, self.sample = Path(jobs_dir), wall, gpu, sample
        self.mlflow_uri = mlflow_uri or ""
        self.last = 0.0
        self.threads: list[threading.Thread] = []
        self.done: set[str] = set()  # ended and logged (or nothing to log): not looked at again
        self.pids: dict[tuple, Optional[int]] = {}  # (job, attempt, container) -> the container's first process

    def due(self) -> bool:
        return self.wall() - self.last >= SAMPLE_SECONDS

    def tick(self, runs: dict) -> None:
        """Sample every running job; close the record of jobs that ended."""
        self.last = self.wall()
        for job_id, state in list(runs.items()):
            if job_id in self.done and state.get("outcome") is not None:
                continue
            self.done.discard(job_id)  # a requeued run starts again
            job_dir = self.dir / job_id
            current = read(job_dir)
            pod = state.get("pod") or {}
            running = state.get("outcome") is None and pod.get("phase") == "Running" and pod.get("pgid")
            if running:
                cpu, rss = self._sample(job_id, pod)
                gpus = list(pod.get("gpus") or [])
                util, gmem = self.gpu(gpus, set(cpu))
                new = usage.step(current or {}, usage.Sample(self.wall(), cpu, rss, len(gpus), util, gmem))
                new.update(job=job_id, name=state["record"].get("name"), owner=state["record"].get("owner"),
                           attempt=pod.get("attempt"), running=True)
                self._write(job_dir, new)
            elif current is not None and current.get("running"):
                self._write(job_dir, {**usage.ended(current), "running": False})
            current = read(job_dir)
            if state.get("outcome") is not None:
                if current and not current.get("running") and not self._to_mlflow(job_dir, current, state):
                    continue
                self.done.add(job_id)

    def _sample(self, job_id: str, pod: dict) -> tuple[dict, int]:
        """A process job: its process group. A container: the engine's process tree of it
        (the container runs under the engine's monitor, outside the runner's group)."""
        if pod.get("container") and pod.get("container_id"):
            key = (job_id, pod.get("attempt"), pod["container"])
            if self.pids.get(key) is None:
                self.pids[key] = container_pid(pod["container_id"], pod["container"])
            pid = self.pids[key]
            if pid is not None:
                cpu, rss = tree_sample(pid)
                return cpu, rss
        return self.sample(pod["pgid"])

    def _write(self, job_dir: Path, doc: dict) -> None:
        tmp = job_dir / (USAGE_FILE + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, job_dir / USAGE_FILE)

    def _to_mlflow(self, job_dir: Path, doc: dict, state: dict) -> bool:
        """True when nothing is left to log for this job."""
        run_id = (state.get("extra_env") or {}).get("MLFLOW_RUN_ID")
        if doc.get("mlflow") in ("logged", "gave up") or not run_id or self.mlflow_uri in ("", "none", "off"):
            return True
        if any(t.is_alive() and t.name == f"usage-{job_dir.name}" for t in self.threads):
            return False
        tries = int(doc.get("mlflow_tries") or 0) + 1

        def go():
            outcome: Optional[str]
            try:
                from mlflow.entities import Metric
                from mlflow.tracking import MlflowClient

                now = int(self.wall() * 1000)
                MlflowClient(self.mlflow_uri).log_batch(run_id, metrics=[
                    Metric(k, v, now, 0) for k, v in usage.system_metrics(doc).items()])
                outcome = "logged"
            except Exception as e:  # MLflow away: try again on a later tick, a few times
                log.warning("job %s: usage not logged to MLflow yet (%s)", job_dir.name, type(e).__name__)
                outcome = "gave up" if tries >= MLFLOW_TRIES else None
            latest = read(job_dir) or doc
            self._write(job_dir, {**latest, "mlflow": outcome, "mlflow_tries": tries})

        t = threading.Thread(target=go, name=f"usage-{job_dir.name}", daemon=True)
        self.threads = [x for x in self.threads if x.is_alive()] + [t]
        t.start()
        return False
