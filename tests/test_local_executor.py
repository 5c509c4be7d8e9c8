"""The local executor as a real process: a real nats-server, `python -m sentinels.embedded.executor`
in a child process, `LocalCluster` over NATS request/reply, and real job processes.
Every event it publishes is read back from SENTINELS_EVENTS and checked against the
Kubernetes 1.31 schema."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from sentinels.adapters import jetstream
from sentinels.adapters.local import LocalCluster
from sentinels.domain import errors
from sentinels.embedded import machine
from sentinels.embedded.kubelet import Kubelet
from sentinels.adapters.memory import MemorySink

PY = sys.executable
GRACE = 1  # seconds between SIGTERM and SIGKILL, from the test configuration
WAIT_FOR_GO = "import os, sys, time\nwhile not os.path.exists('go'): time.sleep(0.02)\nprint('released', flush=True)\nsys.exit(int(sys.argv[1]))"


class Executor:
    """The executor in a child process, as `sentinels up` runs it."""

    def __init__(self, home: Path, nats_url: str):
        self.home, self.nats_url = home, nats_url
        self.log = home / "executor.log"
        self.proc = None

    def start(self) -> None:
        env = {**os.environ, "SENTINELS_HOME": str(self.home), "SENTINELS_NATS_URL": self.nats_url}
        self.proc = subprocess.Popen([PY, "-m", "sentinels.embedded.executor"], env=env,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    async def ready(self, cluster: LocalCluster) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                await cluster.nodes()
                return
            except errors.Unavailable:
                await asyncio.sleep(0.05)
        raise AssertionError("executor did not answer: " + self.log.read_text())

    def kill(self) -> None:
        """A crash: no clean-up of any kind."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class Stack:
    def __init__(self, home, executor, cluster, js):
        self.home, self.executor, self.cluster, self.js = home, executor, cluster, js

    def job_dir(self, job_id: str) -> Path:
        return self.home / "jobs" / job_id

    def state(self, job_id: str) -> dict:
        return json.loads((self.job_dir(job_id) / "state.json").read_text())

    async def events(self, job_id: str) -> list[dict]:
        info = await self.js.stream_info(jetstream.EVENTS_STREAM)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await self.js.get_msg(jetstream.EVENTS_STREAM, seq)
            event = json.loads(msg.data)
            assert msg.subject == "sentinels.events." + event["type"].replace(".", "_")
            if event["data"]["metadata"]["labels"].get("sentinels.io/job-id") == job_id:
                kubernetes_validate.validate(event["data"], "1.31", strict=True)
                out.append(event)
        return out

    async def until(self, job_id: str, done, timeout: float = 15) -> list[dict]:
        """Wait until `done(events)` holds; return the events."""
        deadline = time.monotonic() + timeout
        while True:
            events = await self.events(job_id)
            if done(events):
                return events
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting; events so far: {[summary(e) for e in events]}")
            await asyncio.sleep(0.05)

    async def finished(self, job_id: str, timeout: float = 15) -> list[dict]:
        return await self.until(job_id, lambda evs: any(job_outcome(e) for e in evs), timeout)


def summary(event: dict) -> tuple:
    obj, short = event["data"], event["type"].rsplit(".", 1)[1]
    if obj["kind"] == "Pod":
        term = obj["status"]["containerStatuses"][0]["state"].get("terminated") or {}
        return "Pod", short, obj["status"]["phase"], term.get("exitCode")
    return "Job", short, job_outcome(event)


def job_outcome(event: dict):
    obj = event["data"]
    if obj["kind"] != "Job":
        return None
    conds = [c for c in obj["status"].get("conditions", []) if c["type"] in ("Complete", "Failed")]
    return (conds[-1]["type"], conds[-1]["reason"], conds[-1]["message"]) if conds else None


def terminated(event: dict) -> dict:
    return event["data"]["status"]["containerStatuses"][0]["state"]["terminated"]


