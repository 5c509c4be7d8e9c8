"""Dockerfile submits: the build request, the BUILDING state, the build Job's meaning for the
lifecycle, the rootless BuildKit manifest (Kubernetes 1.31 schema, strict), and real
builds with Buildah in the embedded default's builder (skipped without Buildah)."""

import asyncio
import http.server
import threading
import time

import kubernetes_validate
import pytest

from sentinels.adapters import build_manifest
from sentinels.adapters.kube_manifest import KubeConfig
from sentinels.adapters.memory import MemorySink
from sentinels.domain import build, errors, lifecycle, observe, states
from sentinels.domain import local_objects as objects
from sentinels.domain.events import APISERVER_UPDATE
from sentinels.embedded import natsd
from sentinels.embedded.builder import Builder
from tests import engines

JOB = "bbuildjobb"


def record(state=states.BUILDING, **extra) -> dict:
    spec = {"image": build.local_image("exp", JOB), "name": "exp", "command": [], "args": [], "env": {},
            "resources": {"cpu_millis": 1000, "memory_bytes": 2**30, "gpu": 0}, "priority": "normal", "retries": 0}
    return {"id": JOB, "state": state, "priority": "normal", "owner": "alice", "attempts": 1, "spec": spec,
            "build": {"dockerfile": "https://example.org/Dockerfile", "context": "https://example.org/ctx.tar.gz"},
            "build_job": build.build_job_name(JOB), "timestamps": {state: "2026-01-01T00:00:00Z"},
            "k8s_job": f"sentinels-{JOB}", **extra}


# --- the request and the configuration ----------------------------------------------------

@pytest.mark.parametrize("raw,words", [
    ("Dockerfile", "expected a mapping"),
    ({"dockerfile": "relative/Dockerfile"}, "neither an absolute path nor an http(s) URL"),
    ({"dockerfile": "/a/../etc/Dockerfile"}, "must not contain '..'"),
    ({"dockerfile": "ftp://host/Dockerfile"}, "neither an absolute path"),
    ({"dockerfile": "/x/Dockerfile", "context": 3}, "build.context"),
    ({"dockerfile": "/x/Dockerfile", "target": "prod"}, "unknown field(s) target"),
    ({}, "build.dockerfile"),
])
def test_bad_build_requests_name_the_field(raw, words):
    with pytest.raises(errors.InvalidSpec, match=words.replace("(", r"\(").replace(")", r"\)")):
        build.validate(raw)


def test_a_local_dockerfile_builds_in_its_directory_by_default():
    assert build.validate({"dockerfile": "/srv/exp/Dockerfile"}) == {"dockerfile": "/srv/exp/Dockerfile",
                                                                     "context": "/srv/exp"}
    assert build.validate({"dockerfile": "https://h/D"}) == {"dockerfile": "https://h/D", "context": None}


