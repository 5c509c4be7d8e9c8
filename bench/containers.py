"""Submit -> running with the container runtime (Podman) and the process runtime, next to
the engine's own `podman run` time measured in the same run: the overhead that is ours is
the difference. Needs Podman and Buildah (the image is built here from static busybox);
without them it says so and measures the process runtime only.
"""

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, ms, pct, stack  # noqa: F401  (ROOT: the project on sys.path)

from sentinels.adapters import jetstream  # noqa: E402
from sentinels.clock import parse_iso  # noqa: E402
from tests import engines  # noqa: E402

N = 20


async def record(url: str, job_id: str):
    nc = await jetstream.connect(url)
    try:
        got = await (await jetstream.JetStreamJobs.open(nc.jetstream())).get(job_id)
        return got[0] if got else None
    finally:
        await nc.close()


def submit_to_running(env: dict, image: str, command: list[str], n: int = N) -> list[float]:
    """Jobs one after another (the slot is free each time): RUNNING time - submit time, per job."""
    out = []
    for _ in range(n):
        r = subprocess.run([sys.executable, "-m", "sentinels.cli.main", "submit", image, "--cpu", "100m", "--memory", "64Mi",
                            "--", *command], env=env, capture_output=True, text=True, cwd=ROOT)
        if r.returncode:
            raise SystemExit(r.stderr)
        job_id = r.stdout.strip()
        deadline = time.time() + 300
        while True:
            rec = asyncio.run(record(env["SENTINELS_NATS_URL"], job_id))
            if rec and rec["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                break
            if time.time() > deadline:
                raise SystemExit(f"job {job_id} did not end in 5 minutes: {rec}")
            time.sleep(0.2)
        if rec["state"] != "SUCCEEDED" or "RUNNING" not in rec["timestamps"]:
            raise SystemExit(f"job {job_id} ended {rec['state']}: {rec.get('reason')}")
        out.append(parse_iso(rec["timestamps"]["RUNNING"]) - parse_iso(rec["submitted_at"]))
    return out


def engine_run(image: str, n: int = N) -> list[float]:
    """The engine alone, to a running container as ours is measured: `podman run -d IMAGE sleep 30`
    (it returns once the container started), same flags as the executor's; removed untimed."""
    out = []
    for i in range(n):
        name = f"sentinels-bench-{i}"
        t = time.perf_counter()
        engines.podman("run", "-d", "--name", name, "--network", "host", "--ulimit", "nofile=1024:1024",
                       "--ulimit", "nproc=1024:1024", image, "sleep", "30")
        out.append(time.perf_counter() - t)
        engines.podman("rm", "--force", "--time", "0", name, check=False)
    return out


def line(what: str, values: list[float], target: str) -> None:
    print(f"{what}: p50 {ms(pct(values, 50))}, p99 {ms(pct(values, 99))} over {len(values)}   [{target}]", flush=True)


def main() -> None:
    with stack({"SENTINELS_RUNTIME": "process", "MLFLOW_TRACKING_URI": "none", "SENTINELS_TICK": "5"}) as env:
        line("process runtime: submit -> RUNNING", submit_to_running(env, "python:3.11", ["true"]),
             "target p50 <= 300 ms")
    problem = engines.engine_problem()
    if problem:
        print(f"container runtime: not measured ({problem})")
        return
    root = Path(tempfile.mkdtemp(prefix="sentinels-bench-"))
    image = engines.build(root, engines.unique_tag("sentinels-bench"))
    try:
        with stack({"SENTINELS_RUNTIME": "podman", "MLFLOW_TRACKING_URI": "none", "SENTINELS_TICK": "5"}) as env:
            ours = submit_to_running(env, image, ["true"])
            theirs = engine_run(image)
        line("podman runtime: submit -> RUNNING (local image, free slot)", ours, "target p50 <= 1 s")
        line("podman's own `podman run -d` to a started container, same run", theirs, "the engine's part")
        print(f"overhead that is ours (p50 difference): {ms(pct(ours, 50) - pct(theirs, 50))}")
    finally:
        engines.podman("rmi", "--force", image, check=False)


if __name__ == "__main__":
    main()
