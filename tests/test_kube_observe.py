"""observe(): what real Kubernetes objects mean for a job.

Every file in tests/fixtures/kubernetes (real dumps from real clusters) is fed in.
The dumps are not sentinels objects, so the tests copy each one and add the label
`sentinels.io/job-id` (the only change). Objects with no real dump available (a Job failed
on its deadline, an evicted pod with a DisruptionTarget condition, NotReady and cordoned
Nodes) are built here from the Kubernetes API reference, marked where they are built.
"""

import copy
import json
from pathlib import Path

import pytest
import yaml

from sentinels.domain import events
from sentinels.domain.observe import Observation, node_state, observe

FIXTURES = Path(__file__).parent / "fixtures" / "kubernetes"  # verbatim copies; README.md names each source
ADD, UPDATE, DELETE = events.APISERVER_ADD, events.APISERVER_UPDATE, events.APISERVER_DELETE
JOB_ID = "ab2cd3ef4g"


def load(name: str) -> dict:
    return yaml.safe_load((FIXTURES / name).read_text())


def printout(name: str) -> tuple[str, dict]:
    """(type, data) from an event_display printout (both the 1.0 and the old 0.2 layout)."""
    text = (FIXTURES / name).read_text()
    head, _, data = text.partition("\nData,\n")
    ce_type = next(line.split(":", 1)[1].strip() for line in head.splitlines()
                   if line.strip().lower().startswith("type:"))
    return ce_type, json.loads(data)


def labelled(obj: dict, job_id: str = JOB_ID) -> dict:
    """A copy of a real object with the sentinels job label added (nothing else changes)."""
    obj = copy.deepcopy(obj)
    obj["metadata"].setdefault("labels", {})["sentinels.io/job-id"] = job_id
    return obj


# file -> (event type, expected what, expected reason (prefix), node_name, exit_code)
EXPECTED = {
    "job-succeeded.yaml": (UPDATE, "succeeded", "completed", None, None),
    "job-succeeded-legacy.yaml": (UPDATE, "succeeded", "completed", None, None),
    "job-failed-backofflimit.yaml": (UPDATE, "failed", "BackoffLimitExceeded", None, None),
    "job-podfailurepolicy.yaml": (ADD, None, None, None, None),  # spec only: nothing happened yet
    "pod-running.yaml": (UPDATE, "running", "running on datagen-1-34", "datagen-1-34", None),
    "pod-succeeded.yaml": (UPDATE, "succeeded", "completed", "datagen-1-34", 0),
    "pod-succeeded-helm-install.yaml": (UPDATE, "succeeded", "completed", "primary-node", 0),
    "pod-failed-exitcode.yaml": (UPDATE, "failed", "exit code 42", "datagen-1-34", 42),
    "pod-oomkilled.yaml": (UPDATE, "failed", "OOMKilled (exit 137)", "minikube", 137),
    "pod-errimagepull.yaml": (UPDATE, "pending", "image pull failed: ErrImagePull: rpc error", "minikube", None),
    "pod-imagepullbackoff.yaml": (UPDATE, "pending", 'image pull failed: ImagePullBackOff: Back-off pulling image',
                                  "docker-for-desktop", None),
    "pod-pending-unschedulable.yaml": (UPDATE, "pending", "not scheduled: Unschedulable: 0/1 nodes are available: "
                                       "1 Insufficient nvidia.com/gpu", None, None),
    "pod-pending-unschedulable-nodeselector.yaml": (UPDATE, "pending", "not scheduled: Unschedulable: 0/1 nodes are "
                                                    "available: 1 node(s) didn't match", None, None),
    "node-gpu.yaml": (ADD, "node-added", "added: Ready and schedulable", "ip-172-31-21-92", None),
}
PRINTOUTS = {
    # a full Pod in an ApiServerSource event (old 0.2 printout)
    "apiserversource-event-pod-v02.txt": ("Pod", "running", "running on 10.171.147.102"),
    # a core/v1 Event object: not a Job, Pod or Node
    "apiserversource-event.txt": ("Event", None, None),
    # the timer: not an ApiServerSource event at all
    "pingsource-event.txt": (None, None, None),
}


