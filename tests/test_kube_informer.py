"""The scheduler's watch-fed capacity cache, through the real client against the simulated
API server (tests/simcluster: selectors, resourceVersions, watch, 410)."""

import asyncio
import time

import kmock
import pytest

from sentinels.adapters.kube_manifest import KubeConfig
from sentinels.adapters.kubernetes import KubernetesCluster
from tests.simcluster.apiserver import NODES, PODS, ApiServer
from tests.simcluster.control import NodeShape

GIB = 2**30


@pytest.fixture
async def api():
    server = ApiServer()
    async with server:
        async with kmock.Server(server) as http:
            server.test_url = str(http.url).rstrip("/")
            yield server
            server.end_watches()  # before the HTTP server stops: it waits for open streams


def pod(name, node, phase="Running", cpu="1", memory="1Gi", namespace="other"):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
                                                       "resources": {"requests": {"cpu": cpu, "memory": memory}}}]},
            "status": {"phase": phase}}


async def settle(cluster, check, timeout=20.0):
    """Call nodes() until check(nodes by name) holds."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = {n.name: n for n in await cluster.nodes()}
        if check(nodes) or time.monotonic() > deadline:
            return nodes
        await asyncio.sleep(0.05)


async def test_passes_read_the_cache_not_the_api(api):
    api.create(NODES, NodeShape("a", cpu="8", memory="32Gi", pods=3).to_object())
    api.create(NODES, NodeShape("b", cpu="4", memory="16Gi").to_object())
    api.create(PODS, pod("p1", "a", cpu="2"))
    api.create(PODS, pod("done", "a", phase="Succeeded", cpu="4"))  # terminal: not counted
    api.create(PODS, pod("unbound", None, phase="Pending", cpu="4"))
    cluster = KubernetesCluster(KubeConfig(namespace="sentinels", host=api.test_url, request_timeout=3))
    try:
        first = {n.name: n for n in await cluster.nodes()}  # not synced yet: listed directly, same answer
        assert first["a"].free_cpu_millis == 6000 and first["a"].free_pods == 2
        nodes = await settle(cluster, lambda n: cluster._informer.snapshot() is not None)
        assert nodes["a"].free_cpu_millis == 6000 and nodes["b"].free_cpu_millis == 4000
        calls = api.api_calls()
        for _ in range(20):
            await cluster.nodes()
        assert api.api_calls() == calls  # twenty passes, no request

        api.create(PODS, pod("p2", "b", cpu="3", memory="2Gi"))
        nodes = await settle(cluster, lambda n: n["b"].free_cpu_millis == 1000)
        assert nodes["b"].free_memory_bytes == 14 * GIB
        api.patch(PODS, "other", "p2", {"status": {"phase": "Succeeded"}})  # leaves the field selector
        await settle(cluster, lambda n: n["b"].free_cpu_millis == 4000)
        api.patch(NODES, None, "a", {"spec": {"unschedulable": True}})
        nodes = await settle(cluster, lambda n: not n["a"].schedulable)
        assert nodes["a"].free_cpu_millis == 6000
        api.delete(NODES, None, "b")
        nodes = await settle(cluster, lambda n: "b" not in n)
        assert set(nodes) == {"a"}
        assert api.api_calls() - calls <= 2  # none per pass; at most a re-watch
    finally:
        cluster._informer.close()


async def test_a_watch_too_old_lists_again(api):
    api.create(NODES, NodeShape("a", cpu="8").to_object())
    cluster = KubernetesCluster(KubeConfig(namespace="sentinels", host=api.test_url, request_timeout=3))
    try:
        await settle(cluster, lambda n: cluster._informer.snapshot() is not None)
        lists = api.calls[("python-kubernetes", "LIST")]
        api.fail(1.5, 500, lambda r: r.params.get("watch") == "true")  # watches cannot resume for a while
        api.end_watches()
        api.create(PODS, pod("p1", "a", cpu="5"))
        api.create(PODS, pod("p2", "a", cpu="1"))
        api.history.clear()  # what happened meanwhile is forgotten: resuming answers 410 Gone
        nodes = await settle(cluster, lambda n: n["a"].free_cpu_millis == 2000)
        assert nodes["a"].free_cpu_millis == 2000
        assert api.calls[("python-kubernetes", "LIST")] > lists  # listed again
    finally:
        cluster._informer.close()


async def test_a_failing_watch_falls_back_to_listing(api):
    api.create(NODES, NodeShape("a", cpu="8").to_object())
    cluster = KubernetesCluster(KubeConfig(namespace="sentinels", host=api.test_url, request_timeout=3))
    try:
        await settle(cluster, lambda n: cluster._informer.snapshot() is not None)
        cluster._informer.stale_after = 0.0
        with cluster._informer.lock:
            cluster._informer.failing_since["pods"] = time.monotonic() - 1
        assert cluster._informer.snapshot() is None
        lists = api.calls[("python-kubernetes", "LIST")]
        assert [n.name for n in await cluster.nodes()] == ["a"]
        assert api.calls[("python-kubernetes", "LIST")] > lists
    finally:
        cluster._informer.close()


async def test_jobs_finds_each_jobs_newest_job_by_its_labels(api):
    """What the lifecycle's reconcile compares records with. It used to ask for the label
    `sentinels=sentinels` (the value where the key belongs): a real API server answered no Job,
    so every job running for over a minute counted as deleted and was requeued."""
    from tests.test_kube_backend import make_record

    cluster = KubernetesCluster(KubeConfig(namespace="sentinels", host=api.test_url, request_timeout=3),
                                informer=False)
    first, other = make_record("aaaaaaaaaa", attempts=1), make_record("bbbbbbbbbb", attempts=1)
    await cluster.launch(first, {})
    await cluster.launch(other, {})
    again = dict(first, attempts=2, k8s_job="sentinels-aaaaaaaaaa-a2")
    await cluster.launch(again, {})
    api.create("batch/v1/jobs", {"metadata": {"name": "not-ours", "namespace": "sentinels",
                                              "labels": {"sentinels.io/job-id": "aaaaaaaaaa"}}})
    found = await cluster.jobs(["aaaaaaaaaa", "cccccccccc"])
    assert list(found) == ["aaaaaaaaaa"]
    assert found["aaaaaaaaaa"]["metadata"]["name"] == "sentinels-aaaaaaaaaa-a2"  # the newer attempt's
    assert set(await cluster.jobs(["aaaaaaaaaa", "bbbbbbbbbb"])) == {"aaaaaaaaaa", "bbbbbbbbbb"}


async def test_a_snapshot_builds_again_only_the_nodes_that_changed(api):
    api.create(NODES, NodeShape("a", cpu="8", memory="32Gi").to_object())
    api.create(NODES, NodeShape("b", cpu="4", memory="16Gi").to_object())
    cluster = KubernetesCluster(KubeConfig(namespace="sentinels", host=api.test_url, request_timeout=3))
    try:
        await settle(cluster, lambda n: cluster._informer.snapshot() is not None)
        first = {n.name: n for n in cluster._informer.snapshot()}
        api.create(PODS, pod("p1", "a", cpu="2"))
        after = await settle(cluster, lambda n: n["a"].free_cpu_millis == 6000)
        assert after["a"].free_cpu_millis == 6000 and after["a"] is not first["a"]
        assert after["b"] is first["b"]  # untouched: the same object, not built again
        api.patch(PODS, "other", "p1", {"status": {"phase": "Succeeded"}})
        done = await settle(cluster, lambda n: n["a"].free_cpu_millis == 8000)
        assert done["a"].free_cpu_millis == 8000 and [n.name for n in await cluster.nodes()] == ["a", "b"]
    finally:
        cluster._informer.close()
