"""The Kubernetes path end to end: `sentinels up` with `backend: kubernetes` on a simulated cluster.

The four functions run unchanged; sentinels talks to the API server through the official
client over HTTP, and Job/Pod/Node changes come back as ApiServerSource CloudEvents
through the embedded router (tests/simcluster). Each scenario uses its own pool of nodes
(label `pool`) so they share one stack; the one that makes the API fail for everyone
runs last.
"""

import json
import time

import pytest

from tests.fake_slack import FakeSlack
from tests.simcluster.control import SCRIPT_ENV, NodeShape
from tests.simcluster.harness import SimStack

OUTPUTS_CLAIM = "sentinels-outputs"
POOLS = {"general": 2, "evict": 2, "lost": 2, "cordon": 1, "preempt": 1, "faults": 3}


def spec(pool: str, script=None, **extra) -> dict:
    out = {"image": "ghcr.io/acme/train:1.4", "resources": {"cpu": 1, "memory": "1Gi"},
           "node_selector": {"pool": pool}, "env": {SCRIPT_ENV: json.dumps(script or {"duration": 0.3})}}
    out.update(extra)
    return out


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    home = tmp_path_factory.mktemp("simhome")
    nodes = [NodeShape(f"{pool}-{i}", cpu="4", memory="16Gi", labels={"pool": pool})
             for pool, n in POOLS.items() for i in range(n)]
    with FakeSlack() as slack:
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db", "SLACK_WEBHOOK_URL": slack.webhook_url}
        volume = home / "outputs-volume"  # the RWX claim: jobs write subPath <id>, on_job_event reads it
        config = {"lifecycle": {"image_pull_grace_seconds": 3, "outputs_root": str(volume)},
                  "kubernetes": {"outputs_volume": {"claim": OUTPUTS_CLAIM}},
                  "registries": {"ghcr.io": {"secret": "ghcr-pull"}},  # every scenario's image is private
                  "preemption": {"classes": ["critical"]}}  # only the preemption scenario submits critical jobs
        private = {"ghcr.io": "ghcr-pull", "private.registry.internal": "private-pull"}
        with SimStack(home, nodes, config=config, env=env, claims={OUTPUTS_CLAIM: volume},
                      registries=private) as stack:
            stack.slack = slack
            yield stack


