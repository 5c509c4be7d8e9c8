"""Helpers shared by the benchmarks: a private embedded stack, percentiles, a tiny HTTP client."""

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sentinels.embedded import natsd  # noqa: E402


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


def ms(x):
    return f"{x * 1000:.1f} ms"


def free_block(n=6):
    return natsd.free_block(n)


@contextmanager
def nats_server():
    """A private nats-server with JetStream; yields its URL."""
    home = Path(tempfile.mkdtemp(prefix="sentinels-bench-"))
    port = natsd.free_port()
    proc = natsd.start(home / "js", port)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def stack(extra_env=None, config=None):
    """`sentinels up -d` in a temporary home; yields the environment to talk to it."""
    home = Path(tempfile.mkdtemp(prefix="sentinels-bench-"))
    if config:
        import yaml
        (home / "config.yaml").write_text(yaml.safe_dump(config))
    base = free_block()
    env = {**os.environ, "SENTINELS_HOME": str(home), "SENTINELS_URL": f"http://127.0.0.1:{base}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", **(extra_env or {})}
    r = subprocess.run([sys.executable, "-m", "sentinels.cli.main", "up", "-d"], env=env, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(r.stderr)
    try:
        yield env
    finally:
        subprocess.run([sys.executable, "-m", "sentinels.cli.main", "down"], env=env, capture_output=True, cwd=ROOT)


class Http:
    """A minimal keep-alive HTTP/1.1 client, so the load generator is not the bottleneck."""

    def __init__(self, host, port):
        self.host, self.port = host, port

    async def open(self):
        self.r, self.w = await asyncio.open_connection(self.host, self.port)

    async def post(self, body: bytes, headers: dict) -> tuple[int, bytes]:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.w.write(f"POST / HTTP/1.1\r\nhost: {self.host}\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode() + body)
        status_line = await self.r.readline()
        length = 0
        while True:
            line = await self.r.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            if k.lower() == "content-length":
                length = int(v)
        data = await self.r.readexactly(length) if length else b""
        return int(status_line.split()[1]), data

    def close(self):
        self.w.close()


def ce_headers(event_type: str, token=None):
    from sentinels.domain.events import binary_headers

    h = binary_headers({"specversion": "1.0", "type": event_type, "source": "bench", "id": str(uuid.uuid4())})
    if token:
        h["authorization"] = f"Bearer {token}"
    return h


async def submit_load(url: str, n: int, clients: int, spec: dict) -> tuple[float, list[float]]:
    from urllib.parse import urlparse
    u = urlparse(url)
    body = json.dumps({"spec": spec}).encode()
    latencies: list[float] = []
    per = n // clients

    async def client():
        c = Http(u.hostname, u.port)
        await c.open()
        for _ in range(per):
            t = time.perf_counter()
            status, data = await c.post(body, ce_headers("io.sentinels.job.submit"))
            latencies.append(time.perf_counter() - t)
            if status not in (200, 201):
                raise SystemExit(f"submit answered {status}: {data[:200]!r}")
        c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - t0, latencies


def wait_http(url, timeout=30):
    """Wait until `url` answers (a function server starting)."""
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=0.5)
            return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not start")


def load() -> str:
    """The machine's load average, printed with every benchmark: numbers under load are inflated."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def median(values):
    return statistics.median(values) if values else float("nan")