def make_record(job_id: str, command, *, args=(), cpu=1000, memory=2**30, gpu=0, timeout=None, retries=0,
                attempts=1, env=None) -> dict:
    spec = {"image": "python:3.11", "name": "exp", "command": list(command), "args": list(args), "env": env or {},
            "resources": {"cpu": "1", "memory": "1Gi", "gpu": gpu, "cpu_millis": cpu, "memory_bytes": memory},
            "priority": "normal", "experiment": "exp", "params": {"lr": "0.1"}, "data": None, "outputs": "/outputs",
            "timeout_seconds": timeout, "retries": retries, "node_selector": {}, "labels": {}, "notify": None}
    return {"id": job_id, "name": "exp", "owner": "alice", "team": "vision", "state": "SCHEDULED", "priority": "normal",
            "attempts": attempts, "k8s_job": f"sentinels-{job_id}", "spec": spec}


async def finish(kubelet, job_id, timeout=30):
    """Poll a Kubelet until nothing runs, hand its events over, and return the run's state."""
    deadline = time.monotonic() + timeout
    while kubelet.active():
        assert time.monotonic() < deadline, "the job did not end"
        kubelet.poll()
        await asyncio.sleep(0.02)
    await kubelet.flush()
    return kubelet.runs[job_id]


def kill_leftovers(home: Path) -> None:
    for state_file in (home / "jobs").glob("*/state.json"):
        pgid = (json.loads(state_file.read_text()).get("pod") or {}).get("pgid")
        if pgid:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
async def stack(tmp_path, nats_url):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump(
        {"local": {"cpu": 4, "memory": "8Gi", "gpu": 2, "stop_grace": GRACE, "labels": {"disk": "ssd"}}}))
    nc = await jetstream.connect(nats_url)
    js = nc.jetstream(timeout=5)
    await jetstream.ensure(js)
    executor = Executor(home, nats_url)
    executor.start()
    cluster = LocalCluster(nc)
    await executor.ready(cluster)
    yield Stack(home, executor, cluster, js)
    executor.stop()
    kill_leftovers(home)
    await nc.close()


async def test_a_job_runs_and_its_changes_arrive_as_apiserver_events(stack):
    rec = make_record("aaaaaaaaaa", [PY, "-c"], args=[
        "import os; print('hi'); print(os.environ['SENTINELS_JOB_ID'], os.environ['EPOCHS'], os.environ['MLFLOW_RUN_ID']);"
        "import yaml; print(yaml.safe_load(open(os.environ['SENTINELS_CONFIG']))['params']['lr']); print(os.getcwd());"
        "open(os.path.join(os.environ['SENTINELS_OUTPUTS'], 'model.txt'), 'w').write('w');"
        "print(repr(os.environ.get('CUDA_VISIBLE_DEVICES'))); print('SECRET_OF_EXECUTOR' in os.environ)"],
        env={"EPOCHS": "10"})
    os.environ["SECRET_OF_EXECUTOR"] = "x"  # the executor's own environment does not leak into jobs ...
    try:
        await stack.cluster.launch(rec, {"MLFLOW_RUN_ID": "run123"})
    finally:
        del os.environ["SECRET_OF_EXECUTOR"]
    events = await stack.finished("aaaaaaaaaa")
    assert [summary(e) for e in events] == [
        ("Job", "add", None), ("Pod", "add", "Running", None), ("Pod", "update", "Succeeded", 0),
        ("Job", "update", ("Complete", "CompletionsReached", "Reached expected number of succeeded pods"))]
    assert terminated(events[2])["reason"] == "Completed"
    for e in events:
        assert e["source"] == "sentinels/local-executor" and e["namespace"] == "local" and e["name"] == e["data"]["metadata"]["name"]
    assert events[0]["subject"] == "/apis/batch/v1/namespaces/local/jobs/sentinels-aaaaaaaaaa"
    assert events[1]["subject"] == f"/api/v1/namespaces/local/pods/{events[1]['name']}"
    rvs = [int(e["data"]["metadata"]["resourceVersion"]) for e in events if e["kind"] == "Pod"]
    assert rvs == sorted(rvs) and len(set(rvs)) == 2
    assert len({e["id"] for e in events}) == 4
    job_dir = stack.job_dir("aaaaaaaaaa")
    lines = (job_dir / "log").read_text().splitlines()
    assert lines[:3] == ["hi", "aaaaaaaaaa 10 run123", "0.1"]
    assert lines[3] == str(job_dir / "work") and lines[4:] == ["''", "False"]  # ... and CPU jobs see no GPU
    assert (job_dir / "log").resolve() == job_dir / "attempt-1.log"
    assert (job_dir / "outputs" / "model.txt").read_text() == "w"
    assert yaml.safe_load((job_dir / "job.yaml").read_text()) == rec["spec"]
    assert await stack.cluster.logs(rec, tail=2) == ["''", "False"]
    assert await stack.cluster.active() == {}


