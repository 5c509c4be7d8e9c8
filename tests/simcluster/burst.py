"""A burst of jobs through sentinels on a simulated cluster, with nodes drained and lost midway.

`make e2e-kubernetes` runs a small one and prints one line:

    kubernetes e2e: <n> submitted, <n> succeeded, <n> requeued, 0 lost, 0 duplicated

Counts come from the store (job records: SUCCEEDED, attempts > 1) and from the API
server (every Job created over HTTP, by name and attempt: two for one attempt is a
duplicate); lost = submitted jobs that did not end. bench/simcluster.py runs a big one.

    python -m tests.simcluster.burst [--nodes 20] [--jobs 200] [--timeout 600]
"""

import argparse
import json
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .control import SCRIPT_ENV, NodeShape
from .harness import SimStack

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
LOOK_AT = 100  # records read per look while waiting for the burst to end (up to 200 confirmed a second)


def cluster_nodes(n: int) -> list[NodeShape]:
    """Mixed shapes: one in ten nodes has 4 GPUs (tainted), the rest are CPU nodes of two sizes."""
    out = []
    for i in range(n):
        if i % 10 == 9:
            out.append(NodeShape(f"gpu-{i}", cpu="32", memory="128Gi", gpu=4, labels={"accelerator": "sim-gpu"},
                                 taints=(GPU_TAINT,)))
        else:
            big = i % 2 == 0
            out.append(NodeShape(f"cpu-{i}", cpu="16" if big else "8", memory="64Gi" if big else "32Gi"))
    return out


def job_specs(n: int, seed: int = 7, duration: tuple = (0.5, 2.0)) -> list[dict]:
    """Mixed requests: 1-4 CPUs, 1-8 GiB, one in ten asks for a GPU."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        res = {"cpu": rnd.choice([1, 1, 2, 4]), "memory": f"{rnd.choice([1, 2, 4, 8])}Gi"}
        if i % 10 == 3:
            res["gpu"] = 1
        script = {"duration": round(rnd.uniform(*duration), 2), "logs": [f"job {i} done"]}
        out.append({"image": "ghcr.io/acme/train:1.4", "name": f"burst-{i}", "resources": res,
                    "env": {SCRIPT_ENV: json.dumps(script)}})
    return out


@dataclass
class Result:
    submitted: int = 0
    succeeded: int = 0
    requeued: int = 0
    lost: int = 0
    duplicated: int = 0
    failed: int = 0
    seconds: float = 0.0
    first_submit: float = 0.0
    last_end: float = 0.0
    extra: dict = field(default_factory=dict)

    def line(self) -> str:
        return (f"kubernetes e2e: {self.submitted} submitted, {self.succeeded} succeeded, {self.requeued} requeued, "
                f"{self.lost} lost, {self.duplicated} duplicated")


def count(sim: SimStack, ids: list[str]) -> Result:
    r = Result(submitted=len(ids))
    records = [sim.record(j) for j in ids]
    r.succeeded = sum(1 for x in records if x and x["state"] == "SUCCEEDED")
    r.failed = sum(1 for x in records if x and x["state"] in ("FAILED", "CANCELLED"))
    r.requeued = sum(1 for x in records if x and x.get("attempts", 1) > 1)
    r.lost = sum(1 for x in records if not x or x["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED"))
    r.duplicated = sum(n - 1 for n in sim.api.created_jobs.values() if n > 1)
    return r


def submit_all(sim: SimStack, specs: list[dict], workers: int = 8) -> list[str]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(sim.submit, specs))


def busy_nodes(sim: SimStack, n: int, timeout: float = 60) -> list[str]:
    """`n` CPU nodes that run pods right now (waiting for them up to `timeout`)."""
    def running(c):
        return sorted({p["spec"]["nodeName"] for p in c.api.items("v1/pods")
                       if (p.get("status") or {}).get("phase") == "Running"
                       and p["spec"].get("nodeName", "").startswith("cpu-")})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = sim.cluster(running)
        if len(busy) >= n:
            return busy[:n]
        time.sleep(0.1)
    return []


def _state(sim: SimStack, job_id: str):
    """The job's state, or None when the store did not answer in time (the harness's loop
    also serves the simulated API server, busy at 10,000 jobs): looked at again later."""
    try:
        return (sim.record(job_id) or {}).get("state")
    except TimeoutError:  # nats' timeout, and the harness's wait for its loop, are both TimeoutErrors
        return None


def burst(sim: SimStack, specs: list[dict], timeout: float, disrupt: bool = True) -> Result:
    """Submit every spec; midway drain one CPU node and delete another; wait for all to end."""
    t0 = time.monotonic()
    half = len(specs) // 2
    ids = submit_all(sim, specs[:half])
    if disrupt:
        victims = busy_nodes(sim, 2)
        if len(victims) == 2:
            sim.cluster(lambda c: c.drain(victims[0]))  # cordon + evict what runs there
            sim.cluster(lambda c: c.delete_node(victims[1]))  # gone with its pods
    ids += submit_all(sim, specs[half:])
    deadline = t0 + timeout
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        # the oldest first, a few hundred at a time: reading every record twice a second
        # starves the simulated cluster's own loop (which answers these reads too) at 10,000 jobs;
        # and looking again at once while the oldest still run was most of the harness's reads
        head = pending[:LOOK_AT]
        still = [j for j in head if _state(sim, j) not in ("SUCCEEDED", "FAILED", "CANCELLED")]
        pending = still + pending[LOOK_AT:]
        if still:
            time.sleep(0.5)
    result = count(sim, ids)
    result.seconds = time.monotonic() - t0
    for job_id in pending[:10]:  # what a lost job looked like, for whoever reads the CI log
        record = sim.record(job_id) or {}
        objects = [(j["metadata"]["name"], j.get("status")) for j in sim.jobs_in_cluster(job_id)]
        print(f"not ended: {job_id} {record.get('state')} attempts={record.get('attempts')} "
              f"reason={record.get('reason')!r} k8s_job={record.get('k8s_job')} cluster={objects}", file=sys.stderr)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="a burst of jobs on a simulated Kubernetes cluster")
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=420)
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="sentinels-k8s-e2e-"))
    with SimStack(home, cluster_nodes(args.nodes), config={"kubernetes": {"ttl_seconds_after_finished": 30}}) as sim:
        result = burst(sim, job_specs(args.jobs), args.timeout)
        print(result.line(), flush=True)
    ok = result.lost == 0 and result.duplicated == 0 and result.succeeded == result.submitted
    if not ok:
        print(f"kubernetes e2e: FAILED ({result.failed} failed; logs in {home / 'logs'})", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
