"""Issue 2 numbers: submit throughput (with and without NATS authentication), queue listing and status at 100,000 queued, CLI wall time.

The submit benchmark runs NATS JetStream and the submit function alone (the router is
not started, so the scheduler does not compete for the two cores while we measure).
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, median, ms, nats_server, natsd, pct, submit_load, wait_http

from sentinels.adapters import jetstream
from sentinels.domain import job
from sentinels.domain.priority import PriorityConfig
from sentinels.domain.spec import validate
from sentinels.embedded import natsauth

SPEC = {"image": "python:3.11", "command": ["python", "train.py"], "resources": {"cpu": 1, "memory": "1Gi"}}


def submit_throughput(n=6000, clients=8, auth=False) -> float:
    """Jobs per second through the submit function; with `auth`, NATS runs with the
    embedded default's users and the function connects as `submit`."""
    home = Path(tempfile.mkdtemp(prefix="sentinels-bench-"))
    nport, sport = natsd.free_port(), natsd.free_port()
    env = {**os.environ, "SENTINELS_HOME": str(home), "SENTINELS_NATS_URL": f"nats://127.0.0.1:{nport}"}
    env.pop(jetstream.CREDENTIALS_ENV, None)
    block = None
    if auth:
        block = natsauth.config_block(natsauth.ensure(home))
        env[jetstream.CREDENTIALS_ENV] = str(natsauth.credentials_file(home, "submit"))
    nats = natsd.start(home / "js", nport, auth=block)
    if auth:  # the streams are made by the admin user, as `sentinels up` does
        async def prepare():
            admin = jetstream.credentials(str(natsauth.credentials_file(home, "admin")))
            nc = await jetstream.connect(env["SENTINELS_NATS_URL"], login=admin)
            await jetstream.ensure(nc.jetstream())
            await nc.close()
        asyncio.run(prepare())
    fn = subprocess.Popen([sys.executable, "-m", "sentinels.embedded.serve", "submit", str(sport)], env=env,
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{sport}/")
        url = f"http://127.0.0.1:{sport}"
        asyncio.run(submit_load(url, 400, clients, SPEC))  # warm up
        elapsed, lat = asyncio.run(submit_load(url, n, clients, SPEC))
        rate = len(lat) / elapsed
        print(f"submit{' (NATS authentication on)' if auth else ''}: {rate:,.0f} jobs/s with {clients} clients "
              f"({len(lat)} jobs); p50 {ms(pct(lat, 50))}, p99 {ms(pct(lat, 99))}   [target >= 1,000 jobs/s]")
        return rate
    finally:
        fn.terminate()
        fn.wait()
        nats.terminate()
        nats.wait()


def submit_with_and_without_auth(rounds=2) -> None:
    """Alternate the two set-ups (the machine's load drifts) and compare the best of each."""
    plain, authed = [], []
    for _ in range(rounds):
        plain.append(submit_throughput(auth=False))
        authed.append(submit_throughput(auth=True))
    ratio = max(authed) / max(plain)
    print(f"submit with NATS authentication: {ratio:.0%} of the throughput without "
          f"({max(authed):,.0f} vs {max(plain):,.0f} jobs/s, best of {rounds})   [target >= 90%]")


async def fill(js, n: int, prio: PriorityConfig) -> list[tuple[str, int]]:
    """Queue n jobs across classes the fast way (async publishes), with their records."""
    classes = prio.ordered()
    spec = validate(SPEC)
    futures, ids = [], []
    for i in range(n):
        klass = classes[i % len(classes)]
        job_id = job.job_id_for("bench", "bench", str(i))
        entry = job.queue_entry(job_id=job_id, spec=spec, klass=klass, submitted_at="2026-11-28T00:00:00.000Z")
        futures.append((job_id, klass, await js.publish_async(jetstream.QUEUE_SUBJECT.format(klass), json.dumps(entry).encode())))
        if len(futures) % 5000 == 0:
            await asyncio.sleep(0)
    acks = [(j, k, await f) for j, k, f in futures]
    recs = []
    for job_id, klass, ack in acks:
        rec = job.new_record(job_id=job_id, spec=dict(spec, priority=klass), who={"user": "bench"}, klass=klass,
                             now="2026-11-28T00:00:00.000Z", queue_seq=ack.seq)
        recs.append(await js.publish_async(f"$KV.{jetstream.JOBS_BUCKET}.{job_id}", json.dumps(rec).encode()))
        ids.append((job_id, ack.seq, klass))
    for f in recs:
        await f
    return ids


async def reads_at_100k(url: str, n=100_000):
    prio = PriorityConfig.from_dict(None)
    nc = await jetstream.connect(url)
    js = nc.jetstream(timeout=30)
    await jetstream.ensure(js)
    t = time.perf_counter()
    ids = await fill(js, n, prio)
    print(f"filled {n:,} queued jobs (queue entries + records) in {time.perf_counter() - t:.1f} s")
    jobs, queue = await jetstream.JetStreamJobs.open(js), jetstream.JetStreamQueue(js)

    async def first_50():
        heads = await queue.heads(prio.ordered(), 50)
        await asyncio.gather(*(jobs.get(e["id"]) for _, e in heads), queue.counts())
        return heads

    async def status(job_id, seq, klass):
        rec, _ = await jobs.get(job_id)
        return await queue.position(prio.ordered(), klass, rec["queue_seq"])

    list_t, status_t = [], []
    for i in range(20):
        t = time.perf_counter()
        heads = await first_50()
        list_t.append(time.perf_counter() - t)
        assert len(heads) == 50 and heads[0][1]["class"] == "critical"
        job_id, seq, klass = ids[(i * 4999 + 77) % n]
        t = time.perf_counter()
        pos = await status(job_id, seq, klass)
        status_t.append(time.perf_counter() - t)
        assert 1 <= pos <= n
    print(f"queue listing, first 50 in order at {n:,} queued: median {ms(median(list_t))}, max {ms(max(list_t))}   [target <= 100 ms]")
    print(f"status with queue position at {n:,} queued: median {ms(median(status_t))}, max {ms(max(status_t))}   [target <= 20 ms]")
    await nc.close()
    return ids


def main():
    sys.stdout.reconfigure(line_buffering=True)
    submit_with_and_without_auth()
    with nats_server() as url:
        asyncio.run(reads_at_100k(url))
    print("(the CLI as whole processes, through the HTTP API: bench/api.py)")


if __name__ == "__main__":
    main()
