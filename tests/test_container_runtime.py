"""Jobs in real containers: the local executor's kubelet with the Podman runtime.

The image is built here with Buildah from scratch (static busybox + a marker file),
pushed to a `docker-registry` on loopback, and pulled by Podman when the job starts.
Every event is checked against the Kubernetes 1.31 schema. Without Podman, Buildah or
the registry these tests skip and say why.
"""

import asyncio
import time

import kubernetes_validate
import pytest

from sentinels.embedded import engine, machine, runtimes
from sentinels.embedded.kubelet import Kubelet
from sentinels.adapters.memory import MemorySink
from tests import engines
from tests.test_local_executor import job_outcome, make_record, summary, terminated

PROBLEM = engines.engine_problem()
pytestmark = [pytest.mark.engine, pytest.mark.skipif(PROBLEM is not None, reason=f"no container engine: {PROBLEM}")]
GRACE = 2


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    reg = engines.Registry(root)
    local = engines.build(root, engines.unique_tag())
    ref = reg.push(local, "sentinels-test:1")
    yield reg, ref, local
    engines.podman("rmi", "--force", local, ref, check=False)
    reg.stop()


@pytest.fixture
def image(registry):
    """The registry's copy of the test image, not present locally: every job pulls it."""
    reg, ref, _ = registry
    engines.podman("rmi", "--force", ref, check=False)
    return ref


