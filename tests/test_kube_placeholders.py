"""Placeholder Deployments for queued demand, kept by the scheduler on Kubernetes.

The real adapter (`KubePlaceholders` through the official client) against kmock's API
emulator, and against its in-memory twin with the same assertions; then the schedule
function's after-pass hook over the emulated cluster: a job that fits no node makes a
placeholder of its shape appear, and it goes once the job runs.
"""

import pytest

from sentinels.functions.schedule.placeholders import PlaceholderSync
from sentinels.functions.schedule.service import ScheduleService
from sentinels.functions.submit.service import SubmitService
from sentinels import clock
from sentinels.adapters.kube_manifest import KubeConfig
from sentinels.adapters.kube_placeholders import KubePlaceholders
from sentinels.adapters.kubernetes import KubernetesCluster
from sentinels.adapters.memory import MemoryHistory, MemoryJobs, MemoryPlaceholders, MemoryQueue, MemorySink
from sentinels.domain import demand
from sentinels.domain.priority import PriorityConfig
from sentinels.domain.scheduler_config import SchedulerConfig
from sentinels.domain.spec import Limits
from tests.test_kube_backend import NS, api, plain_node, post  # noqa: F401  (api is a fixture)

DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"
GI = 2**30


def cluster_of(api) -> KubernetesCluster:
    api.resources["apps/v1/deployments"] = {}
    return KubernetesCluster(KubeConfig.from_dict({"namespace": NS, "host": api.test_url, "request_timeout": 5}),
                             informer=False)


async def names(api) -> dict[str, int]:
    items = (await (await api.get(DEPLOYMENTS)).json())["items"]
    return {d["metadata"]["name"]: d["spec"]["replicas"] for d in items}


def want(**jobs_by_shape) -> list[dict]:
    d = {("high", shape.replace("_", ",")): demand.Demand(jobs=n, cpu_millis=1000 * n, memory_bytes=GI * n,
                                                          largest=(0, 1000, GI))
         for shape, n in jobs_by_shape.items()}
    return demand.placeholders(d, NS)


@pytest.fixture(params=["kubernetes", "memory"])
async def target(request, api):
    if request.param == "memory":
        return MemoryPlaceholders(), None
    return KubePlaceholders(cluster_of(api)), api


async def test_sync_creates_updates_and_deletes_to_match(target):
    port, emulator = target
    first = want(cpu=2, gpu=1)
    assert await port.sync(first) == {"created": 2, "updated": 0, "deleted": 0}
    assert await port.sync(first) == {"created": 0, "updated": 0, "deleted": 0}  # nothing changed: no write
    assert await port.sync(want(cpu=5, gpu=1)) == {"created": 0, "updated": 1, "deleted": 0}
    assert await port.sync(want(cpu=5)) == {"created": 0, "updated": 0, "deleted": 1}
    if emulator is not None:
        assert await names(emulator) == {demand.placeholder_name("cpu"): 5}


async def test_the_real_adapter_leaves_other_deployments_alone(api):
    port = KubePlaceholders(cluster_of(api))
    other = {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "someone-else", "namespace": NS, "labels": {"app": "web"}},
             "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                      "template": {"metadata": {"labels": {"app": "web"}},
                                   "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}
    await post(api, DEPLOYMENTS, other)
    await port.sync(want(cpu=1))
    assert await port.sync([]) == {"created": 0, "updated": 0, "deleted": 1}
    assert await names(api) == {"someone-else": 1}


async def test_a_job_no_node_fits_gets_a_placeholder_of_its_shape_until_it_runs(api):
    kube = cluster_of(api)
    jobs, queue, history, sink = MemoryJobs(), MemoryQueue(), MemoryHistory(), MemorySink()
    prio = PriorityConfig.from_dict(None)
    times = iter(f"2026-12-02T05:00:{s:02d}Z" for s in range(0, 60, 10))  # each pass 10 s after the last
    keeper = PlaceholderSync(KubePlaceholders(kube), demand.PlaceholderConfig(True, 10, 5), NS)
    sched = ScheduleService(jobs, queue, history, sink, kube, prio, SchedulerConfig(), lambda: next(times),
                            after_pass=keeper.after_pass)
    submit = SubmitService(jobs, queue, history, sink, prio, Limits(), clock.now_iso)
    await post(api, "/api/v1/nodes", plain_node("small", cpu="2"))
    spec = {"image": "python:3.11", "command": ["true"], "resources": {"cpu": 4, "memory": "1Gi"}}
    rec = (await submit.submit({"spec": spec}, {"user": "root", "role": "admin"}, "t", "e-big"))[1]
    await sched.trigger()
    assert (await jobs.get(rec["id"]))[0]["state"] == "QUEUED"
    assert await names(api) == {demand.placeholder_name("cpu"): 1}
    items = (await (await api.get(DEPLOYMENTS)).json())["items"]
    assert items[0]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "4000m"
    await post(api, "/api/v1/nodes", plain_node("large", cpu="8"))  # the autoscaler added a node
    await sched.trigger()
    assert (await jobs.get(rec["id"]))[0]["state"] == "SCHEDULED"
    assert await names(api) == {}


async def test_placeholder_pods_hold_no_room_in_the_schedulers_eyes(api):
    kube = cluster_of(api)
    await post(api, "/api/v1/nodes", plain_node("n1", cpu="8"))
    (d,) = want(cpu=1)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "ph-1", "namespace": NS, "labels": d["spec"]["template"]["metadata"]["labels"]},
           "spec": {**d["spec"]["template"]["spec"], "nodeName": "n1"}, "status": {"phase": "Running"}}
    await post(api, f"/api/v1/namespaces/{NS}/pods", pod)
    (node,) = await kube.nodes()
    assert node.free_cpu_millis == 8000  # without the exception it would be 7000: the job it stands for would wait