async def test_a_failing_command_fails_with_its_exit_code_after_its_retries(stack):
    rec = make_record("bbbbbbbbbb", [PY, "-c", "import sys; print('bad'); sys.exit(3)"], retries=1)
    await stack.cluster.launch(rec, {})
    events = await stack.finished("bbbbbbbbbb")
    pods = [summary(e) for e in events if e["kind"] == "Pod"]
    assert pods == [("Pod", "add", "Running", None), ("Pod", "update", "Failed", 3)] * 2  # backoffLimit 1: two pods
    assert len({e["name"] for e in events if e["kind"] == "Pod"}) == 2
    assert terminated(events[-2])["reason"] == "Error"
    assert job_outcome(events[-1]) == ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    assert events[-1]["data"]["status"]["failed"] == 2
    assert (stack.job_dir("bbbbbbbbbb") / "log").resolve().name == "attempt-2.log"


async def test_launching_twice_starts_one_process(stack):
    rec = make_record("cccccccccc", [PY, "-c", WAIT_FOR_GO, "0"])
    await asyncio.gather(*(stack.cluster.launch(rec, {}) for _ in range(3)))
    await stack.cluster.launch(rec, {})
    assert await stack.cluster.active() == {"cccccccccc": "sentinels-cccccccccc"}
    (stack.job_dir("cccccccccc") / "work" / "go").touch()
    await stack.finished("cccccccccc")
    await stack.cluster.launch(rec, {})  # finished: not started again either
    await asyncio.sleep(0.3)
    events = await stack.events("cccccccccc")
    assert [summary(e)[:2] for e in events] == [("Job", "add"), ("Pod", "add"), ("Pod", "update"), ("Job", "update")]
    assert sorted(p.name for p in stack.job_dir("cccccccccc").glob("attempt-*.log")) == ["attempt-1.log"]
    # a requeued job (one more attempt on its record) is a new run: a new Job uid, a new pod
    await stack.cluster.launch({**rec, "attempts": 2, "k8s_job": "sentinels-cccccccccc-a2"}, {})
    (stack.job_dir("cccccccccc") / "work" / "go").touch()
    events = await stack.until("cccccccccc", lambda evs: sum(1 for e in evs if job_outcome(e)) == 2)
    jobs = {(e["data"]["metadata"]["uid"], e["name"], e["data"]["metadata"]["annotations"]["sentinels.io/attempt"])
            for e in events if e["kind"] == "Job"}
    assert {(name, attempt) for _, name, attempt in jobs} == {("sentinels-cccccccccc", "1"), ("sentinels-cccccccccc-a2", "2")}
    assert len({uid for uid, _, _ in jobs}) == 2 and (stack.job_dir("cccccccccc") / "attempt-2.log").exists()


async def test_stop_terminates_the_process_group_and_reports_it(stack):
    rec = make_record("dddddddddd", ["sleep", "60"])
    await stack.cluster.launch(rec, {})
    await stack.until("dddddddddd", lambda evs: any(summary(e)[2] == "Running" for e in evs))
    began = time.monotonic()
    await stack.cluster.stop(rec)
    events = await stack.finished("dddddddddd")
    assert time.monotonic() - began < GRACE + 2
    assert job_outcome(events[-1]) == ("Failed", "Stopped", "stopped")
    assert summary(events[-2]) == ("Pod", "update", "Failed", 128 + signal.SIGTERM)  # SIGTERM did it, not SIGKILL
    await stack.cluster.stop(rec)  # stopping a finished job is fine
    await stack.cluster.stop(make_record("zzzzzzzzzz", ["true"]))  # and one never seen


