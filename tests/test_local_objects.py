"""The local executor's Job/Pod objects and CloudEvents against real dumps from real clusters
(tests/fixtures/kubernetes, each file names its source) and the Kubernetes 1.31 schema."""

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from sentinels.domain import local_objects as lo
from sentinels.domain import observe as ob
from sentinels.domain.spec import DNS1123_LABEL

FIXTURES = Path(__file__).parent / "fixtures" / "kubernetes"
T0, T1, T2 = "2026-11-28T05:10:28.102Z", "2026-11-28T05:10:29.500Z", "2026-11-28T05:11:02.999Z"


def fixture(name: str) -> dict:
    return yaml.safe_load((FIXTURES / name).read_text())


def record(**spec_changes) -> dict:
    spec = {"image": "ghcr.io/acme/resnet:1.4", "name": "resnet", "command": ["python", "train.py"], "args": ["--lr", "0.01"],
            "env": {"EPOCHS": "10"}, "resources": {"cpu": "2", "memory": "4Gi", "gpu": 1, "cpu_millis": 2000,
                                                   "memory_bytes": 4 * 2**30},
            "priority": "high", "timeout_seconds": 7200, "retries": 1, "node_selector": {}, "labels": {"team": "vision"}}
    spec.update(spec_changes)
    return {"id": "ab2cd3ef4g", "name": "resnet", "owner": "alice@example.com", "priority": "high", "attempts": 1,
            "k8s_job": "sentinels-ab2cd3ef4g", "spec": spec}


def valid(obj: dict) -> dict:
    kubernetes_validate.validate(obj, "1.31", strict=True)
    return obj


def condition_shape(cond: dict) -> tuple:
    return cond["type"], cond["status"], cond.get("reason"), cond.get("message"), tuple(sorted(cond))