class Node:
    def __init__(self, tmp_path, registry_host, **local):
        self.cfg = runtimes.RuntimeConfig(runtime="podman", insecure_registries=(registry_host,))
        self.cap = machine.capacity({"cpu": 4, "memory": "8Gi", "stop_grace": GRACE, **local})
        self.jobs = tmp_path / "jobs"
        self.sink = MemorySink()
        self.kubelet = self.new()

    def new(self) -> Kubelet:
        kubelet = Kubelet(self.jobs, self.cap, self.sink, runtime=engine.EngineRuntime("podman", self.cfg))
        kubelet.recover()
        return kubelet

    def events(self, job_id: str) -> list[dict]:
        out = [e for e in self.sink.events if e["data"]["metadata"]["labels"].get("sentinels.io/job-id") == job_id]
        for e in out:
            kubernetes_validate.validate(e["data"], "1.31", strict=True)
        return out

    async def until(self, job_id: str, done, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            self.kubelet.poll()
            await self.kubelet.flush()
            events = self.events(job_id)
            if done(events):
                return events
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting; events so far: {[summary(e) for e in events]}")
            await asyncio.sleep(0.05)

    async def finished(self, job_id: str, timeout: float = 60) -> list[dict]:
        return await self.until(job_id, lambda evs: any(job_outcome(e) for e in evs), timeout)

    def log(self, job_id: str) -> str:
        return (self.jobs / job_id / "log").read_text()


def running(evs) -> bool:
    return any(e["kind"] == "Pod" and e["data"]["status"]["phase"] == "Running" for e in evs)


def containers(job_id: str) -> list[str]:
    out = engines.podman("ps", "--all", "--filter", f"label=sentinels.io/job-id={job_id}", "--format", "{{.Names}}")
    return out.stdout.split()


@pytest.fixture
def node(tmp_path, registry):
    n = Node(tmp_path, registry[0].host)
    yield n
    for name in engines.podman("ps", "--all", "--format", "{{.Names}}").stdout.split():
        if name.startswith("sentinels-") and any(name.startswith(f"sentinels-{j}-") for j in n.kubelet.runs):
            engines.podman("rm", "--force", name, check=False)


async def test_a_job_runs_in_its_image_with_config_data_outputs_and_env(node, image, tmp_path):
    data = tmp_path / "datasets" / "mnist"
    data.mkdir(parents=True)
    (data / "train.csv").write_text("1,2,3\n")
    script = ("cat /MARKER; grep -c '^params:' $SENTINELS_CONFIG; echo job=$SENTINELS_JOB_ID epochs=$EPOCHS "
              "run=$MLFLOW_RUN_ID; cat $DATA/train.csv; (echo x > $DATA/new) 2>/dev/null || echo data-read-only; "
              "echo weights > $SENTINELS_OUTPUTS/model.txt; echo outputs=$SENTINELS_OUTPUTS")
    rec = make_record("caaaaaaaaa", ["sh", "-c", script], env={"EPOCHS": "3", "DATA": str(data)})
    rec["spec"].update(image=image, data=str(data), outputs="/outputs")
    node.kubelet.launch(rec, {"MLFLOW_RUN_ID": "run42"})
    events = await node.finished("caaaaaaaaa")
    assert [summary(e) for e in events] == [
        ("Job", "add", None), ("Pod", "add", "Pending", None), ("Pod", "update", "Running", None),
        ("Pod", "update", "Succeeded", 0),
        ("Job", "update", ("Complete", "CompletionsReached", "Reached expected number of succeeded pods"))]
    assert terminated(events[3])["containerID"].startswith("podman://")
    lines = node.log("caaaaaaaaa").splitlines()
    tail = lines[lines.index(engines.MARKER):]  # what came before is Podman pulling the image
    assert tail == [engines.MARKER, "1", "job=caaaaaaaaa epochs=3 run=run42", "1,2,3", "data-read-only",
                    "outputs=/outputs"]
    assert (node.jobs / "caaaaaaaaa" / "outputs" / "model.txt").read_text() == "weights\n"
    assert not (data / "new").exists()
    assert not (tmp_path / "MARKER").exists() and containers("caaaaaaaaa") == []  # removed once reported


async def test_the_image_entrypoint_runs_when_the_spec_has_no_command(node, image):
    rec = make_record("cbbbbbbbbb", [])
    rec["spec"]["image"] = image
    node.kubelet.launch(rec, {})
    events = await node.finished("cbbbbbbbbb")
    assert job_outcome(events[-1])[0] == "Complete"
    assert node.log("cbbbbbbbbb").splitlines()[-1] == engines.MARKER


async def test_a_failing_container_reports_its_exit_code(node, registry):
    rec = make_record("cccccccccb", ["sh", "-c", "echo bad; exit 3"], retries=1)
    rec["spec"]["image"] = registry[2]  # the local copy: no pull
    node.kubelet.launch(rec, {})
    events = await node.finished("cccccccccb")
    pods = [summary(e) for e in events if e["kind"] == "Pod"]
    assert pods == [("Pod", "add", "Pending", None), ("Pod", "update", "Running", None),
                    ("Pod", "update", "Failed", 3)] * 2
    assert terminated(events[-2])["reason"] == "Error"
    assert job_outcome(events[-1])[:2] == ("Failed", "BackoffLimitExceeded")


async def test_a_command_missing_from_the_image_is_a_start_error(node, registry):
    rec = make_record("cdddddddda", ["no-such-program"])
    rec["spec"]["image"] = registry[2]
    node.kubelet.launch(rec, {})
    events = await node.finished("cdddddddda")
    end = terminated(events[-2])
    assert end["exitCode"] == 128 and end["reason"] == "StartError" and "no-such-program" in end["message"]


async def test_going_over_the_memory_limit_is_oomkilled(node, registry):
    rec = make_record("ceeeeeeeea", ["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"],
                      memory=32 * 2**20)
    rec["spec"]["image"] = registry[2]
    node.kubelet.launch(rec, {})
    events = await node.finished("ceeeeeeeea")
    end = terminated(events[-2])
    assert (end["exitCode"], end["reason"]) == (137, "OOMKilled")
    assert "survived" not in node.log("ceeeeeeeea")


async def test_stop_stops_the_container_within_the_grace_period(node, registry):
    rec = make_record("cfffffffff", ["sh", "-c", "trap 'echo got-term; exit 143' TERM; while true; do sleep 0.1; done"])
    rec["spec"]["image"] = registry[2]
    node.kubelet.launch(rec, {})
    await node.until("cfffffffff", running)
    assert containers("cfffffffff") == ["sentinels-cfffffffff-1-1"]
    began = time.monotonic()
    node.kubelet.stop("cfffffffff")
    events = await node.finished("cfffffffff")
    assert time.monotonic() - began < GRACE + 5
    assert job_outcome(events[-1]) == ("Failed", "Stopped", "stopped")
    assert summary(events[-2]) == ("Pod", "update", "Failed", 143)
    assert "got-term" in node.log("cfffffffff")
    deadline = time.monotonic() + 10
    while containers("cfffffffff"):
        assert time.monotonic() < deadline, "the stopped container was not removed"
        await asyncio.sleep(0.1)


async def test_a_container_that_ignores_sigterm_is_killed_after_the_grace(node, registry):
    rec = make_record("cggggggggg", ["sh", "-c", "trap '' TERM; echo up; while true; do sleep 0.1; done"])
    rec["spec"]["image"] = registry[2]
    node.kubelet.launch(rec, {})
    await node.until("cggggggggg", lambda evs: running(evs) and "up" in node.log("cggggggggg"))
    began = time.monotonic()
    node.kubelet.stop("cggggggggg")
    events = await node.finished("cggggggggg")
    assert GRACE <= time.monotonic() - began < GRACE + 6
    assert summary(events[-2]) == ("Pod", "update", "Failed", 137)
    assert terminated(events[-2])["reason"] == "Error"  # killed by us, not by the memory limit


async def test_an_unknown_tag_waits_with_err_image_pull_then_back_off(node, registry):
    node.kubelet.pull_backoff = 0.5
    rec = make_record("chhhhhhhhh", ["true"])
    rec["spec"]["image"] = f"{registry[0].host}/sentinels-test:no-such-tag"
    node.kubelet.launch(rec, {})

    def waiting(evs):
        return [e["data"]["status"]["containerStatuses"][0]["state"].get("waiting", {}) for e in evs
                if e["kind"] == "Pod"]

    events = await node.until("chhhhhhhhh", lambda evs: any(w.get("reason") == "ImagePullBackOff" for w in waiting(evs)))
    reasons = [w.get("reason") for w in waiting(events)]
    assert reasons[:3] == ["ContainerCreating", "ErrImagePull", "ImagePullBackOff"]
    err = next(w for w in waiting(events) if w.get("reason") == "ErrImagePull")
    assert "no-such-tag" in err["message"] and "manifest unknown" in err["message"]  # the engine's own words
    assert all(e["data"]["status"]["phase"] == "Pending" for e in events if e["kind"] == "Pod")
    node.kubelet.stop("chhhhhhhhh")  # what the lifecycle does once the image-pull grace is over
    events = await node.finished("chhhhhhhhh")
    assert job_outcome(events[-1])[:2] == ("Failed", "Stopped")


async def test_a_reference_the_engine_rejects_gets_its_words(node):
    rec = make_record("ciiiiiiiii", ["true"])
    rec["spec"]["image"] = "localhost:99999/x:1"  # a valid reference by the grammar, a bad port for the engine
    node.kubelet.launch(rec, {})
    events = await node.until("ciiiiiiiii", lambda evs: any(
        e["kind"] == "Pod" and e["data"]["status"]["containerStatuses"][0]["state"].get("waiting", {}).get("message")
        for e in evs))
    waiting = events[-1]["data"]["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] in ("InvalidImageName", "ErrImagePull") and "99999" in waiting["message"]


async def test_an_executor_restart_adopts_a_running_container(node, registry):
    rec = make_record("cjjjjjjjjj", ["sh", "-c", "while [ ! -e /outputs/go ]; do sleep 0.1; done; echo released; exit 4"])
    rec["spec"]["image"] = registry[2]
    node.kubelet.launch(rec, {})
    await node.until("cjjjjjjjjj", running)
    node.kubelet = node.new()  # a new executor: nothing but the job directory and the container
    assert node.kubelet.active() == {"cjjjjjjjjj": "sentinels-cjjjjjjjjj"}
    (node.jobs / "cjjjjjjjjj" / "outputs" / "go").touch()
    events = await node.finished("cjjjjjjjjj")
    assert summary(events[-2]) == ("Pod", "update", "Failed", 4)
    assert node.log("cjjjjjjjjj").splitlines()[-1] == "released"
