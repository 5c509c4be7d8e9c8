"""`sentinels logs`: print (and follow) a job's output.

Embedded default: the local executor's per-job log file. Kubernetes: the pod log API
through the Kubernetes backend (Elasticsearch comes with the observability work).
"""

import sys
import time

from sentinels import logfiles
from sentinels.domain import job as jobmod
from sentinels.domain import states

from .client import CliError, Reader

TAIL_MAX_BYTES = 64 * 1024 * 1024  # `-n N` reads back at most this much of a huge log


def _record(settings, job_id):
    got = Reader(settings).run(lambda js, jobs, q, h: jobs.get(job_id))
    if got is None:
        raise CliError(f"job {job_id} not found")
    return got[0]


def show(settings, job_id: str, follow: bool, tail: int | None, build: bool = False,
         attempt: int | None = None) -> int:
    if not jobmod.is_job_id(job_id):
        raise CliError(f"{job_id!r} is not a job id", 2)
    if attempt is not None and attempt < 1:
        raise CliError(f"--attempt {attempt}: attempts count from 1", 2)
    record = _record(settings, job_id)
    if build and not record.get("build"):
        raise CliError(f"job {job_id} was not built from a Dockerfile: it has no build log")
    if settings.backend() == "kubernetes":
        if attempt is not None:
            raise CliError("--attempt is not there yet on Kubernetes: `sentinels logs` shows the newest pod", 2)
        return _pod_logs(settings, dict(record, k8s_job=record["build_job"]) if build else record, tail)
    job_dir = settings.home / "jobs" / job_id
    path = job_dir / ("build.log" if build else "log")  # log: the last attempt (a link to attempt-<n>.log)
    if attempt is not None and not build:
        path = job_dir / f"attempt-{attempt}.log"
        if not path.exists():
            made = sorted(int(p.stem.split("-")[1]) for p in job_dir.glob("attempt-*.log"))
            raise CliError(f"job {job_id} has no attempt {attempt}" +
                           (f" (attempts: {', '.join(map(str, made))})" if made else " (it has not run)"))
        follow = follow and path.resolve() == (job_dir / "log").resolve()
    if not path.exists() and not follow:
        raise CliError(f"no {'build output' if build else 'output'} yet: job {job_id} is {record['state']}" +
                       (" (it has not started)" if record["state"] in (states.QUEUED, states.BUILDING) and not build
                        else ""))
    offset = 0
    if path.exists() and tail:
        lines, offset = logfiles.tail(path, tail, TAIL_MAX_BYTES)
        sys.stdout.write("".join(line + "\n" for line in lines))
    checked = 0.0
    while True:
        if path.exists():
            if path.stat().st_size < offset:  # the log rotated (local.log_max): its new part
                offset = 0
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            if chunk:
                offset += len(chunk)
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
        if not follow:
            return 0
        if time.monotonic() - checked > 1.0:
            checked = time.monotonic()
            state = _record(settings, job_id)["state"]
            if state in states.TERMINAL or (build and state != states.BUILDING):
                follow = False  # one more read picks up the last lines
                continue
        time.sleep(0.2)


def _pod_logs(settings, record, tail) -> int:
    import asyncio

    from sentinels.domain.errors import SentinelsError
    from sentinels.wiring import cluster_for

    try:
        lines = asyncio.run(cluster_for(settings, None).logs(record, tail))
    except SentinelsError as e:
        raise CliError(e.message) from None
    print("\n".join(lines))
    return 0
