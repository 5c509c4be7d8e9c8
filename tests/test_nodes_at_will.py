"""Nodes come and go: queued work starts on a new node, drained or deleted nodes' jobs run elsewhere.

The real Kubernetes adapter (KubernetesCluster through the official client) against kmock's
API emulator (the fixture of test_kube_backend), with the functions' services on in-memory
stores: the capacity the scheduler sees is what the API server lists. Node and Pod objects
that have no real dump (a cordoned node, an evicted pod) are built from the API reference.
"""

import pytest
import yaml

from sentinels.functions.on_job_event.service import LifecycleService
from sentinels.functions.schedule.service import ScheduleService
from sentinels.functions.submit.service import SubmitService
from sentinels import clock
from sentinels.adapters.kube_manifest import KubeConfig
from sentinels.adapters.kubernetes import KubernetesCluster
from sentinels.adapters.memory import MemoryHistory, MemoryJobs, MemoryQueue, MemorySink
from sentinels.domain import events, lifecycle
from sentinels.domain.priority import PriorityConfig
from sentinels.domain.scheduler_config import SchedulerConfig
from sentinels.domain.spec import Limits
from tests.test_kube_backend import FIXTURES, NS, api, plain_node, post  # noqa: F401  (api is a fixture)

ADD, UPDATE, DELETE = ("dev.knative.apiserver.resource." + v for v in ("add", "update", "delete"))
ADMIN = {"user": "root", "role": "admin"}


class Cluster:
    """submit, schedule and on_job_event over one emulated API server."""

    def __init__(self, api):
        self.api = api
        self.jobs, self.queue, self.history, self.sink = MemoryJobs(), MemoryQueue(), MemoryHistory(), MemorySink()
        # the listing path (kmock's emulator holds watch streams open past the test; the watch-fed
        # cache is tested against the simulated API server)
        kube = KubernetesCluster(KubeConfig.from_dict({"namespace": NS, "host": api.test_url, "request_timeout": 5}),
                                 informer=False)
        prio = PriorityConfig.from_dict(None)
        self.submitter = SubmitService(self.jobs, self.queue, self.history, self.sink, prio, Limits(), clock.now_iso)
        self.sched = ScheduleService(self.jobs, self.queue, self.history, self.sink, kube, prio, SchedulerConfig(),
                                     clock.now_iso)
        self.life = LifecycleService(self.jobs, self.queue, self.history, self.sink, kube, clock.now_iso,
                                     lifecycle.Policy(max_attempts=3, image_pull_grace_seconds=300))

    async def node(self, node: dict) -> dict:
        """A node joins: the API server has it, the ApiServerSource reports it."""
        await post(self.api, "/api/v1/nodes", node)
        assert await self.life.handle(ADD, node) != "ignored"
        return node

    async def submit(self, name: str, cpu) -> dict:
        spec = {"image": "python:3.11", "command": ["true"], "name": name, "resources": {"cpu": cpu, "memory": "1Gi"}}
        return (await self.submitter.submit({"spec": spec}, ADMIN, "t", f"e-{name}"))[1]

    async def running_on_a(self) -> dict:
        """One job running on node "a" (the only node so far)."""
        await self.node(plain_node("a", cpu="8"))
        rec = await self.submit("train", 4)
        await self.sched.trigger()
        rec = await self.get(rec["id"])
        assert rec["node"] == "a" and await self.life.handle(UPDATE, pod_of(rec)) == "running"
        return await self.get(rec["id"])

    async def get(self, job_id: str) -> dict:
        return (await self.jobs.get(job_id))[0]

    def emitted(self, kind: str) -> list[dict]:
        return [e for e in self.sink.events if e["type"] == kind]

    async def kube_jobs(self) -> list[str]:
        resp = await self.api.get(f"/apis/batch/v1/namespaces/{NS}/jobs")
        return sorted(j["metadata"]["name"] for j in (await resp.json())["items"])


def pod_of(record: dict, phase="Running", **status) -> dict:
    pod = yaml.safe_load((FIXTURES / "pod-running.yaml").read_text())
    meta = pod["metadata"]
    meta.setdefault("labels", {})["sentinels.io/job-id"] = record["id"]
    meta.setdefault("annotations", {})["sentinels.io/attempt"] = str(record["attempts"])
    pod["spec"]["nodeName"] = record["node"]
    pod["status"]["phase"] = phase
    pod["status"].update(status)
    return pod


async def test_a_new_node_lets_queued_work_start(api):
    c = Cluster(api)
    await c.node(plain_node("small", cpu="2"))
    rec = await c.submit("big-job", 4)
    await c.sched.trigger()
    assert (await c.get(rec["id"]))["state"] == "QUEUED"  # fits nowhere yet: it waits, no pod is created
    assert await c.kube_jobs() == []
    before = len(c.emitted(events.CAPACITY_CHANGED))
    await c.node(plain_node("large", cpu="8"))
    assert len(c.emitted(events.CAPACITY_CHANGED)) == before + 1  # the schedule function's trigger
    await c.sched.trigger()
    started = await c.get(rec["id"])
    assert started["state"] == "SCHEDULED" and started["node"] == "large"
    assert await c.kube_jobs() == [started["k8s_job"]]


async def test_draining_a_node_requeues_its_jobs_and_they_run_elsewhere(api):
    c = Cluster(api)
    rec = await c.running_on_a()
    # kubectl drain: the node is cordoned (a patch of spec.unschedulable), then its pods are evicted
    resp = await api.patch("/api/v1/nodes/a", json={"spec": {"unschedulable": True}})
    assert resp.status == 200
    cordoned = await resp.json()
    assert await c.life.handle(UPDATE, cordoned) != "ignored"
    evicted = pod_of(rec, phase="Failed")
    evicted["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True",
                                            "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"})
    assert await c.life.handle(UPDATE, evicted) == "queued"
    again = await c.get(rec["id"])
    assert again["state"] == "QUEUED" and again["attempts"] == 2 and again["queue_front"]
    await c.sched.trigger()
    assert (await c.get(rec["id"]))["state"] == "QUEUED"  # the cordoned node takes nothing
    await c.node(plain_node("b", cpu="8"))
    await c.sched.trigger()
    moved = await c.get(rec["id"])
    assert moved["state"] == "SCHEDULED" and moved["node"] == "b" and moved["k8s_job"].endswith("-a2")
    assert moved["k8s_job"] in await c.kube_jobs()


async def test_deleting_a_node_requeues_its_jobs_and_they_run_elsewhere(api):
    c = Cluster(api)
    rec = await c.running_on_a()
    await c.node(plain_node("b", cpu="8"))
    # the node is deleted (scale-down, hardware loss): gone from the API server, reported by the source
    gone = plain_node("a", cpu="8")
    assert (await api.delete("/api/v1/nodes/a")).status == 200
    assert await c.life.handle(DELETE, gone) == "node-removed"
    again = await c.get(rec["id"])
    assert again["state"] == "QUEUED" and "node a was removed" in again["reason"]
    await c.sched.trigger()
    moved = await c.get(rec["id"])
    assert moved["state"] == "SCHEDULED" and moved["node"] == "b" and moved["attempts"] == 2
