"""The whole Kubernetes path on one machine: sentinels (backend kubernetes) + a simulated cluster.

`SimStack` starts, in a background thread's event loop, the API server (kmock-based),
the simulated control plane and the ApiServerSource stand-in; then `sentinels up -d`
with `backend: kubernetes` pointed at that API server (NATS JetStream, the four
functions, the router; no local executor). Scenarios talk to it synchronously:

    with SimStack(tmp_path, [NodeShape("n1", cpu="4")]) as sim:
        job = sim.submit({"image": "ghcr.io/acme/train:1", "env": {SCRIPT_ENV: '{"duration": 1}'}})
        record = sim.wait(job, "SUCCEEDED")
        sim.cluster(lambda c: c.delete_node("n1"))

Everything sentinels does goes over real HTTP (the official Kubernetes client) and real
NATS; only the cluster's own components are simulated.
"""

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import kmock
import uvloop
import yaml

from sentinels.adapters import jetstream
from sentinels.embedded import natsd, supervisor
from sentinels.settings import Settings

from .apiserver import JOBS, ApiServer
from .control import NodeShape, Script, SimCluster
from .source import ApiServerSource

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "sentinels"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


class SimStack:
    def __init__(self, home: Path, nodes: list[NodeShape], *, config: Optional[dict] = None,
                 env: Optional[dict] = None, default: Script = Script(), source_in_process: bool = True,
                 claims: Optional[dict] = None, registries: Optional[dict] = None):
        self.home = Path(home)
        self.nodes = nodes
        self.config = config or {}
        self.extra_env = env or {}
        self.default = default
        self.source_in_process = source_in_process
        self.claims = claims or {}  # PVC name -> the host directory standing for it (jobs' outputs)
        self.registries = registries or {}  # private registry host -> the pull Secret the cluster wants
        self.loop = uvloop.new_event_loop()  # the simulated API server answers every call on it
        self.thread = threading.Thread(target=self.loop.run_forever, name="simcluster", daemon=True)
        self.api: Optional[ApiServer] = None
        self.sim: Optional[SimCluster] = None
        self.source_proc = None

    # --- running things in the cluster's loop ---------------------------------------
    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def cluster(self, fn: Callable[[SimCluster], object]):
        """Call fn(control plane) inside the cluster's loop (node operations, evictions)."""
        async def call():
            return fn(self.sim)
        return self.run(call())

    # --- start / stop ------------------------------------------------------------------
    def __enter__(self) -> "SimStack":
        self.thread.start()
        self.run(self._start_cluster())
        self._ports()
        cfg = {"backend": "kubernetes", **self.config,
               "kubernetes": {"host": self.api_url, "namespace": NAMESPACE, "request_timeout": 3,
                              **(self.config.get("kubernetes") or {})}}
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.yaml").write_text(yaml.safe_dump(cfg))
        try:
            for tries_left in (2, 1, 0):
                try:
                    self._up()
                    break
                except RuntimeError as e:
                    if tries_left and "address already in use" in str(e):  # taken between the probe and the bind
                        self._ports()
                    elif not (tries_left and "did not start" in str(e)):  # a loaded machine may need more than 30 s
                        raise
        except Exception:
            self.__exit__(None, None, None)
            raise
        self.run(self._start_source())
        return self

    def _ports(self) -> None:
        """Free ports for the stack (new ones when another process took them first)."""
        base = natsd.free_block(4)
        self.env = {**os.environ, "SENTINELS_HOME": str(self.home), "SENTINELS_URL": f"http://127.0.0.1:{base}",
                    "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "SENTINELS_TICK": "1",
                    "SENTINELS_BACKEND": "kubernetes", "MLFLOW_TRACKING_URI": "none", **self.extra_env}
        self.url = self.env["SENTINELS_URL"]

    def _up(self, timeout: float = 240) -> None:
        """`sentinels up -d`, with more patience than the CLI's 60 s (a loaded CI machine
        creating a new MLflow store can take longer)."""
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        log = self.home / "logs" / "up.log"
        proc = subprocess.Popen([sys.executable, "-m", "sentinels.embedded.supervisor"], stdin=subprocess.DEVNULL,
                                stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
                                start_new_session=True)
        settings = Settings.load(env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"sentinels up failed: {log.read_text(errors='replace')[-2000:]}")
            if supervisor.running_pid(settings) == proc.pid and supervisor.healthy(self.url):
                return
            time.sleep(0.1)
        proc.terminate()
        raise RuntimeError(f"sentinels up did not answer within {timeout:.0f} s; see {log}")

    async def _start_cluster(self) -> None:
        self.api = ApiServer()
        await self.api.__aenter__()
        self.server = kmock.Server(self.api)
        await self.server.__aenter__()
        self.api_url = str(self.server.url).rstrip("/")
        self.sim = SimCluster(self.api, self.default, claims=self.claims, registries=self.registries)
        for shape in self.nodes:
            self.sim.add_node(shape)
        self.sim.start()

    async def _start_source(self) -> None:
        admin = self.home / "secrets" / "nats-admin.json"  # the stack's NATS requires credentials
        login = jetstream.credentials(str(admin)) if admin.exists() else {}
        self.nc = await jetstream.connect(self.env["SENTINELS_NATS_URL"], "simcluster", reconnect=True, login=login)
        self.js = self.nc.jetstream(timeout=5)
        await jetstream.ensure(self.js)
        self.jobs = await jetstream.JetStreamJobs.open(self.js)
        if self.source_in_process:
            self.source = ApiServerSource(self.api_url, jetstream.JetStreamSink(self.js), NAMESPACE)
            self.source.start()
        else:  # its own process: JSON decoding and publishing off the API server's core
            self.source = None
            self.source_proc = subprocess.Popen(
                [sys.executable, "-m", "tests.simcluster.source", "--api", self.api_url, "--nats",
                 self.env["SENTINELS_NATS_URL"], "--namespace", NAMESPACE], cwd=ROOT,
                stdout=open(self.home / "source.log", "ab"), stderr=subprocess.STDOUT,
                env={**os.environ, jetstream.CREDENTIALS_ENV: str(admin)} if admin.exists() else None)

    def __exit__(self, *exc) -> None:
        if getattr(self, "source", None) is not None:  # before NATS goes: it would retry its sends
            try:
                self.run(self.source.stop(), timeout=30)
            except Exception:
                pass
            self.source = None
        if getattr(self, "env", None):
            subprocess.run([sys.executable, "-m", "sentinels.cli.main", "down"], env=self.env, capture_output=True,
                           timeout=60, cwd=ROOT)
        if self.source_proc is not None:
            self.source_proc.terminate()
            self.source_proc.wait(timeout=10)
        try:
            self.run(self._stop(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    async def _stop(self) -> None:
        if getattr(self, "source", None) is not None:
            await self.source.stop()
        if getattr(self, "nc", None) is not None:
            try:
                await self.nc.close()
            except Exception:  # NATS already stopped with the stack
                pass
        if self.sim is not None and self.sim.task is not None:
            self.sim.task.cancel()
        if getattr(self, "server", None) is not None:
            self.api.end_watches()
            await self.server.__aexit__(None, None, None)
        if self.api is not None:
            await self.api.__aexit__(None, None, None)

    # --- sentinels side -----------------------------------------------------------------
    def submit(self, spec: dict, timeout: float = 30) -> str:
        from tests.conftest import post_ce

        status, body = post_ce(self.url, "io.sentinels.job.submit", {"spec": spec})
        if status != 201:
            raise RuntimeError(f"submit answered {status}: {body}")
        return body["id"]

    def record(self, job_id: str) -> Optional[dict]:
        got = self.run(self.jobs.get(job_id))
        return got[0] if got else None

    def wait(self, job_id: str, state, timeout: float = 120, where: Optional[Callable[[dict], bool]] = None) -> dict:
        """Wait until the job's record is in `state` (a name or a tuple) and `where(record)` holds."""
        states = (state,) if isinstance(state, str) else tuple(state)
        deadline = time.monotonic() + timeout
        record = None
        while time.monotonic() < deadline:
            record = self.record(job_id)
            if record and record["state"] in states and (where is None or where(record)):
                return record
            if record and record["state"] in TERMINAL and not set(states) & set(TERMINAL):
                break
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} not {states} after {timeout}s: {json.dumps(record, indent=1)[:3000]}")

    def waiting_reason(self, job_id: str) -> str:
        """Why the scheduler's last pass left a queued job waiting (what `sentinels status` shows)."""
        async def read():
            board = await jetstream.JetStreamBoard.open(self.js)
            return ((await board.get("waiting")) or {}).get("reasons", {}).get(job_id, "")
        return self.run(read())

    def jobs_in_cluster(self, job_id: Optional[str] = None) -> list[dict]:
        """Every Job object the API server holds now (for one sentinels job id)."""
        async def read():
            out = self.api.items(JOBS)
            return [j for j in out if job_id is None
                    or (j["metadata"].get("labels") or {}).get("sentinels.io/job-id") == job_id]
        return self.run(read())

    def history(self, job_id: str) -> list[dict]:
        async def read():
            return await jetstream.JetStreamHistory(self.js).of(job_id)
        return self.run(read())