def wait_for(pred, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    return None


def slack_texts(sim, job_id: str) -> list[str]:
    return [json.dumps(m) for m in sim.slack.messages if job_id in json.dumps(m)]


def test_submit_to_succeeded_with_mlflow_and_slack(sim):
    job = sim.submit(spec("general", {"duration": 0.5, "logs": ["epoch 1 loss 0.3"]}, params={"lr": 0.01}))
    record = sim.wait(job, "SUCCEEDED")
    assert [h["to"] for h in sim.history(job)] == ["QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED"]
    assert record["node"].startswith("general-") and record["attempts"] == 1
    jobs = sim.jobs_in_cluster(job)
    assert [j["metadata"]["name"] for j in jobs] == [f"sentinels-{job}"]
    env = {e["name"]: e["value"] for e in jobs[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_RUN_ID"] == record["mlflow_run_id"]  # the container logs into its own run
    synced = wait_for(lambda: (sim.record(job).get("mlflow") or {}).get("synced_state") == "SUCCEEDED")
    assert synced, sim.record(job).get("mlflow")
    from mlflow.tracking import MlflowClient

    run = MlflowClient(sim.env["MLFLOW_TRACKING_URI"]).get_run(record["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.01"
    messages = wait_for(lambda: slack_texts(sim, job))
    assert messages and len(messages) == 1 and "succeeded" in messages[0]


@pytest.mark.parametrize("state,script", [
    ("SUCCEEDED", {"duration": 0.3, "outputs": {"model.txt": "weights", "plots/loss.csv": "1,0.3"}}),
    ("FAILED", {"duration": 0.3, "exit_code": 1, "outputs": {"checkpoint.txt": "epoch 3", "plots/loss.csv": "1,0.5"}}),
])
def test_outputs_become_the_runs_artifacts_after_success_and_after_failure(sim, state, script):
    """The chart's path: the job writes its outputs to the ReadWriteMany claim (subPath = job id),
    the lifecycle function mounts the same claim at lifecycle.outputs_root and logs the job's
    folder as the run's artifacts once the job ended, whether it succeeded or failed."""
    job = sim.submit(spec("general", script))
    record = sim.wait(job, state)
    pod = sim.jobs_in_cluster(job)[0]["spec"]["template"]["spec"]
    assert {"name": "outputs", "persistentVolumeClaim": {"claimName": OUTPUTS_CLAIM}} in pod["volumes"]
    assert {"name": "outputs", "mountPath": "/outputs", "subPath": job} in pod["containers"][0]["volumeMounts"]
    synced = wait_for(lambda: (sim.record(job).get("mlflow") or {}).get("synced_state") == state)
    assert synced, sim.record(job).get("mlflow")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sim.env["MLFLOW_TRACKING_URI"])
    run_id = record["mlflow_run_id"]
    assert client.get_run(run_id).info.status == ("FINISHED" if state == "SUCCEEDED" else "FAILED")
    files = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "plots")}
    assert files == {*(f for f in script["outputs"] if "/" not in f), "plots", "plots/loss.csv"}
    local = client.download_artifacts(run_id, "plots/loss.csv", str(sim.home / f"download-{job}"))
    assert open(local).read() == script["outputs"]["plots/loss.csv"]


def test_a_private_image_pulls_with_its_registrys_secret_and_fails_unauthorized_without(sim):
    job = sim.submit(spec("general"))
    sim.wait(job, "SUCCEEDED")
    (created,) = sim.jobs_in_cluster(job)
    assert created["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "ghcr-pull"}]  # exactly its own
    other = sim.submit(spec("general", image="private.registry.internal/acme/train:1"))  # no credentials configured
    # look at its Job while it exists: once the job has FAILED its Job is deleted
    found = wait_for(lambda: sim.jobs_in_cluster(other))
    assert found, "its Job was never created"
    assert "imagePullSecrets" not in found[0]["spec"]["template"]["spec"]
    record = sim.wait(other, "FAILED")
    assert "ErrImagePull" in record["reason"] or "ImagePullBackOff" in record["reason"], record["reason"]
    assert "401 Unauthorized" in record["reason"], record["reason"]  # the runtime's own words


def test_failure_keeps_exit_code_and_last_log_lines(sim):
    job = sim.submit(spec("general", {"duration": 0.3, "exit_code": 3, "logs": ["epoch 1", "about to fail"]}))
    record = sim.wait(job, "FAILED")
    assert record["reason"] == "exit code 3" and record["exit_code"] == 3
    assert record["log_tail"][-2:] == ["epoch 1", "about to fail"]  # read through the pod log API
    messages = wait_for(lambda: slack_texts(sim, job))
    assert messages and "about to fail" in messages[0] and "exit code 3" in messages[0]


def test_oom(sim):
    record = sim.wait(sim.submit(spec("general", {"duration": 0.3, "oom": True})), "FAILED")
    assert record["reason"] == "OOMKilled (exit 137)" and record["exit_code"] == 137


def test_image_pull_failure_fails_after_the_grace(sim):
    job = sim.submit(spec("general", {"pull_failure": True}))
    waiting = sim.wait(job, ("SCHEDULED", "RUNNING"), where=lambda r: "image pull failed" in r["reason"])
    assert "fails after 3s" in waiting["reason"]
    record = sim.wait(job, "FAILED", timeout=120)
    assert record["reason"].startswith("image pull failed: ") and "ghcr.io/acme/train:1.4" in record["reason"]
    assert wait_for(lambda: not sim.jobs_in_cluster(job)), "the failed Job is deleted"


def test_deadline(sim):
    record = sim.wait(sim.submit(spec("general", {"duration": 60}, timeout="2s")), "FAILED", timeout=120)
    assert record["reason"] == "timed out: deadline of 2s exceeded"


def _running_node(sim, job: str) -> str:
    return sim.wait(job, "RUNNING")["node"] or ""


def _pod_node(sim, job: str) -> str:
    pods = wait_for(lambda: [p for p in sim.cluster(lambda c: c.pods_on_job(job)) if p["spec"].get("nodeName")])
    assert pods, "no pod bound"
    return pods[0]["spec"]["nodeName"]


def test_evicted_pod_is_requeued_and_runs_elsewhere(sim):
    job = sim.submit(spec("evict", [{"duration": 60}, {"duration": 0.3}]))
    sim.wait(job, "RUNNING")
    first = _pod_node(sim, job)
    sim.cluster(lambda c: c.drain(first))  # cordon + eviction with a DisruptionTarget condition
    record = sim.wait(job, "SUCCEEDED", timeout=120)
    assert record["attempts"] == 2
    assert _pod_node(sim, job) != first
    steps = [(h["to"], h.get("reason", "")) for h in sim.history(job)]
    assert ("QUEUED", "requeued after: evicted: EvictionByEvictionAPI: Eviction API: evicting") in steps, steps
    assert [j["metadata"]["name"] for j in sim.jobs_in_cluster(job)] == [f"sentinels-{job}-a2"]


def test_a_critical_job_preempts_a_low_one_which_runs_again(sim):
    """Preemption on the Kubernetes path: the victim's pod is marked DisruptionTarget and its Job
    deleted (the pod gets SIGTERM, exit 143); it is requeued with attempts + 1, never failed,
    runs again after the critical job, and its second run is told who preempted the first."""
    whole = {"cpu": 4, "memory": "8Gi"}  # the pool's one node holds one such job
    low = sim.submit(spec("preempt", [{"duration": 60}, {"duration": 0.5}], priority="low", resources=whole))
    sim.wait(low, "RUNNING")
    urgent = sim.submit(spec("preempt", {"duration": 0.5}, priority="critical", resources=whole))
    assert sim.wait(urgent, "SUCCEEDED", timeout=120)["attempts"] == 1
    record = sim.wait(low, "SUCCEEDED", timeout=120)
    assert record["attempts"] == 2 and record["preemptions"] == 1 and record.get("exit_code", 0) == 0
    steps = [(h["to"], h.get("reason", "")) for h in sim.history(low)]
    assert [s for s, _ in steps] == ["QUEUED", "SCHEDULED", "RUNNING", "QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED"], steps
    assert steps[3][1].startswith(f"preempted by {urgent} (critical, ") and "requeued at the front of low" in steps[3][1]
    (second,) = sim.jobs_in_cluster(low)  # the first attempt's Job was deleted by the preemption
    assert second["metadata"]["name"] == f"sentinels-{low}-a2"
    env = {e["name"]: e["value"] for e in second["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SENTINELS_PREEMPTED"] == steps[3][1].split("; requeued")[0]
    told = [m for m in sim.slack.messages if low in json.dumps(m) and "preempted" in json.dumps(m)]
    assert told, "Slack was not told who preempted whom"


def test_node_deleted_while_running_requeues(sim):
    job = sim.submit(spec("lost", [{"duration": 60}, {"duration": 0.3}]))
    sim.wait(job, "RUNNING")
    lost = _pod_node(sim, job)
    sim.cluster(lambda c: c.delete_node(lost))
    record = sim.wait(job, "SUCCEEDED", timeout=120)
    assert record["attempts"] == 2 and _pod_node(sim, job) != lost
    requeues = [h.get("reason", "") for h in sim.history(job) if h["to"] == "QUEUED"][1:]
    # whichever came first: the Node's deletion or its pod failed by PodGC (DisruptionTarget)
    assert requeues == [f"requeued after: node {lost} was removed"] or \
        requeues == ["requeued after: node lost: DeletionByPodGC: PodGC: node no longer exists"], requeues


def test_node_added_starts_a_job_that_could_never_fit(sim):
    job = sim.submit(spec("grow", resources={"cpu": 2, "memory": "4Gi", "gpu": 4}))
    assert wait_for(lambda: "no node matches pool=grow" in sim.waiting_reason(job)), sim.waiting_reason(job)
    sim.cluster(lambda c: c.add_node(NodeShape("grow-gpu", cpu="16", memory="64Gi", gpu=4, labels={"pool": "grow"},
                                               taints=({"key": "nvidia.com/gpu", "value": "present",
                                                        "effect": "NoSchedule"},))))
    record = sim.wait(job, "SUCCEEDED", timeout=120)
    assert record["node"] == "grow-gpu"


def test_cordoned_node_is_not_used(sim):
    sim.cluster(lambda c: c.cordon("cordon-0"))
    time.sleep(2)  # the cordon reaches the scheduler as a Node update
    job = sim.submit(spec("cordon"))
    assert wait_for(lambda: "no node matches pool=cordon" in sim.waiting_reason(job)), sim.waiting_reason(job)
    time.sleep(2)  # more scheduling passes
    record = sim.record(job)
    assert record["state"] == "QUEUED" and not sim.jobs_in_cluster(job), record
    sim.cluster(lambda c: c.cordon("cordon-0", on=False))
    assert sim.wait(job, "SUCCEEDED", timeout=120)["node"] == "cordon-0"


def test_a_lost_create_response_gives_409_and_one_job(sim):
    conflicts = sim.api.conflicts
    sim.api.fail(60, 500, lambda r: r.method == "POST" and r.url.path.endswith("/jobs"), after=True, times=1)
    job = sim.submit(spec("general"))
    sim.wait(job, "SUCCEEDED", timeout=120)
    assert sim.api.created_jobs[(f"sentinels-{job}", "1")] == 1
    # either the next pass created it again (409: already there, nothing to do) or the
    # timer's reconcile found it running first and repaired the record
    repaired = any("record repaired" in h.get("reason", "") for h in sim.history(job))
    assert sim.api.conflicts > conflicts or repaired


def test_api_errors_and_timeouts_for_a_while_lose_and_double_nothing(sim):
    jobs = [sim.submit(spec("faults", {"duration": 1.0})) for _ in range(6)]
    time.sleep(0.5)
    sim.api.fail(4, 500)  # every client: sentinels, the source's watches
    time.sleep(4)
    sim.api.fail(5, 0)  # then it stops answering at all (client timeouts: 3 s)
    time.sleep(5)
    jobs += [sim.submit(spec("faults", {"duration": 0.5})) for _ in range(3)]
    records = [sim.wait(j, "SUCCEEDED", timeout=120) for j in jobs]
    assert all(r["attempts"] == 1 for r in records)
    for j in jobs:
        assert sim.api.created_jobs[(f"sentinels-{j}", "1")] == 1, j
