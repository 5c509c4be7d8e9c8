"""The one image (root Dockerfile), built and run for real: Buildah builds it from a local
Debian base, Podman runs each function's container, CloudEvents posted to them get the
right answers through the whole path (submit -> schedule -> on_job_event -> alert).

Opt-in: set SENTINELS_IMAGE_TEST=1 (`.ci/run` does, after installing the tools); it needs
root, buildah, podman, runc and debootstrap, and skips saying which is missing. No
registry is reachable, so the base is `debootstrap --variant=minbase` (python3, venv) from
the Debian mirror apt uses on this machine, cached as a tarball between runs
($SENTINELS_IMAGE_CACHE, default ~/.cache/sentinels/image-test), and the Python packages
come from a wheelhouse built here with pip and mounted into the build (no index inside).
Around it: a real nats-server, kmock as the Kubernetes API, a local HTTP server standing in
for the broker ingress, and a local server answering like Slack.
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from sentinels.embedded import natsd

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("buildah", "podman", "runc", "debootstrap")
BASE_TAG = "localhost/sentinels-test-base:bookworm"
IMAGE_TAG = "localhost/sentinels:image-test"
SUITE = "bookworm"
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]  # runc cannot raise them here
FIX = ROOT.parent / "shared" / "fixtures" / "kubernetes"


def _why_not() -> str | None:
    if os.environ.get("SENTINELS_IMAGE_TEST") != "1":
        return "image test is opt-in: set SENTINELS_IMAGE_TEST=1 (.ci/run does)"
    if os.geteuid() != 0:
        return "image test needs root (debootstrap, buildah and podman as root)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"image test needs {', '.join(missing)} (apt-get install {' '.join(missing)})"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


def run(cmd, timeout=900, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd[:4]))}... exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def debian_mirror() -> str:
    """The Debian archive apt uses here (deb822 `.sources` or one-line `sources.list`)."""
    apt = Path("/etc/apt")
    for path in sorted(apt.glob("sources.list.d/*.sources")):
        for line in path.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if uri.rstrip("/").endswith("/debian"):
                        return uri
    for path in [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]:
        if path.exists():
            for line in path.read_text().splitlines():
                parts = line.split()
                if parts[:1] == ["deb"]:
                    uri = next((p for p in parts[1:] if "://" in p), "")
                    if uri.rstrip("/").endswith("/debian"):
                        return uri
    pytest.skip("no Debian archive in apt's sources to bootstrap the base image from")


def base_image() -> str:
    """A local Debian minbase image with python3 (built once, the rootfs tarball cached)."""
    if subprocess.run(["buildah", "inspect", "--type", "image", BASE_TAG], capture_output=True).returncode == 0:
        return BASE_TAG
    cache = Path(os.environ.get("SENTINELS_IMAGE_CACHE", Path.home() / ".cache" / "sentinels" / "image-test"))
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"debian-{SUITE}-minbase.tar"
    if not tarball.exists():
        rootfs = cache / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", SUITE,
             str(rootfs), debian_mirror()], timeout=1800)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        run(["tar", "-C", str(rootfs), "-cf", str(tarball) + ".part", "."])
        os.replace(str(tarball) + ".part", tarball)
        shutil.rmtree(rootfs, ignore_errors=True)
    ctx = cache / "base-context"
    ctx.mkdir(exist_ok=True)
    shutil.copy(tarball, ctx / "rootfs.tar")
    (ctx / "Containerfile").write_text('FROM scratch\nADD rootfs.tar /\nCMD ["python3"]\n')
    run(["buildah", "bud", "--isolation", "chroot", "-q", "-t", BASE_TAG, str(ctx)])
    (ctx / "rootfs.tar").unlink()
    return BASE_TAG


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    if os.environ.get("SENTINELS_IMAGE_TAG"):  # iterate on the tests with an image built before
        yield os.environ["SENTINELS_IMAGE_TAG"]
        return
    wheels = tmp_path_factory.mktemp("wheels")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), f"{ROOT}[server]",
         "setuptools>=68", "wheel"], timeout=1200)
    run(["buildah", "bud", "--isolation", "chroot", "--layers=false", "--volume", f"{wheels}:/wheels:ro",
         "--build-arg", f"BASE={base_image()}", "--build-arg", "PIP_INSTALL_ARGS=--no-index --find-links /wheels",
         "-t", IMAGE_TAG, str(ROOT)], timeout=1800)
    yield IMAGE_TAG
    subprocess.run(["buildah", "rmi", "-f", IMAGE_TAG], capture_output=True)


def test_image_is_non_root_without_compilers(image):
    config = json.loads(run(["podman", "image", "inspect", image]).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["functions-framework"]
    probe = subprocess.run([*PODMAN, "run", "--rm", *LIMITS, "--entrypoint", "sh", image, "-c",
                            "id -u; for c in gcc cc g++ make; do command -v $c && exit 3; done; "
                            "ls functions/submit/main.py functions/schedule/main.py functions/on_job_event/main.py "
                            "functions/alert/main.py && sentinels --help >/dev/null && echo fine"],
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0 and probe.stdout.split()[0] == "10001" and probe.stdout.strip().endswith("fine"), probe


class Broker(ThreadingHTTPServer):
    """Stands in for the broker ingress: keeps the binary-mode CloudEvents posted to it."""

    def __init__(self):
        self.events: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                event = {k[3:]: v for k, v in self.headers.items() if k.lower().startswith("ce-")}
                event["data"] = json.loads(body or b"null")
                outer.events.append(event)
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/sentinels/sentinels"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def wait(self, event_type: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e.get("type") == event_type:
                    return e
            time.sleep(0.1)
        raise AssertionError(f"no {event_type} reached the broker; got {[e.get('type') for e in self.events]}")


def deliver(url: str, event_type: str, data, *, event_id: str | None = None, source="tests",
            cloudevent_signature=False, within: float = 90) -> tuple[int, dict]:
    """POST a binary-mode CloudEvent as the broker would: 5xx, 408 and 429 are retried with
    back-off (Knative redelivers them). Returns (status, JSON body; {} for a bare OK)."""
    event_id = event_id or str(uuid.uuid4())
    deadline, pause = time.monotonic() + within, 0.5
    while True:
        req = urllib.request.Request(url + "/", data=json.dumps(data).encode(), method="POST", headers={
            "content-type": "application/json", "ce-specversion": "1.0", "ce-type": event_type,
            "ce-source": source, "ce-id": event_id})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                body = resp.read()
                return resp.status, ({} if cloudevent_signature else json.loads(body or b"{}"))
        except urllib.error.HTTPError as e:
            body = e.read()
            if (e.code < 500 and e.code not in (408, 429)) or time.monotonic() > deadline:
                return e.code, json.loads(body or b"{}") if body.startswith(b"{") else {"body": body.decode()[:500]}
        time.sleep(pause)
        pause = min(pause * 2, 8)


class Containers:
    """The four function containers (started and removed by name)."""

    SIGNATURE = {"submit": "http", "schedule": "cloudevent", "on_job_event": "http", "alert": "http"}

    def __init__(self, image, home: Path, env: dict):
        self.image, self.home, self.env = image, home, env
        self.names, self.urls = [], {}

    def start(self, fn: str) -> str:
        port = natsd.free_port()
        name = f"sentinels-image-test-{fn.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
        env = [a for k, v in self.env.items() for a in ("-e", f"{k}={v}")]
        run([*PODMAN, "run", "-d", "--name", name, "--network", "host", *LIMITS, "-v", f"{self.home}:/etc/sentinels:ro",
             *env, self.image, "--target", fn, "--source", f"functions/{fn}/main.py",
             "--signature-type", self.SIGNATURE[fn], "--asgi", "--port", str(port)])
        self.names.append(name)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + "/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # an HTTP answer (a cloudevent function refuses GET): it is up
            except OSError:
                time.sleep(0.3)
        else:
            raise AssertionError(f"{fn} did not answer:\n{self.logs(name)}")
        self.urls[fn] = url
        return url

    def logs(self, name: str) -> str:
        out = subprocess.run(["podman", "logs", name], capture_output=True, text=True)
        return (out.stdout + out.stderr)[-4000:]

    def remove(self):
        for name in self.names:
            subprocess.run(["podman", "rm", "-f", name], capture_output=True)


async def test_each_function_answers_its_cloudevents(image, tmp_path, fake):
    from tests.test_kube_backend import ApiServer, plain_node
    import kmock
    import nats

    from sentinels.adapters import jetstream

    nats_port = natsd.free_port()
    nats_proc = natsd.start(tmp_path / "js", nats_port)
    broker = Broker()
    emulator = ApiServer()
    containers = None
    try:
        async with emulator, kmock.Server(emulator) as server:
            for resource in ("v1/nodes", "v1/pods", "v1/configmaps", "batch/v1/jobs"):
                emulator.resources[resource] = {}
            api = str(server.url).rstrip("/")
            resp = await emulator.post("/api/v1/nodes", json=plain_node("node-a"))
            assert resp.status == 200
            home = tmp_path / "home"
            home.mkdir()
            (home / "config.yaml").write_text(yaml.safe_dump({
                "backend": "kubernetes", "kubernetes": {"namespace": "ml", "host": api, "request_timeout": 10}}))
            containers = Containers(image, home, {
                "SENTINELS_HOME": "/etc/sentinels", "SENTINELS_BACKEND": "kubernetes",
                "SENTINELS_NATS_URL": f"nats://127.0.0.1:{nats_port}", "SENTINELS_BROKER_URL": broker.url,
                "MLFLOW_TRACKING_URI": "none", "SLACK_WEBHOOK_URL": fake.webhook_url})
            urls = {}
            for fn in ("submit", "schedule", "on_job_event", "alert"):
                urls[fn] = await asyncio.to_thread(containers.start, fn)

            # submit: the job record comes back, job.queued goes to the broker
            spec = {"image": "busybox:1.37", "name": "image-test", "resources": {"cpu": "500m", "memory": "64Mi"},
                    "command": ["true"]}
            status, record = await asyncio.to_thread(deliver, urls["submit"], "io.sentinels.job.submit", {"spec": spec})
            assert status == 201 and record["state"] == "QUEUED", record
            queued = await asyncio.to_thread(broker.wait, "io.sentinels.job.queued")

            # schedule: the queued event starts a pass; the Job appears in the API server
            status, _ = await asyncio.to_thread(deliver, urls["schedule"], queued["type"], queued["data"],
                                                cloudevent_signature=True)  # its answer is a bare OK
            assert status == 200
            await asyncio.to_thread(broker.wait, "io.sentinels.job.scheduled")
            jobs = (await (await emulator.get("/apis/batch/v1/namespaces/ml/jobs")).json())["items"]
            assert [j["metadata"]["labels"]["sentinels.io/job-id"] for j in jobs] == [record["id"]]

            # on_job_event: the Job succeeded (as the ApiServerSource would say) -> SUCCEEDED
            job = jobs[0]
            job["status"] = yaml.safe_load((FIX / "job-succeeded.yaml").read_text())["status"] if FIX.exists() else {
                "succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
            status, body = await asyncio.to_thread(deliver, urls["on_job_event"], "dev.knative.apiserver.resource.update",
                                                   job, source="apiserversource")
            assert status == 200, body
            succeeded = await asyncio.to_thread(broker.wait, "io.sentinels.job.succeeded")
            nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
            kv = await nc.jetstream().key_value(jetstream.JOBS_BUCKET)
            assert json.loads((await kv.get(record["id"])).value)["state"] == "SUCCEEDED"
            await nc.close()

            # alert: the succeeded event becomes a Slack message naming the job
            status, body = await asyncio.to_thread(deliver, urls["alert"], succeeded["type"], succeeded["data"])
            assert status == 200, body
            deadline = time.monotonic() + 30
            while not fake.messages and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert fake.messages and "image-test" in json.dumps(fake.messages[0])
    except Exception:
        if containers:
            for name in containers.names:
                print(name, containers.logs(name))
        raise
    finally:
        if containers:
            containers.remove()
        broker.shutdown()
        nats_proc.terminate()
        nats_proc.wait(timeout=10)