@pytest.mark.parametrize("raw,words", [
    ({"concurrency": 0}, "builds.concurrency"), ({"max_context": "lots"}, "builds.max_context"),
    ({"tool": "kaniko"}, "builds.tool"), ({"colour": 1}, "unknown key(s) builds.colour"),
    ({"registry": "not a registry"}, "builds.registry"),
])
def test_a_bad_builds_block_is_a_start_up_error(raw, words):
    with pytest.raises(errors.ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        build.BuildConfig.from_dict(raw)
    assert build.BuildConfig.from_dict({"max_context": "1Gi"}).max_context_bytes == 2**30


def test_building_comes_before_queued_in_the_state_machine():
    assert states.STATES[0] == states.BUILDING
    assert states.can_transition(states.BUILDING, states.QUEUED)
    assert states.can_transition(states.BUILDING, states.FAILED) and states.can_transition(states.BUILDING, states.CANCELLED)
    assert not states.can_transition(states.BUILDING, states.RUNNING)
    assert not states.can_transition(states.QUEUED, states.BUILDING)


# --- what a build Job means --------------------------------------------------------------------

def build_event(outcome, reason=None, message=None, image=None) -> dict:
    rec = {"id": JOB, "k8s_job": build.build_job_name(JOB), "priority": "normal", "owner": "alice",
           "spec": {"image": "localhost/sentinels/builder", "command": ["build"], "labels": dict(build.BUILD_LABEL),
                    "resources": {}, "retries": 0}}
    info = {"created": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:01:00Z", "generation": 1, "resource_version": 7,
            "outcome": outcome, "reason": reason, "message": message,
            "annotations": {observe.IMAGE_ANNOTATION: image, observe.IMAGE_ID_ANNOTATION: "sha256:abc"} if image else {}}
    obj = objects.job_object(rec, info)
    kubernetes_validate.validate(obj, "1.31", strict=True)
    return obj


def decide(rec, obj):
    return lifecycle.decide(rec, observe.observe(APISERVER_UPDATE, obj), 0.0)


def test_a_finished_build_queues_the_job_with_its_image():
    step = decide(record(), build_event("Complete", image=build.local_image("exp", JOB)))
    assert step.to == states.QUEUED and lifecycle.ENQUEUE in step.effects
    assert step.changes["spec"]["image"] == f"localhost/sentinels/exp:{JOB}" and step.changes["image_id"] == "sha256:abc"


def test_a_failed_build_fails_the_job_with_its_last_lines():
    step = decide(record(), build_event("Failed", "BuildFailed", "COPY failed: no such file model.bin"))
    assert step.to == states.FAILED and step.reason == "build failed: BuildFailed: COPY failed: no such file model.bin"


def test_build_events_mean_nothing_once_the_job_left_building():
    assert decide(record(states.QUEUED), build_event("Complete", image="x/y:z")) is None
    assert decide(record(states.FAILED), build_event("Failed", "BuildFailed", "x")) is None
    assert decide(record(cancel_requested=True), build_event("Complete", image="x/y:z")).to == states.CANCELLED
    # and a build Job is never taken for the job's own Job
    running = record(states.RUNNING)
    assert decide(running, build_event("Complete", image="x/y:z")) is None


# --- Kubernetes: a rootless BuildKit Job -------------------------------------------------------------

def test_the_buildkit_job_is_valid_rootless_and_pushes_to_the_configured_registry():
    bcfg = build.BuildConfig(registry="registry.internal:5000/ml")
    job = build_manifest.build_job(record(), bcfg, KubeConfig(namespace="ml"))
    kubernetes_validate.validate(job, "1.31", strict=True)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith("-rootless") and container["securityContext"]["runAsUser"] == 1000
    assert "privileged" not in str(job) and "kaniko" not in str(job)
    assert f"type=image,name=registry.internal:5000/ml/exp:{JOB},push=true" in container["args"]
    assert "context=https://example.org/ctx.tar.gz" in container["args"]
    assert job["metadata"]["labels"]["sentinels.io/component"] == "build"
    assert job["metadata"]["annotations"][observe.IMAGE_ANNOTATION] == f"registry.internal:5000/ml/exp:{JOB}"
    assert job["spec"]["activeDeadlineSeconds"] == bcfg.deadline_seconds and job["spec"]["backoffLimit"] == 0
    obs = observe.observe(APISERVER_UPDATE, {**job, "status": {"conditions": [
        {"type": "Complete", "status": "True"}]}})
    assert obs.build and obs.what == observe.SUCCEEDED and obs.image.endswith(f"/exp:{JOB}")


def test_a_cluster_build_refuses_local_paths_and_a_missing_registry():
    local = record(build={"dockerfile": "/home/me/Dockerfile", "context": "/home/me"})
    with pytest.raises(errors.InvalidSpec, match="a cluster build needs an http"):
        build_manifest.build_job(local, build.BuildConfig(registry="r.example/x"), KubeConfig())
    with pytest.raises(errors.ConfigError, match="builds.registry"):
        build_manifest.build_job(record(), build.BuildConfig(), KubeConfig())


# --- real builds with Buildah -------------------------------------------------------------------------

BUILD_PROBLEM = engines.engine_problem()


class Slow(http.server.BaseHTTPRequestHandler):
    """Answers after a long pause: a Dockerfile URL that hangs."""

    def do_GET(self):
        time.sleep(30)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/Dockerfile"
    server.shutdown()


class Builds:
    def __init__(self, tmp_path, **cfg):
        self.sink = MemorySink()
        self.builder = Builder(tmp_path / "jobs", build.BuildConfig(**cfg), self.sink)

    def start(self, job_id: str, dockerfile: str, context=None) -> None:
        wanted = {"dockerfile": dockerfile, **({"context": context} if context else {})}
        rec = dict(record(), id=job_id, build=build.validate(wanted))  # as the submit function does
        self.builder.start(rec)

    async def outcome(self, job_id: str, timeout: float = 180) -> tuple:
        deadline = time.monotonic() + timeout
        while True:
            self.builder.poll()
            await self.builder.flush()
            for e in self.sink.events:
                obj = e["data"]
                if obj["metadata"]["labels"]["sentinels.io/job-id"] != job_id:
                    continue
                kubernetes_validate.validate(obj, "1.31", strict=True)
                conds = {c["type"]: c for c in obj["status"].get("conditions", [])}
                if "Complete" in conds or "Failed" in conds:
                    c = conds.get("Failed") or conds["Complete"]
                    return c["type"], c["reason"], c["message"], obj["metadata"]["annotations"]
            assert time.monotonic() < deadline, self.builder.builds[job_id]
            await asyncio.sleep(0.1)


@pytest.mark.engine
@pytest.mark.skipif(BUILD_PROBLEM is not None, reason=f"no container engine: {BUILD_PROBLEM}")
async def test_a_dockerfile_builds_an_image_tagged_with_the_job_id(tmp_path):
    ctx = engines.context_dir(tmp_path)
    (ctx / "Dockerfile").write_text(engines.CONTAINERFILE)
    b = Builds(tmp_path)
    b.start("bokokokokk", str(ctx / "Dockerfile"), str(ctx))
    kind, _reason, _message, annotations = await b.outcome("bokokokokk")
    image = annotations.get(observe.IMAGE_ANNOTATION)
    try:
        assert kind == "Complete" and image == "localhost/sentinels/exp:bokokokokk"
        assert annotations[observe.IMAGE_ID_ANNOTATION].startswith("sha256:")
        out = engines.podman("run", "--rm", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", image)
        assert out.stdout.strip() == engines.MARKER
        assert "sentinels build:" in (tmp_path / "jobs" / "bokokokokk" / "build.log").read_text()
    finally:
        engines.podman("rmi", "--force", "localhost/sentinels/exp:bokokokokk", check=False)


@pytest.mark.engine
@pytest.mark.skipif(BUILD_PROBLEM is not None, reason=f"no container engine: {BUILD_PROBLEM}")
async def test_a_broken_dockerfile_fails_with_the_builds_last_lines(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY model.bin /model.bin\n")
    b = Builds(tmp_path)
    b.start("bfailfailf", str(tmp_path / "Dockerfile"))
    kind, reason, message, _ = await b.outcome("bfailfailf")
    assert (kind, reason) == ("Failed", "BuildFailed") and "model.bin" in message


@pytest.mark.engine
@pytest.mark.skipif(BUILD_PROBLEM is not None, reason=f"no container engine: {BUILD_PROBLEM}")
async def test_bad_sources_fail_with_the_reason_and_leave_nothing_building(tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    (big / "Dockerfile").write_text("FROM scratch\nCOPY blob /blob\n")
    (big / "blob").write_bytes(b"\0" * (2 * 2**20))
    b = Builds(tmp_path, max_context_bytes=2**20, fetch_timeout_seconds=2)
    b.start("bbigbigbig", str(big / "Dockerfile"))
    b.start("bnoanswerb", f"http://127.0.0.1:{natsd.free_port()}/Dockerfile")
    b.start("bnofilenof", str(tmp_path / "nowhere" / "Dockerfile"))
    kind, _, message, _ = await b.outcome("bbigbigbig")
    assert kind == "Failed" and "over the 1 MiB limit (builds.max_context)" in message
    kind, _, message, _ = await b.outcome("bnoanswerb")
    assert kind == "Failed" and "cannot fetch the Dockerfile" in message
    kind, _, message, _ = await b.outcome("bnofilenof")
    assert kind == "Failed" and "does not exist" in message
    assert all(x["outcome"] for x in b.builder.builds.values())


@pytest.mark.engine
@pytest.mark.skipif(BUILD_PROBLEM is not None, reason=f"no container engine: {BUILD_PROBLEM}")
async def test_deadline_stop_and_the_concurrency_cap(tmp_path, slow_url):
    b = Builds(tmp_path, deadline_seconds=2, concurrency=1, fetch_timeout_seconds=60)
    b.start("bslowslows", slow_url)
    b.start("bwaitwaitw", slow_url)
    assert b.builder.start(dict(record(), id="bwaitwaitw"))["state"] == "waiting for a build slot"
    kind, reason, message, _ = await b.outcome("bslowslows", timeout=30)
    assert (kind, reason) == ("Failed", "DeadlineExceeded") and "deadline" in message
    deadline = time.monotonic() + 10
    while b.builder.builds["bwaitwaitw"].get("pid") is None:  # the slot it freed goes to the next build
        b.builder.poll()
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    pid = b.builder.builds["bwaitwaitw"]["pid"]
    assert b.builder.stop("bwaitwaitw")
    kind, reason, _, _ = await b.outcome("bwaitwaitw", timeout=30)
    assert (kind, reason) == ("Failed", "Stopped")
    from sentinels.embedded import processes

    assert not processes.alive(pid, None)


# --- the whole path over in-memory ports: submit -> schedule -> build Job -> queued -> scheduled ---------

async def test_a_dockerfile_submit_is_built_then_queued_then_scheduled():
    from tests.test_lifecycle import ADMIN, UPDATE, World

    w = World()
    spec = {"name": "exp", "command": ["python", "train.py"], "resources": {"cpu": 1, "memory": "1Gi"}}
    status, rec = await w.submitter.submit({"spec": spec, "build": {"dockerfile": "https://h.example/Dockerfile"}},
                                           ADMIN, "t", "b1")
    assert status == 201 and rec["state"] == states.BUILDING and rec["queue_seq"] is None
    assert rec["spec"]["image"] == f"localhost/sentinels/exp:{rec['id']}"
    assert await w.queue.counts() == {} and len(w.events("job.building")) == 1
    assert await w.sched.start_build(rec["id"]) == "building"
    assert await w.sched.start_build(rec["id"]) == "nothing-to-do" and w.cluster.builds == [rec["id"]]
    built = dict(rec, k8s_job=rec["build_job"])
    obj = build_event("Complete", image=rec["spec"]["image"])
    obj["metadata"]["labels"]["sentinels.io/job-id"] = rec["id"]
    obj["metadata"]["name"] = built["k8s_job"]
    assert await w.life.handle(UPDATE, obj) == "queued"
    queued = await w.get(rec["id"])
    assert queued["image_id"] == "sha256:abc" and queued["queue_seq"] is not None
    assert len(w.events("job.queued")) == 1  # the scheduler hears of it as of any new job
    await w.sched.trigger()
    assert (await w.get(rec["id"]))["state"] == states.SCHEDULED and rec["id"] in w.cluster.launches
    assert [e["to"] for e in await w.history.of(rec["id"])] == ["BUILDING", "QUEUED", "SCHEDULED"]


async def test_cancel_while_building_stops_the_build_and_bad_build_requests_write_nothing():
    from tests.test_lifecycle import ADMIN, World

    w = World()
    spec = {"name": "exp", "resources": {"cpu": 1, "memory": "1Gi"}}
    with pytest.raises(errors.InvalidSpec, match="build.dockerfile"):
        await w.submitter.submit({"spec": spec, "build": {"dockerfile": "Dockerfile"}}, ADMIN, "t", "bad")
    assert await w.jobs.all() == []
    _, rec = await w.submitter.submit({"spec": spec, "build": {"dockerfile": "/x/Dockerfile"}}, ADMIN, "t", "b2")
    _, after = await w.submitter.cancel({"job": rec["id"]}, ADMIN)
    assert after["cancel_requested"] and after["state"] == states.BUILDING
    assert await w.life.cancel(rec["id"]) == "cancelled"
    assert rec["id"] in w.cluster.stops and (await w.get(rec["id"]))["state"] == states.CANCELLED