def test_every_fixture_file_is_covered():
    present = {p.name for p in FIXTURES.iterdir() if p.suffix in (".yaml", ".txt")}
    assert present == set(EXPECTED) | set(PRINTOUTS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_objects(name):
    event_type, what, reason, node, code = EXPECTED[name]
    raw = load(name)
    obs = observe(event_type, labelled(raw))
    if what is None:
        assert obs is None
        return
    assert isinstance(obs, Observation)
    assert (obs.kind, obs.what, obs.node_name, obs.exit_code) == (raw["kind"], what, node, code)
    assert obs.reason.startswith(reason), obs.reason
    assert obs.uid == raw["metadata"]["uid"] and obs.resource_version == raw["metadata"]["resourceVersion"]
    assert obs.name == raw["metadata"]["name"]
    assert obs.job_id == (None if raw["kind"] == "Node" else JOB_ID)
    assert obs.problem == ("image pull" in reason)
    # the unlabelled original is not a sentinels job
    if raw["kind"] != "Node":
        assert observe(event_type, raw).job_id is None


@pytest.mark.parametrize("name", sorted(PRINTOUTS))
def test_event_printouts(name):
    kind, what, reason = PRINTOUTS[name]
    ce_type, data = printout(name)
    if kind is None:
        assert ce_type == events.PING
        assert observe(ce_type, data) is None
        return
    assert ce_type == UPDATE and data["kind"] == kind
    obs = observe(ce_type, labelled(data))
    if what is None:
        assert obs is None
    else:
        assert (obs.kind, obs.what, obs.reason, obs.job_id) == (kind, what, reason, JOB_ID)


def test_job_deleted_before_finishing_and_after():
    running = labelled(load("job-podfailurepolicy.yaml"))
    obs = observe(DELETE, running)
    assert (obs.what, obs.deleted) == ("deleted", True)
    done = observe(DELETE, labelled(load("job-succeeded.yaml")))  # TTL clean-up of a finished Job
    assert (done.what, done.deleted) == ("succeeded", True)


def test_job_failed_on_deadline():
    # Built from the API reference (JobCondition; the Job controller's DeadlineExceeded reason):
    # no real dump of such a Job was found. Shape follows job-failed-backofflimit.yaml.
    job = labelled(load("job-failed-backofflimit.yaml"))
    job["spec"]["activeDeadlineSeconds"] = 60
    job["metadata"]["annotations"] = {"sentinels.io/attempt": "1"}
    job["status"]["conditions"] = [
        {"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded",
         "message": "Job was active longer than specified deadline", "lastTransitionTime": "2018-12-02T08:10:25Z"},
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
         "message": "Job was active longer than specified deadline", "lastTransitionTime": "2018-12-02T08:10:26Z"}]
    obs = observe(UPDATE, job)
    assert (obs.what, obs.reason, obs.attempt) == ("failed", "deadline exceeded (activeDeadlineSeconds)", 1)


def test_job_failed_by_pod_failure_policy_keeps_the_message():
    # Built from the docs' quoted message (no real dump with status exists; see the fixtures README).
    job = labelled(load("job-podfailurepolicy.yaml"))
    msg = ("Container main for pod default/job-pod-failure-policy-failjob-8ckj8 failed with exit code 42 "
           "matching FailJob rule at index 0")
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": msg}]}
    assert observe(UPDATE, job).reason == f"PodFailurePolicy: {msg}"


def evicted(reason: str, message: str) -> dict:
    # Built from the API reference (PodCondition type DisruptionTarget, k8s >= 1.26) on top of
    # the real running pod: no real dump of a disrupted pod was found.
    pod = labelled(load("pod-running.yaml"))
    pod["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": reason,
                                        "message": message, "lastTransitionTime": "2026-01-13T18:41:00Z"})
    pod["status"]["phase"] = "Failed"
    return pod


@pytest.mark.parametrize("reason, message, prefix", [
    ("EvictionByEvictionAPI", "Eviction API: evicting", "evicted: EvictionByEvictionAPI"),
    ("PreemptionByScheduler", "Kubernetes Scheduler: preempting to accommodate a higher priority pod", "preempted"),
    ("DeletionByTaintManager", "Taint manager: deleting due to NoExecute taint", "node lost or tainted"),
    ("DeletionByPodGC", "PodGC: node no longer exists", "node lost"),
    ("TerminationByKubelet", "The node was low on resource: memory.", "evicted by the node"),
])
def test_disrupted_pods_are_not_failures(reason, message, prefix):
    for event_type in (UPDATE, DELETE):
        obs = observe(event_type, evicted(reason, message))
        assert obs.what == "disrupted" and obs.reason.startswith(prefix) and message in obs.reason
        assert obs.job_id == JOB_ID and obs.node_name == "datagen-1-34"


def test_kubelet_eviction_and_node_lost_without_condition():
    # Older kubelets (no DisruptionTarget) only set status.reason; built from the API reference.
    pod = labelled(load("pod-running.yaml"))
    pod["status"].update(phase="Failed", reason="Evicted",
                         message="The node was low on resource: ephemeral-storage.")
    assert observe(UPDATE, pod).what == "disrupted"
    pod["status"].update(phase="Failed", reason="OutOfnvidia.com/gpu", message="Node didn't have enough resource")
    obs = observe(UPDATE, pod)
    assert obs.what == "disrupted" and obs.reason.startswith("rejected by the node before it started")
    pod["status"] = {"phase": "Unknown"}
    assert observe(UPDATE, pod).what == "disrupted"