async def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(stack):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    rec = make_record("eeeeeeeeee", [PY, "-c", code])
    await stack.cluster.launch(rec, {})
    deadline = time.monotonic() + 10
    while await stack.cluster.logs(rec) != ["up"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    began = time.monotonic()
    await stack.cluster.stop(rec)
    events = await stack.finished("eeeeeeeeee")
    assert GRACE <= time.monotonic() - began < GRACE + 3
    assert summary(events[-2]) == ("Pod", "update", "Failed", 128 + signal.SIGKILL)


async def test_free_capacity_shrinks_while_jobs_run_and_gpus_are_handed_out(stack):
    (node,) = await stack.cluster.nodes()
    assert (node.name, node.cpu_millis, node.memory_bytes, node.gpu) == ("local", 4000, 8 * 2**30, 2)
    assert (node.free_cpu_millis, node.free_gpu) == (4000, 2) and node.labels["disk"] == "ssd"
    show = [PY, "-c", "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(60)"]
    first, second = make_record("ffffffffff", show, cpu=1500, memory=2**31, gpu=1), make_record("gggggggggg", show, gpu=1)
    await stack.cluster.launch(first, {})
    (node,) = await stack.cluster.nodes()
    assert (node.free_cpu_millis, node.free_memory_bytes, node.free_gpu) == (2500, 6 * 2**30, 1)
    await stack.cluster.launch(second, {})
    with pytest.raises(errors.Conflict, match="needs 1 GPU; 0 free"):
        await stack.cluster.launch(make_record("hhhhhhhhhh", show, gpu=1), {})
    deadline = time.monotonic() + 10
    while not (await stack.cluster.logs(first) and await stack.cluster.logs(second)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert sorted([*await stack.cluster.logs(first), *await stack.cluster.logs(second)]) == ["0", "1"]
    await stack.cluster.stop(first)
    await stack.finished("ffffffffff")
    (node,) = await stack.cluster.nodes()
    assert (node.free_cpu_millis, node.free_gpu) == (3000, 1)
    assert await stack.cluster.active() == {"gggggggggg": "sentinels-gggggggggg"}


async def test_a_timeout_kills_the_job_with_deadline_exceeded(stack):
    rec = make_record("iiiiiiiiii", ["sleep", "60"], timeout=1, retries=2)
    began = time.monotonic()
    await stack.cluster.launch(rec, {})
    events = await stack.finished("iiiiiiiiii")
    assert 1 <= time.monotonic() - began < 1 + GRACE + 2
    assert job_outcome(events[-1]) == ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
    assert events[-1]["data"]["spec"]["activeDeadlineSeconds"] == 1
    assert sum(1 for e in events if summary(e)[:2] == ("Pod", "add")) == 1  # a deadline is not retried


async def test_a_job_without_command_fails_at_once_with_a_clear_reason(stack):
    await stack.cluster.launch(make_record("jjjjjjjjjj", []), {})
    (event,) = await stack.finished("jjjjjjjjjj")
    assert job_outcome(event) == ("Failed", "NoCommand", "the local runtime needs a command")


async def test_an_executor_restart_adopts_running_jobs_and_still_reports_their_end(stack):
    rec = make_record("kkkkkkkkkk", [PY, "-c", WAIT_FOR_GO, "5"])
    await stack.cluster.launch(rec, {})
    await stack.until("kkkkkkkkkk", lambda evs: any(summary(e)[2] == "Running" for e in evs))
    stack.executor.kill()
    with pytest.raises(errors.Unavailable, match="local executor not answering"):
        await stack.cluster.active()
    stack.executor.start()
    await stack.executor.ready(stack.cluster)
    assert await stack.cluster.active() == {"kkkkkkkkkk": "sentinels-kkkkkkkkkk"}  # adopted, still running
    (node,) = await stack.cluster.nodes()
    assert node.free_cpu_millis == 3000
    (stack.job_dir("kkkkkkkkkk") / "work" / "go").touch()
    events = await stack.finished("kkkkkkkkkk")
    assert summary(events[-2]) == ("Pod", "update", "Failed", 5)  # the exit code survives the restart
    assert job_outcome(events[-1])[:2] == ("Failed", "BackoffLimitExceeded")
    assert await stack.cluster.logs(rec) == ["released"]


async def test_a_job_that_ended_while_the_executor_was_down_is_reported(stack):
    ended, lost = make_record("llllllllll", [PY, "-c", WAIT_FOR_GO, "0"]), make_record("mmmmmmmmmm", ["sleep", "60"])
    for rec in (ended, lost):
        await stack.cluster.launch(rec, {})
    stack.executor.kill()
    (stack.job_dir("llllllllll") / "work" / "go").touch()  # ends normally: its runner writes the exit code
    os.killpg(stack.state("mmmmmmmmmm")["pod"]["pgid"], signal.SIGKILL)  # nothing is left to say how it ended
    deadline = time.monotonic() + 10
    while not (stack.job_dir("llllllllll") / "attempt-1.exit").exists():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    stack.executor.start()
    await stack.executor.ready(stack.cluster)
    events = await stack.finished("llllllllll")
    assert job_outcome(events[-1])[0] == "Complete" and summary(events[-2]) == ("Pod", "update", "Succeeded", 0)
    events = await stack.finished("mmmmmmmmmm")
    assert job_outcome(events[-1]) == ("Failed", "ExecutorLost", "lost while the executor was down")
    assert terminated(events[-2])["reason"] == "ContainerStatusUnknown"
    assert await stack.cluster.active() == {}


async def test_bad_requests_get_clear_errors(stack):
    with pytest.raises(errors.InvalidSpec, match="record.id must be a job id"):
        await stack.cluster.launch({"id": "../../etc", "spec": {}}, {})
    with pytest.raises(errors.InvalidSpec, match="extra_env"):
        await stack.cluster.launch(make_record("nnnnnnnnnn", ["true"]), {"BAD-NAME": "x"})
    with pytest.raises(errors.NotFound, match="no local job"):
        await stack.cluster.logs({"id": "pppppppppp"})
    reply = await stack.cluster.nc.request("sentinels.local.launch", b"not json", timeout=5)
    assert json.loads(reply.data) == {"error": "launch: the request is not JSON", "status": 400}
    assert not (stack.home / "jobs" / "nnnnnnnnnn").exists()  # nothing half-written


async def test_no_executor_is_unavailable(nats_url):
    nc = await jetstream.connect(nats_url)
    try:
        with pytest.raises(errors.Unavailable, match="local executor not answering on sentinels.local.nodes"):
            await LocalCluster(nc, timeout=0.5).nodes()
    finally:
        await nc.close()


@pytest.mark.slow  # real waits: kept out of `pytest -m fast`
def test_a_bad_local_configuration_stops_the_executor_with_a_clear_message(tmp_path):
    (tmp_path / "config.yaml").write_text("local: {cpu: lots}\n")
    env = {**os.environ, "SENTINELS_HOME": str(tmp_path), "SENTINELS_NATS_URL": "nats://127.0.0.1:1"}
    out = subprocess.run([PY, "-m", "sentinels.embedded.executor"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "local.cpu: 'lots' is not a Kubernetes quantity" in out.stderr


def test_capacity_comes_from_the_configuration_else_from_the_machine():
    detected = machine.capacity(None)
    assert detected.cpu_millis == os.cpu_count() * 1000 and detected.memory_bytes == machine.memory_total() > 0
    assert detected.stop_grace == 10 and detected.slots is None
    configured = machine.capacity({"cpu": "1500m", "memory": "3Gi", "gpu": 2, "slots": 1, "stop_grace": "1m"})
    assert (configured.cpu_millis, configured.memory_bytes, configured.slots, configured.stop_grace) == (1500, 3 * 2**30, 1, 60)
    assert len(configured.gpus) == 2
    with pytest.raises(errors.ConfigError, match="unknown key.*local.cpus"):
        machine.capacity({"cpus": 2})
    with pytest.raises(errors.ConfigError, match="local.slots"):
        machine.capacity({"slots": 0})


async def test_when_every_slot_is_taken_nothing_else_fits(tmp_path):
    sink = MemorySink()
    kubelet = Kubelet(tmp_path / "jobs", machine.capacity({"cpu": 8, "memory": "8Gi", "slots": 1, "stop_grace": 1}), sink)
    kubelet.recover()
    rec = make_record("qqqqqqqqqq", ["sleep", "60"])
    assert kubelet.launch(rec, {})["launched"] is True
    try:
        node = kubelet.node()
        assert (node["cpu_millis"], node["free_cpu_millis"], node["free_pods"]) == (8000, 7000, 0)
        kubelet.stop("qqqqqqqqqq")
        await finish(kubelet, "qqqqqqqqqq", timeout=5)
        assert job_outcome(sink.events[-1]) == ("Failed", "Stopped", "stopped")
        assert kubelet.node()["free_cpu_millis"] == 8000
        assert not kubelet.runs["qqqqqqqqqq"]["outbox"]  # all handed to the sink
    finally:
        kill_leftovers(tmp_path)
