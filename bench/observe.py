"""Observability numbers next to their targets: `/metrics` with 100,000 queued jobs (the
exporter as its own process, over HTTP); `sentinels logs` printing a job's first 1,000
lines through the read API from a local server speaking Elasticsearch's API; `sentinels
top` as a process (through the read API)."""

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import ROOT, ce_headers, load, median, ms, nats_server, wait_http
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


def cli_wall(env, *args, runs=7) -> tuple[float, str]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "sentinels.cli.main", *args], env=env, capture_output=True, text=True, cwd=ROOT)
        times.append(time.perf_counter() - t)
        assert r.returncode == 0, r.stderr
    return median(times), r.stdout


@contextlib.contextmanager
def submit_function(nats_url: str, **env):
    """The submit function (the read API) alone on this NATS; yields (url, its SENTINELS_HOME)."""
    home = Path(tempfile.mkdtemp(prefix="sentinels-bench-"))
    port = natsd.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sentinels.embedded.serve", "submit", str(port)], cwd=ROOT,
                            env={**os.environ, "SENTINELS_HOME": str(home), "SENTINELS_NATS_URL": nats_url, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/", 60)
        yield url, home
    finally:
        proc.terminate()
        proc.wait()


def submit(url: str, name: str) -> str:
    body = json.dumps({"spec": {"image": "python:3.11", "name": name, "command": ["true"]}}).encode()
    req = urllib.request.Request(url + "/", data=body, headers=ce_headers("io.sentinels.job.submit"), method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["id"]


def logs_first_1000(nats_url: str) -> None:
    """`sentinels logs ID` through the read API, which reads a local server speaking
    Elasticsearch's API (tests/fake_elasticsearch.py) with the real client."""
    sys.path.insert(0, str(ROOT))
    from tests.fake_elasticsearch import FakeElasticsearch

    with FakeElasticsearch() as es, submit_function(nats_url, SENTINELS_ELASTICSEARCH_URL=es.url) as (url, _):
        job_id = submit(url, "chatty")
        for i in range(1000):
            es.add("sentinels-logs-2026.12.01", {"@timestamp": f"2026-12-01T00:00:{i // 100:02d}.{i % 100:03d}Z",
                                                 "log": f"epoch {i} loss {1 / (i + 1):.5f}\n",
                                                 "sentinels_job_id": job_id, "sentinels_seq": i})
        took, out = cli_wall({**os.environ, "SENTINELS_URL": url}, "logs", job_id)
        assert len(out.splitlines()) == 1000, len(out.splitlines())
    print(f"`sentinels logs ID`, first 1,000 lines from a local Elasticsearch: median {ms(took)}   [target <= 1 s]")


def top_wall(nats_url: str) -> None:
    """`sentinels top` as a process: the read API reads the executor's samples of 20 running jobs."""
    from sentinels.domain import usage

    with submit_function(nats_url) as (url, home):
        for i in range(20):
            job_id = submit(url, f"job-{i}")
            (home / "jobs" / job_id).mkdir(parents=True)
            (home / "jobs" / job_id / usage.USAGE_FILE).write_text(json.dumps(
                {**usage.empty(), "job": job_id, "name": f"job-{i}", "running": True, "at": time.time(),
                 "cpu_cores": 1.5, "memory_bytes": 2 << 30}))
        took, out = cli_wall({**os.environ, "SENTINELS_URL": url}, "top")
        assert out.count("job-") == 20, out
    base = median([_wall([sys.executable, "-c", "pass"]) for _ in range(7)])
    print(f"`sentinels top` as a process, 20 running jobs: median {ms(took)}   [target <= 300 ms]"
          f"   (python -c pass: {ms(base)} in the same run)")


def _wall(cmd) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, capture_output=True)
    return time.perf_counter() - t


def main():
    sys.stdout.reconfigure(line_buffering=True)
    print(load())
    with nats_server() as url:
        top_wall(url)
        logs_first_1000(url)
    with nats_server() as url:
        metrics_at_100k(url)


if __name__ == "__main__":
    main()
