"""Observability numbers next to their targets: `/metrics` with 100,000 queued jobs (the
exporter as its own process, over HTTP); `sentinels logs` printing a job's first 1,000
lines from a local server speaking Elasticsearch's API; `sentinels top` as a process."""

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

from common import ROOT, median, ms, nats_server
from foundation import fill

from sentinels.adapters import jetstream
from sentinels.domain.priority import PriorityConfig
from sentinels.embedded import natsd

N = 100_000


def metrics_at_100k(url: str) -> None:
    async def go():
        nc = await jetstream.connect(url)
        js = nc.jetstream(timeout=30)
        await jetstream.ensure(js)
        t = time.perf_counter()
        await fill(js, N, PriorityConfig.from_dict(None))
        print(f"filled {N:,} queued jobs in {time.perf_counter() - t:.1f} s")
        await nc.close()

    asyncio.run(go())
    port = natsd.free_port()
    env = {**os.environ, "SENTINELS_HOME": tempfile.mkdtemp(prefix="sentinels-bench-"), "SENTINELS_NATS_URL": url,
           "SENTINELS_METRICS_LISTEN": f"127.0.0.1:{port}"}
    proc = subprocess.Popen([sys.executable, "-m", "sentinels.exporter"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        t0 = time.perf_counter()
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                if "sentinels_exporter_mirror_ready 1.0" in body:
                    break
            except OSError:
                pass
            if time.perf_counter() - t0 > 300:
                raise SystemExit("the exporter did not load 100,000 records within 300 s")
            time.sleep(0.2)
        print(f"exporter start-up, {N:,} records mirrored: {time.perf_counter() - t0:.1f} s")
        times = []
        for _ in range(30):
            t = time.perf_counter()
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            times.append(time.perf_counter() - t)
        assert f'sentinels_jobs{{state="queued"}} {float(N)}' in body, "every queued job counted"
        print(f"GET /metrics at {N:,} queued: median {ms(median(times))}, max {ms(max(times))}   [target <= 50 ms]")
    finally:
        proc.terminate()
        proc.wait()


def cli_wall(env, *args, runs=7) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True, cwd=ROOT)
        times.append(time.perf_counter() - t)
        assert r.returncode == 0, r.stderr
    return median(times), r.stdout


def logs_first_1000(url: str) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.fake_elasticsearch import FakeElasticsearch

    job_id = "ab2cd3ef4g"

    async def record():
        nc = await jetstream.connect(url)
        js = nc.jetstream()
        await jetstream.ensure(js)
        jobs = await jetstream.JetStreamJobs.open(js)
        await jobs.create({"id": job_id, "state": "SUCCEEDED", "priority": "normal", "owner": "bench"})
        await nc.close()

    asyncio.run(record())
    with FakeElasticsearch() as es:
        for i in range(1000):
            es.add("sentinels-logs-2026.12.01", {"@timestamp": f"2026-12-01T00:00:{i // 100:02d}.{i % 100:03d}Z",
                                                 "log": f"epoch {i} loss {1 / (i + 1):.5f}\n",
                                                 "sentinels_job_id": job_id, "sentinels_seq": i})
        env = {**os.environ, "SENTINELS_HOME": tempfile.mkdtemp(prefix="sentinels-bench-"), "SENTINELS_NATS_URL": url,
               "SENTINELS_ELASTICSEARCH_URL": es.url}
        took, out = cli_wall(env, "logs", job_id)
        assert len(out.splitlines()) == 1000
    print(f"`sentinels logs ID`, first 1,000 lines from a local Elasticsearch: median {ms(took)}   [target <= 1 s]")


def top_wall() -> None:
    import json

    from sentinels.domain import usage

    home = tempfile.mkdtemp(prefix="sentinels-bench-")
    for i in range(20):
        job_dir = os.path.join(home, "jobs", f"a{i:09d}")
        os.makedirs(job_dir)
        with open(os.path.join(job_dir, "usage.json"), "w") as f:
            json.dump({**usage.empty(), "job": f"a{i:09d}", "name": f"job-{i}", "running": True, "at": time.time(),
                       "cpu_cores": 1.5, "memory_bytes": 2 << 30}, f)
    took, out = cli_wall({**os.environ, "SENTINELS_HOME": home}, "top")
    assert out.count("job-") == 20
    print(f"`sentinels top` as a process, 20 running jobs: median {ms(took)}   [target <= 300 ms]")


def main():
    sys.stdout.reconfigure(line_buffering=True)
    top_wall()
    with nats_server() as url:
        logs_first_1000(url)
    with nats_server() as url:
        metrics_at_100k(url)


if __name__ == "__main__":
    main()
