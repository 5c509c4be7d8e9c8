"""KubernetesCluster through the real `kubernetes` client against kmock's API emulator.

kmock serves create / get / list / delete statefully over real HTTP. Two things the test
fixture adds so it behaves like an API server (product code is not bent for it): the
emulator is entered as a context manager, so creating an existing object answers 409
(otherwise its conflict error escapes as a 500), and created objects get a metadata.uid.
The emulator ignores label and field selectors, which the adapter double-checks anyway.
"""

import logging
import uuid
from pathlib import Path

import kmock
import pytest
import yaml

from sentinels.adapters.kube_manifest import KubeConfig
from sentinels.adapters.kubernetes import KubernetesCluster, node_from_object, pod_requests
from sentinels.domain.errors import ConfigError, InvalidSpec, Unavailable
from sentinels.domain.job import new_record
from sentinels.domain.placement import Waiting, place
from sentinels.domain.spec import validate
from sentinels.embedded import natsd

FIXTURES = Path(__file__).parent / "fixtures" / "kubernetes"
NS = "ml"
GIB = 2**30


class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus the uid a real API server assigns on create."""

    async def _handle(self, request):
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            request.data.setdefault("metadata", {}).setdefault("uid", str(uuid.uuid4()))
        return await super()._handle(request)


@pytest.fixture
async def api():
    emulator = ApiServer()
    async with emulator, kmock.Server(emulator) as server:  # entering the emulator renders 409s
        for resource in ("v1/nodes", "v1/pods", "v1/configmaps", "batch/v1/jobs"):
            emulator.resources[resource] = {}
        emulator.test_url = str(server.url).rstrip("/")
        yield emulator


@pytest.fixture
def cluster(api):
    # kmock's emulator holds watch streams open past the test: the listing path is tested here,
    # the watch-fed cache in test_kube_informer.py against the simulated API server
    return KubernetesCluster(KubeConfig.from_dict({"namespace": NS, "host": api.test_url, "request_timeout": 5}),
                             informer=False)


def make_record(job_id="ab2cd3ef4g", attempts=0, **spec):
    record = new_record(job_id=job_id, spec=validate({"image": "ghcr.io/acme/resnet:1.4", **spec}),
                        who={"user": "alice", "team": "vision"}, klass="high", now="2026-11-28T05:10:28.102Z",
                        queue_seq=1)
    record["attempts"] = attempts
    return record


async def post(api, path: str, obj: dict) -> dict:
    resp = await api.post(path, json=obj)
    assert resp.status == 200, await resp.text()
    return await resp.json()


def gpu_node() -> dict:
    return yaml.safe_load((FIXTURES / "node-gpu.yaml").read_text())


def plain_node(name: str, cpu="8", memory="32Gi", ready=True, **spec) -> dict:
    # Built from the API reference (Node status.allocatable / conditions): a small CPU node.
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": spec,
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                       "reason": "KubeletReady" if ready else "KubeletNotReady"}]}}


def pod(name: str, node: str | None, phase: str, namespace="default", **requests) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
                                                       "resources": {"requests": requests}}]},
            "status": {"phase": phase}}


async def test_nodes_capacity_from_real_node_and_live_pods(api, cluster, caplog):
    await post(api, "/api/v1/nodes", gpu_node())
    await post(api, "/api/v1/nodes", plain_node("cpu-1"))
    await post(api, "/api/v1/nodes", plain_node("fenced", unschedulable=True,
                                                taints=[{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]))
    await post(api, "/api/v1/nodes", plain_node("down", ready=False))
    broken = plain_node("broken")
    del broken["status"]["allocatable"]["memory"]
    await post(api, "/api/v1/nodes", broken)
    await post(api, "/api/v1/nodes", plain_node("garbage", cpu="lots"))
    gpu = "ip-172-31-21-92"
    await post(api, "/api/v1/namespaces/default/pods", pod("train", gpu, "Running", cpu="250m", memory="1Gi",
                                                           **{"nvidia.com/gpu": "1"}))
    await post(api, "/api/v1/namespaces/kube-system/pods", pod("agent", gpu, "Pending", namespace="kube-system",
                                                               cpu="100m", memory="128Mi"))
    await post(api, "/api/v1/namespaces/default/pods", pod("done", gpu, "Succeeded", cpu="500m", memory="4Gi"))
    await post(api, "/api/v1/namespaces/default/pods", pod("failed", "cpu-1", "Failed", cpu="8"))
    await post(api, "/api/v1/namespaces/default/pods", pod("unbound", None, "Pending", cpu="8"))
    await post(api, "/api/v1/namespaces/default/pods", pod("web", "cpu-1", "Running", cpu="1500m", memory="2Gi"))

    with caplog.at_level(logging.WARNING, logger="sentinels.kubernetes"):
        nodes = {n.name: n for n in await cluster.nodes()}
    assert set(nodes) == {gpu, "cpu-1", "fenced", "down"}
    assert "broken" in caplog.text and "garbage" in caplog.text

    g = nodes[gpu]  # the real dump: cpu "1", memory 16064760Ki, nvidia.com/gpu "1"
    assert (g.cpu_millis, g.memory_bytes, g.gpu) == (1000, 16064760 * 1024, 1)
    assert (g.free_cpu_millis, g.free_memory_bytes, g.free_gpu) == (1000 - 350, 16064760 * 1024 - GIB - 128 * 2**20, 0)
    assert g.ready and g.schedulable and g.labels["nvidia.com/gpu.product"] == "Tesla-T4"
    c = nodes["cpu-1"]
    assert (c.free_cpu_millis, c.free_memory_bytes) == (6500, 30 * GIB)
    assert nodes["fenced"].schedulable is False and nodes["fenced"].ready is True
    assert nodes["fenced"].taints == (("node.kubernetes.io/unschedulable", "", "NoSchedule"),)
    assert nodes["down"].ready is False and nodes["down"].schedulable is True

    # what the scheduler makes of it: the GPU is taken, the big CPU job fits on cpu-1 only
    heads = [Waiting(id="gpujob0000", klass="high", rank=100, order=1, cpu_millis=100, memory_bytes=GIB, gpu=1),
             Waiting(id="cpujob0000", klass="high", rank=100, order=2, cpu_millis=6000, memory_bytes=8 * GIB, gpu=0)]
    decision = place(heads, list(nodes.values()))
    assert decision.placements == [("cpujob0000", "cpu-1")]
    assert "GPU" in decision.reasons["gpujob0000"]


def test_node_from_object_on_the_fixture_and_pod_requests():
    node = node_from_object(gpu_node(), {"ip-172-31-21-92": (400, GIB, 1)})
    assert (node.free_cpu_millis, node.free_gpu, node.taints) == (600, 0, ())
    assert node_from_object({"metadata": {"name": "x"}, "status": {}}, {}) is None
    # init containers run before the app: the larger of the two counts; sidecars add up
    spec = {"spec": {"containers": [{"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}],
                     "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "512Mi"}}},
                                        {"restartPolicy": "Always", "resources": {"limits": {"cpu": "100m"}}}],
                     "overhead": {"cpu": "10m"}}}
    assert pod_requests(spec) == (2010, GIB, 0)


async def test_launch_twice_is_harmless_and_is_one_call(api, cluster):
    record = make_record(resources={"gpu": 1})
    await cluster.launch(record, {"MLFLOW_RUN_ID": "run-1"})
    await cluster.launch(record, {"MLFLOW_RUN_ID": "run-1"})  # 409: already done

    job = api.objects[kmock.resource("batch/v1/jobs"), NS, record["k8s_job"]]
    assert len(api.objects[kmock.resource("batch/v1/jobs"), NS, record["k8s_job"]].history) == 1
    assert job["metadata"]["labels"]["sentinels.io/job-id"] == record["id"]
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_RUN_ID"] == "run-1"
    config = job["spec"]["template"]["metadata"]["annotations"]["sentinels.io/config"]
    assert yaml.safe_load(config)["image"] == "ghcr.io/acme/resnet:1.4"
    assert not [k for k in api.objects if k[0] == kmock.resource("v1/configmaps")]  # no ConfigMap made
    creates = [r for r in api._requests if r.method == kmock.method.POST]
    assert len(creates) == 2 and all("/jobs" in str(r.url) for r in creates)  # one per launch
    assert await cluster.active() == {record["id"]: record["k8s_job"]}


async def test_a_large_config_goes_into_a_config_map_owned_by_the_job(api, cluster, monkeypatch):
    from sentinels.adapters import kube_manifest

    monkeypatch.setattr(kube_manifest, "INLINE_CONFIG_BYTES", 0)
    record = make_record()
    await cluster.launch(record, {})
    await cluster.launch(record, {})  # 409 for both objects: already done
    job = api.objects[kmock.resource("batch/v1/jobs"), NS, record["k8s_job"]]
    cm = api.objects[kmock.resource("v1/configmaps"), NS, record["k8s_job"]]
    assert len(cm.history) == 1 and cm["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert yaml.safe_load(cm["data"]["job.yaml"])["image"] == "ghcr.io/acme/resnet:1.4"
    await cluster.stop(record)
    assert job.deleted and cm.deleted


async def test_launch_of_a_new_attempt_replaces_the_old_job(api, cluster):
    record = make_record()
    await cluster.launch(record, {})
    old_uid = api.objects[kmock.resource("batch/v1/jobs"), NS, record["k8s_job"]]["metadata"]["uid"]
    await cluster.launch({**record, "attempts": 1}, {})
    job = api.objects[kmock.resource("batch/v1/jobs"), NS, record["k8s_job"]]
    assert job["metadata"]["uid"] != old_uid
    assert job["metadata"]["annotations"]["sentinels.io/attempt"] == "1"


async def test_active_lists_only_unfinished_sentinels_jobs(api, cluster):
    running, finished = make_record("aaaaaaaaaa"), make_record("bbbbbbbbbb")
    await cluster.launch(running, {})
    await cluster.launch(finished, {})
    key = (kmock.resource("batch/v1/jobs"), NS, finished["k8s_job"])
    api.objects[key].patch({"status": {"conditions": [{"type": "Complete", "status": "True"}]}})
    # someone else's Job in the same namespace (the emulator ignores the label selector)
    await post(api, f"/apis/batch/v1/namespaces/{NS}/jobs", {"apiVersion": "batch/v1", "kind": "Job",
                                                              "metadata": {"name": "other", "namespace": NS}})
    assert await cluster.active() == {"aaaaaaaaaa": running["k8s_job"]}


async def test_stop_deletes_job_and_is_idempotent(api, cluster):
    record = make_record()
    await cluster.launch(record, {})
    await cluster.stop(record)
    assert api.objects[kmock.resource("batch/v1/jobs"), NS, record["k8s_job"]].deleted
    assert await cluster.active() == {}
    await cluster.stop(record)  # 404s: already gone
    deletes = [r for r in api._requests if r.method == kmock.method.DELETE]
    assert not [r for r in deletes if "/configmaps/" in str(r.url)]  # none was made
    job_deletes = [r for r in deletes if "/jobs/" in str(r.url)]
    assert len(job_deletes) == 2 and all(r.params == {"propagationPolicy": "Background"} for r in job_deletes)


async def test_logs_of_the_newest_pod(api, cluster):
    record = make_record()
    assert await cluster.logs(record) == []  # no pod yet
    for name, created in (("old", "2026-11-28T05:00:00Z"), ("new", "2026-11-28T05:05:00Z")):
        p = pod(f"{record['k8s_job']}-{name}", "n1", "Running", namespace=NS)
        p["metadata"].update(creationTimestamp=created, labels={"batch.kubernetes.io/job-name": record["k8s_job"]})
        await post(api, f"/api/v1/namespaces/{NS}/pods", p)
    await post(api, f"/api/v1/namespaces/{NS}/pods", pod("unrelated", "n1", "Running", namespace=NS))
    seen = []
    api[f"get /api/v1/namespaces/{NS}/pods/{record['k8s_job']}-new/log"] << b"epoch 1\nepoch 2\n\xff done\n" >> seen
    assert await cluster.logs(record, tail=3) == ["epoch 1", "epoch 2", "\ufffd done"]
    assert seen[0].params == {"container": "main", "tailLines": "3"}


async def test_logs_of_an_earlier_attempt_are_the_pod_of_that_attempt(api, cluster):
    record = make_record()
    requeued = "sentinels-" + record["id"] + "-a2"  # the second Job, after a requeue
    for name, job, created in (("first", record["k8s_job"], "2026-11-28T05:00:00Z"),
                               ("retry", record["k8s_job"], "2026-11-28T05:01:00Z"),
                               ("later", requeued, "2026-11-28T05:05:00Z")):
        p = pod(f"{job}-{name}", "n1", "Failed", namespace=NS)
        p["metadata"].update(creationTimestamp=created, labels={"batch.kubernetes.io/job-name": job,
                                                                "sentinels.io/job-id": record["id"]})
        await post(api, f"/api/v1/namespaces/{NS}/pods", p)
        api[f"get /api/v1/namespaces/{NS}/pods/{job}-{name}/log"] << f"{name} ran\n".encode()
    await post(api, f"/api/v1/namespaces/{NS}/pods", pod("unrelated", "n1", "Running", namespace=NS))
    assert await cluster.logs(dict(record, log_attempt=1)) == ["first ran"]
    assert await cluster.logs(dict(record, log_attempt=2)) == ["retry ran"]
    assert await cluster.logs(dict(record, log_attempt=3)) == ["later ran"]
    assert await cluster.logs(dict(record, log_attempt=4)) == []  # no such pod (any more)


async def test_api_errors_become_unavailable_or_invalid(api, cluster):
    api["get /api/v1/nodes"] << 503
    with pytest.raises(Unavailable, match="503 while listing nodes"):
        await cluster.nodes()
    api[f"post /apis/batch/v1/namespaces/{NS}/jobs"] << 500 << {"kind": "Status", "message": "etcdserver: timeout"}
    with pytest.raises(Unavailable, match="etcdserver: timeout"):
        await cluster.launch(make_record(), {})


async def test_rejected_job_is_invalid_spec(api, cluster):
    api[f"post /apis/batch/v1/namespaces/{NS}/jobs"] << 422 << {
        "kind": "Status", "code": 422, "message": 'Job.batch "sentinels-ab2cd3ef4g" is invalid: spec.template'}
    with pytest.raises(InvalidSpec, match="Kubernetes rejected creating Job sentinels-ab2cd3ef4g: Job.batch"):
        await cluster.launch(make_record(), {})


@pytest.mark.slow  # real waits: kept out of `pytest -m fast`
async def test_unreachable_api_is_unavailable():
    cluster = KubernetesCluster(KubeConfig(namespace=NS, host=f"http://127.0.0.1:{natsd.free_port()}", request_timeout=2),
                                informer=False)
    with pytest.raises(Unavailable, match="unreachable while listing (nodes|pods)"):
        await cluster.nodes()
    with pytest.raises(Unavailable):
        await cluster.stop(make_record())


async def test_client_from_a_kubeconfig_file(api, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "emulator", "cluster": {"server": api.test_url}}],
        "users": [{"name": "u", "user": {"token": "t0k3n"}}],
        "contexts": [{"name": "test", "context": {"cluster": "emulator", "user": "u"}}]}))
    await post(api, "/api/v1/nodes", plain_node("cpu-1"))
    cluster = KubernetesCluster(KubeConfig.from_dict({"namespace": NS, "kubeconfig": str(kubeconfig)}), informer=False)
    assert [n.name for n in await cluster.nodes()] == ["cpu-1"]
    assert api._requests[-1].headers["Authorization"] == "Bearer t0k3n"


async def test_no_usable_client_configuration_is_a_config_error(tmp_path):
    cluster = KubernetesCluster(KubeConfig(kubeconfig=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="no in-cluster service account, no usable kubeconfig"):
        await cluster.active()


def test_pod_capacity_limits_how_many_more_jobs_a_node_takes():
    """A node's allocatable `pods` minus its live pods (the kubelet's max-pods) reaches placement."""
    from pathlib import Path

    import yaml

    from sentinels.adapters.kubernetes import live_pods_by_node, node_from_object

    node = yaml.safe_load((Path(__file__).parent / "fixtures" / "kubernetes" / "node-gpu.yaml").read_text())
    name = node["metadata"]["name"]
    node["status"]["allocatable"]["pods"] = "3"
    pods = [{"spec": {"nodeName": name}, "status": {"phase": p}} for p in ("Running", "Pending", "Succeeded")]
    parsed = node_from_object(node, {}, live_pods_by_node(pods))
    assert parsed.free_pods == 1  # 3 allowed, 2 live (the Succeeded one does not count)
    assert node_from_object(node, {}).free_pods is None  # counts unknown: no limit assumed


async def test_last_end_reads_the_newest_pods_failure(api, cluster):
    record = make_record()
    assert await cluster.last_end(record) is None  # no pod
    oom = yaml.safe_load((FIXTURES / "pod-oomkilled.yaml").read_text())
    oom["metadata"] = {"name": f"{record['k8s_job']}-x1", "namespace": NS, "creationTimestamp": "2026-11-28T05:05:00Z",
                       "labels": {"batch.kubernetes.io/job-name": record["k8s_job"]}}
    await post(api, f"/api/v1/namespaces/{NS}/pods", oom)
    assert await cluster.last_end(record) == {"reason": "OOMKilled (exit 137)", "exit_code": 137}
    running = pod(f"{record['k8s_job']}-x2", "n1", "Running", namespace=NS)
    running["metadata"].update(creationTimestamp="2026-11-28T05:06:00Z",
                               labels={"batch.kubernetes.io/job-name": record["k8s_job"]})
    await post(api, f"/api/v1/namespaces/{NS}/pods", running)
    assert await cluster.last_end(record) is None  # the newest pod has not failed


async def test_a_preemption_marks_the_pods_disruption_target_then_deletes_the_job(api, cluster):
    """As the kube-scheduler does with its own victims (condition built from the API reference:
    type DisruptionTarget, reason PreemptionByScheduler); the deletion gives the pod its grace."""
    from sentinels.domain import observe

    record = make_record()
    await cluster.launch(record, {})
    pod = yaml.safe_load((FIXTURES / "pod-running.yaml").read_text())
    pod["metadata"].update(name=f"{record['k8s_job']}-x1y2z", namespace=NS,
                           labels={"batch.kubernetes.io/job-name": record["k8s_job"], "sentinels.io/job-id": record["id"]})
    await post(api, f"/api/v1/namespaces/{NS}/pods", pod)
    await cluster.stop(record, "preempted by zz2yy3xx4w (critical, vera)")
    patches = [r for r in api._requests if r.method == kmock.method.PATCH]
    assert [str(r.url).split("?")[0].endswith(f"/pods/{pod['metadata']['name']}/status") for r in patches] == [True]
    (cond,) = patches[0].data["status"]["conditions"]
    assert cond["type"] == "DisruptionTarget" and cond["reason"] == "PreemptionByScheduler"
    assert cond["message"] == "preempted by zz2yy3xx4w (critical, vera)"
    assert api.objects[kmock.resource("batch/v1/jobs"), NS, record["k8s_job"]].deleted
    # what the lifecycle then reads from that pod: a preemption (requeued, never a failure)
    pod["status"] = {"phase": "Failed", "conditions": [cond]}
    obs = observe.observe("dev.knative.apiserver.resource.update", pod)
    assert obs.what == observe.DISRUPTED and obs.reason.startswith("preempted")