def test_pod_deletion_without_disruption_means_nothing():
    assert observe(DELETE, labelled(load("pod-running.yaml"))) is None
    assert observe(DELETE, labelled(load("pod-failed-exitcode.yaml"))) is None


def test_pod_deadline_and_starting_states():
    pod = labelled(load("pod-running.yaml"))
    pod["status"] = {"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active on the node longer than the specified deadline"}
    assert observe(UPDATE, pod).reason == "deadline exceeded (activeDeadlineSeconds)"
    pod["status"] = {"phase": "Pending", "containerStatuses": [{"name": "main", "state": {"waiting": {"reason": "ContainerCreating"}}}]}
    obs = observe(UPDATE, pod)
    assert (obs.what, obs.reason, obs.problem) == ("pending", "starting (ContainerCreating)", False)
    pod["status"]["containerStatuses"][0]["state"]["waiting"] = {"reason": "CreateContainerConfigError",
                                                                 "message": 'secret "x" not found'}
    obs = observe(UPDATE, pod)
    assert obs.problem and obs.reason == 'cannot start: CreateContainerConfigError: secret "x" not found'


def not_ready(node: dict) -> dict:
    # Built from the API reference (NodeCondition Ready=False, reason KubeletNotReady):
    # the only real NotReady node found was kubectl describe text.
    node = copy.deepcopy(node)
    for c in node["status"]["conditions"]:
        if c["type"] == "Ready":
            c.update(status="False", reason="KubeletNotReady",
                     message="container runtime network not ready: NetworkReady=false")
    return node


def cordoned(node: dict) -> dict:
    # Built from the API reference (NodeSpec.unschedulable and the taint kubectl cordon adds).
    node = copy.deepcopy(node)
    node["spec"]["unschedulable"] = True
    node["spec"]["taints"] = [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule",
                               "timeAdded": "2024-12-19T03:00:00Z"}]
    return node


def test_node_states_and_transitions():
    gpu = load("node-gpu.yaml")
    down, fenced = not_ready(gpu), cordoned(gpu)
    assert node_state(gpu)[0] == "ready" and node_state(down)[0] == "notready" and node_state(fenced)[0] == "cordoned"
    # without history an update reports the current state
    assert observe(UPDATE, gpu).what == "node-ready"
    obs = observe(UPDATE, down)
    assert (obs.what, obs.node_state, obs.job_id) == ("node-notready", "notready", None)
    assert obs.reason.startswith("NotReady: KubeletNotReady: container runtime network not ready")
    assert observe(UPDATE, fenced).what == "node-cordoned"
    # with the previous state: transitions, and nothing for a refresh that changes nothing
    assert observe(UPDATE, gpu, previous_node_state="cordoned").what == "node-uncordoned"
    assert observe(UPDATE, gpu, previous_node_state="notready").what == "node-ready"
    assert observe(UPDATE, fenced, previous_node_state="ready").what == "node-cordoned"
    assert observe(UPDATE, down, previous_node_state="cordoned").what == "node-notready"
    assert observe(UPDATE, gpu, previous_node_state="ready") is None
    assert observe(UPDATE, down, previous_node_state="notready") is None
    removed = observe(DELETE, gpu)
    assert (removed.what, removed.deleted, removed.node_name) == ("node-removed", True, "ip-172-31-21-92")


def test_foreign_or_malformed_input_is_ignored():
    pod = load("pod-running.yaml")
    assert observe("io.sentinels.job.queued", labelled(pod)) is None
    assert observe(UPDATE, "not an object") is None
    assert observe(UPDATE, {"kind": "Deployment", "metadata": {}}) is None
    assert observe(UPDATE, labelled(pod, job_id="NOT-A-JOB-ID")).job_id is None
    assert observe(UPDATE, {"kind": "Pod"}) is None  # no status at all: nothing to say


def test_a_pod_killed_because_it_was_deleted_leaves_the_verdict_to_its_job():
    """Deadline, cancel, requeue: the Job controller or sentinels deleted the pod; its exit code
    (SIGTERM) is not the job's failure. Built from a real dump plus a deletionTimestamp."""
    pod = labelled(load("pod-failed-exitcode.yaml"))
    pod["metadata"]["deletionTimestamp"] = "2026-01-13T18:45:00Z"
    assert observe(UPDATE, pod) is None
    evicted = copy.deepcopy(pod)  # an eviction also deletes, but says so: still a disruption
    evicted["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True",
                                            "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"})
    assert observe(UPDATE, evicted).what == "disrupted"
