"""Issue 11 numbers: the CLI as whole processes next to `python -c pass`, the read API at
100,000 queued, `ls` with 1,000,000 finished jobs in the store, a 1,000-job sweep.

NATS JetStream and the submit function run alone (no scheduler competing for the two
cores). The store is filled the fast way (pipelined JetStream publishes of exactly what
the job store writes: queue entries, records, index entries), then measured through the
real CLI and the real HTTP API.
"""

import argparse
import asyncio
import getpass
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import ROOT, load, median, ms, natsd, pct, wait_http

from sentinels.adapters import jetstream
from sentinels.adapters.jetstream_index import FINISHED_STREAM, INDEX_STREAM, JobIndex, subject
from sentinels.domain import job
from sentinels.domain.names import JOBS_BUCKET, QUEUE_SUBJECT
from sentinels.domain.priority import PriorityConfig
from sentinels.domain.spec import validate

SPEC = {"image": "python:3.11", "command": ["python", "train.py"], "resources": {"cpu": 60, "memory": "1Gi"},
        "env": {"EPOCHS": "10"}, "params": {"lr": 0.01}}
QUEUED, FINISHED, MINE_ACTIVE = 100_000, 1_000_000, 20
ME = getpass.getuser()
CHUNK = 20_000
TARGET_CLI, TARGET_GET, TARGET_QUEUE, TARGET_LS, TARGET_SWEEP = 0.150, 0.005, 0.020, 0.150, 1.0


async def publish_all(js, messages) -> list:
    """Pipelined publishes, awaited a chunk at a time; returns the acks in order."""
    acks, pending = [], []
    for subj, body, headers in messages:
        pending.append(await js.publish_async(subj, body, headers=headers))
        if len(pending) >= CHUNK:
            acks += [await f for f in pending]
            pending = []
    return acks + [await f for f in pending]


async def publish_fast(nc, messages) -> int:
    """Core-NATS publishes into the streams (no ack each, a flush per chunk): the bulk load."""
    n = 0
    for subj, body, headers in messages:
        await nc.publish(subj, body, headers=headers)
        n += 1
        if n % CHUNK == 0:
            await nc.flush(timeout=60)
    await nc.flush(timeout=60)
    return n


async def fill(nats_url: str, prio: PriorityConfig) -> str:
    """100,000 queued jobs (20 of them mine) and 1,000,000 finished ones (a tenth mine)."""
    nc = await jetstream.connect(nats_url)
    js = nc.jetstream(timeout=30)
    await jetstream.ensure(js)
    spec = validate(SPEC)
    classes = prio.ordered()
    now = "2026-12-01T00:00:00.000Z"

    def owner(i):
        return ME if i % 10 == 0 else f"user{i % 97}"

    queued = [(job.job_id_for("q", "bench", str(i)), classes[i % len(classes)]) for i in range(QUEUED)]
    acks = await publish_all(js, ((QUEUE_SUBJECT.format(k), json.dumps(job.queue_entry(
        job_id=j, spec=spec, klass=k, submitted_at=now)).encode(), None) for j, k in queued))
    records = []
    for i, ((job_id, klass), ack) in enumerate(zip(queued, acks)):
        who = {"user": ME if i < MINE_ACTIVE else f"user{i % 97}", "team": None}
        records.append(job.new_record(job_id=job_id, spec=dict(spec, priority=klass), who=who, klass=klass,
                                      now=now, queue_seq=ack.seq))
    await publish_all(js, ((f"$KV.{JOBS_BUCKET}.{r['id']}", json.dumps(r).encode(), None) for r in records))
    await publish_all(js, ((subject("active", r), json.dumps(JobIndex.entry(r)).encode(), None) for r in records))
    print(f"  filled {QUEUED:,} queued jobs", flush=True)

    t0 = time.perf_counter()
    ttl = {"Nats-TTL": f"{30 * 86400}s"}
    for start in range(0, FINISHED, 100_000):
        done = []
        for i in range(start, min(start + 100_000, FINISHED)):
            job_id = job.job_id_for("f", "bench", str(i))
            r = job.new_record(job_id=job_id, spec=spec, who={"user": owner(i), "team": None}, klass="normal",
                               now=now, queue_seq=0)
            r.update(state="SUCCEEDED", reason="exit code 0", timestamps={"QUEUED": now, "SUCCEEDED": now})
            done.append(r)
        await publish_fast(nc, ((f"$KV.{JOBS_BUCKET}.{r['id']}", json.dumps(r).encode(), ttl) for r in done))
        await publish_fast(nc, ((subject("done", r), json.dumps(JobIndex.entry(r)).encode(), ttl) for r in done))
    for _ in range(600):  # the server may still be writing the last ones
        kv = (await js.stream_info(f"KV_{JOBS_BUCKET}")).state.messages
        idx = (await js.stream_info(INDEX_STREAM)).state.messages + (await js.stream_info(FINISHED_STREAM)).state.messages
        if kv >= QUEUED + FINISHED and idx >= QUEUED + FINISHED:
            break
        await asyncio.sleep(0.5)
    if kv < QUEUED + FINISHED or idx < QUEUED + FINISHED:
        raise SystemExit(f"the store holds {kv:,} records and {idx:,} index entries, not {QUEUED + FINISHED:,}")
    print(f"  filled {FINISHED:,} finished jobs in {time.perf_counter() - t0:.0f} s "
          f"(jobs bucket {kv:,} records, index {idx:,} entries)", flush=True)
    await nc.close()
    return records[0]["id"]