def test_succeeded_job_has_the_conditions_kubernetes_writes():
    real = fixture("job-succeeded.yaml")
    ours = valid(lo.job_object(record(), {"created": T0, "started": T0, "finished": T2, "succeeded": 1,
                                          "outcome": "Complete", "resource_version": 7}))
    assert [condition_shape(c) for c in ours["status"]["conditions"]] == \
        [condition_shape(c) for c in real["status"]["conditions"]]
    assert ours["status"]["completionTime"] == "2026-11-28T05:11:02Z" and ours["status"]["startTime"] == "2026-11-28T05:10:28Z"
    assert set(ours["status"]) == set(real["status"])
    assert ours["status"]["succeeded"] == 1 and "active" not in ours["status"]
    assert ours["metadata"]["resourceVersion"] == "7" and ours["metadata"]["namespace"] == "local"
    assert ours["metadata"]["name"] == "sentinels-ab2cd3ef4g"
    labels = ours["metadata"]["labels"]
    assert labels["sentinels.io/job-id"] == "ab2cd3ef4g" and labels["app.kubernetes.io/managed-by"] == "sentinels"
    assert labels["batch.kubernetes.io/job-name"] == "sentinels-ab2cd3ef4g" and labels["team"] == "vision"
    assert labels["sentinels.io/owner"] == "alice-example.com"  # made a valid label value
    uid = ours["metadata"]["uid"]
    assert ours["spec"]["selector"]["matchLabels"] == {"batch.kubernetes.io/controller-uid": uid}
    assert ours["spec"]["backoffLimit"] == 1 and ours["spec"]["activeDeadlineSeconds"] == 7200
    container = ours["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "train.py"] and container["args"] == ["--lr", "0.01"]
    assert container["resources"]["limits"] == container["resources"]["requests"] == \
        {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}


def test_failed_job_matches_the_backoff_limit_dump():
    real = fixture("job-failed-backofflimit.yaml")
    real_failed = next(c for c in real["status"]["conditions"] if c["type"] == "Failed")
    ours = valid(lo.job_object(record(), {"created": T0, "started": T0, "finished": T2, "failed": 2,
                                          "outcome": "Failed", "reason": lo.BACKOFF_REASON, "message": lo.BACKOFF_MESSAGE}))
    failed = next(c for c in ours["status"]["conditions"] if c["type"] == "Failed")
    assert condition_shape(failed) == condition_shape(real_failed)
    # Kubernetes >= 1.31 writes FailureTarget first, as it writes SuccessCriteriaMet before Complete
    assert [c["type"] for c in ours["status"]["conditions"]] == ["FailureTarget", "Failed"]
    assert ours["status"]["failed"] == 2 and "completionTime" not in ours["status"]  # only success sets it


def test_deadline_and_local_only_failures():
    # no real dump of a Job failed on its deadline exists; reason and message from the Job controller's source
    deadline = valid(lo.job_object(record(), {"created": T0, "started": T0, "finished": T2, "failed": 1, "outcome": "Failed",
                                              "reason": lo.DEADLINE_REASON, "message": lo.DEADLINE_MESSAGE}))
    failed = deadline["status"]["conditions"][-1]
    assert (failed["type"], failed["reason"], failed["message"]) == \
        ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
    stopped = valid(lo.job_object(record(), {"created": T0, "outcome": "Failed", "reason": lo.STOPPED_REASON,
                                             "message": lo.STOPPED_MESSAGE, "finished": T1}))
    assert stopped["status"]["conditions"][-1]["message"] == "stopped"


def test_running_job_counts_its_pod():
    ours = valid(lo.job_object(record(timeout_seconds=None, retries=0),
                               {"created": T0, "started": T1, "active": 1, "ready": 1}))
    assert ours["status"]["active"] == 1 and ours["status"]["ready"] == 1 and "conditions" not in ours["status"]
    assert "activeDeadlineSeconds" not in ours["spec"] and ours["spec"]["backoffLimit"] == 0


def test_uids_are_stable_per_run_and_new_for_a_requeued_run():
    info = {"created": T0}
    first, again = lo.job_object(record(), info), lo.job_object(record(), info)
    requeued = lo.job_object(record(), {**info, "generation": 1})
    assert first["metadata"]["uid"] == again["metadata"]["uid"] != requeued["metadata"]["uid"]
    names = {lo.pod_name(record(), n) for n in range(1, 30)}
    assert len(names) == 29 and all(DNS1123_LABEL.match(n) and n.startswith("sentinels-ab2cd3ef4g-") for n in names)


def pod(phase: str, **info) -> dict:
    base = {"created": T0, "started": T1, "finished": T2, "phase": phase, "pid": 4242, "resource_version": 9}
    return valid(lo.pod_object(record(), 1, {**base, **info}))


def test_running_pod_matches_the_real_one():
    real, ours = fixture("pod-running.yaml"), pod("Running")
    assert ours["status"]["phase"] == "Running" and ours["spec"]["nodeName"] == "local"
    assert [c["type"] for c in ours["status"]["conditions"]] == [c["type"] for c in real["status"]["conditions"]]
    assert all(c["status"] == "True" for c in ours["status"]["conditions"])
    assert set(ours["status"]["containerStatuses"][0]["state"]) == {"running"} == set(real["status"]["containerStatuses"][0]["state"])
    assert ours["status"]["containerStatuses"][0]["state"]["running"]["startedAt"] == "2026-11-28T05:10:29Z"
    real_labels, labels = real["metadata"]["labels"], ours["metadata"]["labels"]
    for key in ("batch.kubernetes.io/controller-uid", "batch.kubernetes.io/job-name", "controller-uid", "job-name"):
        assert key in real_labels and key in labels
    assert labels["batch.kubernetes.io/job-name"] == "sentinels-ab2cd3ef4g" and labels["sentinels.io/job-id"] == "ab2cd3ef4g"
    job_uid = lo.job_object(record(), {"created": T0})["metadata"]["uid"]
    (owner,) = ours["metadata"]["ownerReferences"]
    assert set(owner) == set(real["metadata"]["ownerReferences"][0])
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("Job", "sentinels-ab2cd3ef4g", job_uid, True)
    assert labels["batch.kubernetes.io/controller-uid"] == job_uid
    assert ours["metadata"]["finalizers"] == real["metadata"]["finalizers"]


@pytest.mark.parametrize("phase, code, reason, dump", [("Succeeded", 0, "Completed", "pod-succeeded.yaml"),
                                                       ("Failed", 42, "Error", "pod-failed-exitcode.yaml")])
def test_finished_pods_match_the_real_ones(phase, code, reason, dump):
    real, ours = fixture(dump), pod(phase, exit_code=code)
    real_term = real["status"]["containerStatuses"][0]["state"]["terminated"]
    term = ours["status"]["containerStatuses"][0]["state"]["terminated"]
    assert set(term) == set(real_term)
    assert (term["exitCode"], term["reason"]) == (real_term["exitCode"], real_term["reason"]) == (code, reason)
    assert (term["startedAt"], term["finishedAt"]) == ("2026-11-28T05:10:29Z", "2026-11-28T05:11:02Z")
    assert [condition_shape(c)[:3] for c in ours["status"]["conditions"]] == \
        [condition_shape(c)[:3] for c in real["status"]["conditions"]]
    assert ours["status"]["phase"] == real["status"]["phase"] == phase
    assert "finalizers" not in ours["metadata"] and "finalizers" not in real["metadata"]


def test_a_pod_nobody_saw_end_reads_like_the_kubelet_reports_it():
    term = pod("Failed", exit_code=None)["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (137, "ContainerStatusUnknown")
    assert term["message"] == "The container could not be located when the pod was terminated"


def parse_event_display(text: str) -> dict:
    """The context attributes and extensions of an event_display printout."""
    attrs = {}
    for line in text.split("Data,")[0].splitlines():
        m = re.match(r"^  ([a-z]+): (.+)$", line)
        if m:
            attrs[m.group(1)] = m.group(2)
    return attrs


def test_events_have_the_apiserversource_shape():
    real = parse_event_display((FIXTURES / "apiserversource-event.txt").read_text())
    job = lo.job_object(record(), {"created": T0, "resource_version": 3})
    event = lo.apiserver_event("update", job, T1)
    assert set(real) - {"validation"} <= set(event) and set(event) - {"data"} <= set(real)
    assert event["type"] == real["type"] == "dev.knative.apiserver.resource.update"
    assert event["specversion"] == real["specversion"] and event["datacontenttype"] == real["datacontenttype"]
    assert event["subject"] == "/apis/batch/v1/namespaces/local/jobs/sentinels-ab2cd3ef4g"
    assert (event["kind"], event["name"], event["namespace"]) == ("Job", "sentinels-ab2cd3ef4g", "local")
    assert event["source"] == "sentinels/local-executor" and event["data"] == job and event["time"] == T1
    p = pod("Running")
    pod_event = lo.apiserver_event(lo.APISERVER_ADD, p, T1)
    assert pod_event["subject"] == f"/api/v1/namespaces/local/pods/{p['metadata']['name']}"
    assert pod_event["type"] == "dev.knative.apiserver.resource.add" and pod_event["kind"] == "Pod"
    # one id per change: the same change re-sent keeps it, another change or type gets another
    later = lo.job_object(record(), {"created": T0, "resource_version": 4})
    ids = {event["id"], lo.apiserver_event("update", job, T2)["id"], lo.apiserver_event("update", later, T1)["id"],
           lo.apiserver_event("add", job, T1)["id"], pod_event["id"]}
    assert len(ids) == 4
    with pytest.raises(ValueError, match="add, update or delete"):
        lo.apiserver_event("patch", job, T1)


def test_the_lifecycle_reads_local_objects_like_cluster_ones():
    """One code path: observe() understands what the executor emits, attempt included."""
    def seen(kind: str, obj: dict):
        return ob.observe(lo._EVENT_TYPES[kind], obj)

    job = lo.job_object(record(), {"generation": 2, "created": T0, "outcome": "Failed", "finished": T2,
                                   "reason": lo.DEADLINE_REASON, "message": lo.DEADLINE_MESSAGE})
    got = seen("update", job)
    assert (got.what, got.job_id, got.attempt, got.name) == (ob.FAILED, "ab2cd3ef4g", 2, "sentinels-ab2cd3ef4g")
    assert "deadline" in got.reason
    assert job["spec"]["template"]["metadata"]["annotations"] == {"sentinels.io/attempt": "2"}
    done = seen("update", lo.job_object(record(), {"generation": 1, "created": T0, "outcome": "Complete", "finished": T2}))
    assert (done.what, done.attempt) == (ob.SUCCEEDED, 1)
    running = seen("add", pod("Running", generation=1))
    assert (running.what, running.node_name, running.attempt) == (ob.RUNNING, "local", 1)
    failed = seen("update", pod("Failed", generation=1, exit_code=3))
    assert (failed.what, failed.exit_code, failed.reason) == (ob.FAILED, 3, "exit code 3")
    stopped = seen("update", lo.job_object(record(), {"created": T0, "outcome": "Failed", "finished": T2,
                                                      "reason": lo.STOPPED_REASON, "message": lo.STOPPED_MESSAGE}))
    assert stopped.what == ob.FAILED and "stopped" in stopped.reason