def http_p50(port: int, path: str, n: int = 300) -> tuple[float, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    lat = []
    for i in range(n + 20):
        t = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise SystemExit(f"GET {path} answered {resp.status}: {body[:200]!r}")
        if i >= 20:  # warm-up excluded
            lat.append(time.perf_counter() - t)
    conn.close()
    return pct(lat, 50), pct(lat, 99)


def processes(commands: dict[str, list[str]], env: dict, rounds: int = 15) -> dict[str, float]:
    """Median wall time of each command as a whole process, interleaved so load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(rounds):
        for name, argv in commands.items():
            t = time.perf_counter()
            r = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT)
            times[name].append(time.perf_counter() - t)
            if r.returncode:
                raise SystemExit(f"{name} failed: {r.stderr}")
    return {k: median(v) for k, v in times.items()}


def report(label: str, value: float, target: float, extra: str = "") -> None:
    verdict = "ok" if value <= target else "OVER"
    print(f"{label:<52} {ms(value):>10}   [target <= {ms(target)}] {verdict}{extra}", flush=True)


def main() -> None:
    global QUEUED, FINISHED
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=QUEUED)
    parser.add_argument("--finished", type=int, default=FINISHED)
    args = parser.parse_args()
    QUEUED, FINISHED = args.queued, args.finished
    home = Path(tempfile.mkdtemp(prefix="sentinels-bench-"))
    nport, sport = natsd.free_port(), natsd.free_port()
    nats = natsd.start(home / "js", nport)
    url = f"http://127.0.0.1:{sport}"
    env = {**os.environ, "SENTINELS_HOME": str(home), "SENTINELS_NATS_URL": f"nats://127.0.0.1:{nport}",
           "SENTINELS_URL": url}
    env.pop("SENTINELS_TOKEN", None)
    fn = subprocess.Popen([sys.executable, "-m", "sentinels.embedded.serve", "submit", str(sport)], env=env,
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(url + "/")
        prio = PriorityConfig.from_dict(None)
        job_id = asyncio.run(fill(env["SENTINELS_NATS_URL"], prio))
        sentinels = shutil.which("sentinels", path=str(Path(sys.executable).parent)) or "sentinels"
        py = sys.executable
        # as installed: byte-compiled (pip compiles what it installs; PYTHONDONTWRITEBYTECODE
        # in the environment would otherwise make every run compile the CLI from source)
        subprocess.run([py, "-m", "compileall", "-q", "cli", "sentinels"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        print(f"\nwhole processes, median of 15 interleaved runs ({QUEUED:,} queued, {FINISHED:,} finished in the "
              f"store; {load()}):")
        t = processes({
            "python -c pass": [py, "-c", "pass"],
            "python3 -c pass (system)": [getattr(sys, "_base_executable", py), "-c", "pass"],
            "sentinels status ID": [sentinels, "status", job_id],
            "sentinels queue": [sentinels, "queue"],
            "sentinels submit": [sentinels, "submit", "python:3.11", "--cpu", "60", "--", "true"],
            "sentinels ls (my active jobs)": [sentinels, "ls"],
            "sentinels ls --all --limit 50": [sentinels, "ls", "--all", "--limit", "50"],
        }, env)
        base = t["python -c pass"]
        print(f"{'python -c pass (same interpreter as the CLI)':<52} {ms(base):>10}")
        print(f"{'python3 -c pass (the base interpreter, no venv)':<52} {ms(t['python3 -c pass (system)']):>10}")
        for name in ("sentinels status ID", "sentinels queue", "sentinels submit"):
            report(name, t[name], TARGET_CLI, f"  ({ms(t[name] - base)} above python -c pass)")
        for name in ("sentinels ls (my active jobs)", "sentinels ls --all --limit 50"):
            report(name, t[name], TARGET_LS, f"  ({ms(t[name] - base)} above python -c pass)")

        print(f"\nHTTP API, keep-alive client, 300 requests each ({QUEUED:,} queued, {FINISHED:,} finished; {load()}):")
        p50, p99 = http_p50(sport, f"/v1/jobs/{job_id}")
        report("GET /v1/jobs/{id} (queued: position + reason) p50", p50, TARGET_GET, f"  p99 {ms(p99)}")
        p50, p99 = http_p50(sport, "/v1/queue?limit=50")
        report("GET /v1/queue?limit=50 p50", p50, TARGET_QUEUE, f"  p99 {ms(p99)}")
        p50, p99 = http_p50(sport, f"/v1/jobs?owner={ME}&state=finished&limit=50", 100)
        report("GET /v1/jobs?owner=me&state=finished&limit=50 p50", p50, TARGET_LS, f"  p99 {ms(p99)}")
        p50, p99 = http_p50(sport, "/v1/jobs?limit=50", 100)
        report("GET /v1/jobs?limit=50 (everyone's) p50", p50, TARGET_LS, f"  p99 {ms(p99)}")

        print(f"\nsweep ({load()}):")
        body = json.dumps({"spec": SPEC, "array": "1-1000"}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", sport, timeout=60)
        t0 = time.perf_counter()
        conn.request("POST", "/", body, {"content-type": "application/json", "ce-specversion": "1.0",
                                         "ce-type": "io.sentinels.job.submit", "ce-source": "bench",
                                         "ce-id": str(uuid.uuid4())})
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        elapsed = time.perf_counter() - t0
        if resp.status != 201 or answer.get("size") != 1000:
            raise SystemExit(f"sweep answered {resp.status}: {str(answer)[:200]}")
        report("a 1,000-job sweep accepted (one request)", elapsed, TARGET_SWEEP)
    finally:
        fn.terminate()
        fn.wait()
        nats.terminate()
        nats.wait()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
