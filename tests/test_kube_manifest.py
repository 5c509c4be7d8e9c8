"""The Kubernetes objects of a job: strictly valid for Kubernetes 1.31, and a whitelist.

Every generated Job and ConfigMap goes through kubernetes-validate (strict: unknown fields
fail), then the tests check what Kubernetes Jobs need and that nothing from the spec can
reach a privileged pod field.
"""

import copy

import kubernetes_validate
import pytest
import yaml

from sentinels.adapters.kube_manifest import KubeConfig, job_objects, label_value, owned_by
from sentinels.domain.errors import ConfigError, InvalidSpec
from sentinels.domain.job import new_record
from sentinels.domain.spec import validate

NOW = "2026-11-28T05:10:28.102Z"
WHO = {"user": "alice@example.com", "team": "vision"}
FULL_CFG = {"namespace": "ml", "ttl_seconds_after_finished": 600,
            "data_volume": {"root": "/datasets", "claim": "datasets"},
            "outputs_volume": {"claim": "outputs"}, "image_pull_secrets": ["regcred"]}
NFS_CFG = {"data_volume": {"root": "/datasets", "nfs": {"server": "nfs.example.internal", "path": "/export/data"}}}


def make_record(job_id="ab2cd3ef4g", klass="high", attempts=0, **spec):
    raw = {"image": "ghcr.io/acme/resnet:1.4", **spec}
    record = new_record(job_id=job_id, spec=validate(raw), who=WHO, klass=klass, now=NOW, queue_seq=3)
    record["attempts"] = attempts
    return record


CASES = {
    "gpu": (dict(resources={"cpu": 4, "memory": "16Gi", "gpu": 2}, command=["python", "train.py"]), FULL_CFG),
    "cpu-only": (dict(resources={"cpu": "500m", "memory": "1Gi"}, args=["--lr", 0.01]), {}),
    "data+outputs-pvc": (dict(data="/datasets/imagenet/train", outputs="/outputs", retries=2), FULL_CFG),
    "data-nfs-root": (dict(data="/datasets"), NFS_CFG),
    "timeout": (dict(timeout="2h"), {}),
    "labels+selector": (dict(labels={"team": "vision", "exp": "a1"}, node_selector={"gpu-type": "a100"},
                             env={"EPOCHS": 10}), FULL_CFG),
}


def build(case):
    spec, cfg = CASES[case]
    record = make_record(**spec)
    cfg = KubeConfig.from_dict(cfg)
    return record, cfg, job_objects(record, {"MLFLOW_RUN_ID": "r-123", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}, cfg)


def walk(obj, path=""):
    """Yield (path, key, value) for every mapping entry in a nested structure."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield path, k, v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk(v, f"{path}[{i}]")


@pytest.fixture
def big_configs(monkeypatch):
    """Every job's YAML counts as too large for an annotation: it goes into a ConfigMap."""
    from sentinels.adapters import kube_manifest

    monkeypatch.setattr(kube_manifest, "INLINE_CONFIG_BYTES", 0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_objects_validate_strictly(case):
    _, _, (cm, job) = build(case)
    assert cm is None  # the job's YAML rides on the pod: one object, one API call
    kubernetes_validate.validate(job, "1.31", strict=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_config_too_large_for_an_annotation_goes_into_a_config_map(case, big_configs):
    record, _, (cm, job) = build(case)
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == job["metadata"]["name"] == record["k8s_job"]
    assert "sentinels.io/config" not in job["spec"]["template"]["metadata"]["annotations"]
    pod = job["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    config_dir, _, key = env["SENTINELS_CONFIG"].rpartition("/")
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == config_dir)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"] == {"name": cm["metadata"]["name"], "defaultMode": 0o444,
                                   "items": [{"key": key, "path": key}]}
    assert yaml.safe_load(cm["data"][key]) == record["spec"]
    assert cm["immutable"] is True and cm["metadata"]["labels"]["sentinels.io/job-id"] == record["id"]
    for obj in (cm, job):
        kubernetes_validate.validate(obj, "1.31", strict=True)


def test_the_inline_limit_leaves_room_under_the_api_servers_annotation_limit():
    from sentinels.adapters import kube_manifest

    record = make_record(env={"BLOB": "x" * 100_000})  # large, still inline
    cm, job = job_objects(record, {}, KubeConfig())
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert cm is None and 100_000 < len(annotations["sentinels.io/config"]) <= kube_manifest.INLINE_CONFIG_BYTES
    assert sum(len(k) + len(v) for k, v in annotations.items()) < 256 * 1024  # what the API server accepts
    cm, job = job_objects(make_record(env={"BLOB": "x" * 100_000, "MORE": "y" * 40_000}), {}, KubeConfig())
    assert cm is not None and "sentinels.io/config" not in job["spec"]["template"]["metadata"]["annotations"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_job_shape_follows_design(case):
    record, cfg, (_, job) = build(case)
    spec = record["spec"]
    assert job["metadata"]["name"] == record["k8s_job"] == f"sentinels-{record['id']}"
    assert job["metadata"]["namespace"] == cfg.namespace
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    for labels in (job["metadata"]["labels"], pod_labels):
        assert labels["sentinels.io/job-id"] == record["id"]
        assert labels["sentinels.io/priority"] == "high"
        assert labels["sentinels.io/owner"] == "alice-example.com"
        assert labels["app.kubernetes.io/managed-by"] == "sentinels"
        for k, v in spec["labels"].items():
            assert labels[k] == v
    js = job["spec"]
    assert js["backoffLimit"] == spec["retries"]
    assert js["ttlSecondsAfterFinished"] == cfg.ttl_seconds_after_finished
    assert js["podFailurePolicy"] == {"rules": [{"action": "Ignore",
                                                 "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}
    assert js.get("activeDeadlineSeconds") == spec["timeout_seconds"]
    pod = js["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod.get("nodeSelector", {}) == spec["node_selector"]
    (c,) = pod["containers"]
    assert c["image"] == spec["image"]
    assert c["resources"]["requests"] == c["resources"]["limits"]
    assert c["resources"]["requests"]["cpu"] == spec["resources"]["cpu"]
    assert c["resources"]["requests"]["memory"] == spec["resources"]["memory"]
    gpu = spec["resources"]["gpu"]
    if gpu:
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpu)
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    else:
        assert "nvidia.com/gpu" not in c["resources"]["limits"] and "tolerations" not in pod
    assert ("command" in c) == bool(spec["command"]) and c.get("command", []) == spec["command"]
    assert c.get("args", []) == spec["args"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["SENTINELS_JOB_ID"] == record["id"]
    assert env["MLFLOW_RUN_ID"] == "r-123" and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    for k, v in spec["env"].items():
        assert env[k] == v
    # the spec is mounted where SENTINELS_CONFIG says, from the pod's own annotation
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_dir, _, key = env["SENTINELS_CONFIG"].rpartition("/")
    assert mounts[config_dir]["readOnly"] is True
    config_volume = volumes[mounts[config_dir]["name"]]
    assert config_volume["downwardAPI"] == {"defaultMode": 0o444, "items": [
        {"path": key, "fieldRef": {"fieldPath": "metadata.annotations['sentinels.io/config']"}}]}
    assert yaml.safe_load(js["template"]["metadata"]["annotations"]["sentinels.io/config"]) == spec
    assert "sentinels.io/config" not in job["metadata"]["annotations"]  # on the pod, not twice


def test_data_store_is_read_only_with_subpath_and_outputs_per_job():
    record, _, (_, job) = build("data+outputs-pvc")
    pod = job["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["data"] == {"name": "data", "mountPath": "/datasets/imagenet/train", "readOnly": True,
                              "subPath": "imagenet/train"}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "datasets", "readOnly": True}
    assert mounts["outputs"] == {"name": "outputs", "mountPath": "/outputs", "subPath": record["id"]}
    assert volumes["outputs"]["persistentVolumeClaim"] == {"claimName": "outputs"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


def test_nfs_data_root_and_empty_dir_outputs():
    _, _, (_, job) = build("data-nfs-root")
    pod = job["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["nfs"] == {"server": "nfs.example.internal", "path": "/export/data", "readOnly": True}
    assert mounts["data"] == {"name": "data", "mountPath": "/datasets", "readOnly": True}  # the root: no subPath
    assert volumes["outputs"] == {"name": "outputs", "emptyDir": {}}


PRIVILEGED_KEYS = {"hostPath", "hostNetwork", "hostPID", "hostIPC", "hostUsers", "hostAliases", "serviceAccountToken",
                   "hostPort", "add", "procMount", "runAsUser", "privileged", "allowPrivilegeEscalation"}
POD_KEYS = {"restartPolicy", "automountServiceAccountToken", "enableServiceLinks", "securityContext", "containers",
            "volumes", "imagePullSecrets", "nodeSelector", "tolerations", "serviceAccountName"}
CONTAINER_KEYS = {"name", "image", "command", "args", "env", "resources", "volumeMounts", "securityContext"}


def test_hostile_record_cannot_reach_privileged_pod_fields():
    """Junk smuggled into a stored spec (bypassing validation) is simply not used."""
    record = make_record(resources={"gpu": 1})
    record["spec"].update(hostNetwork=True, privileged=True, volumes=[{"name": "root", "hostPath": {"path": "/"}}],
                          serviceAccountName="admin", securityContext={"privileged": True}, hostPID=True)
    _, job = job_objects(record, {}, KubeConfig.from_dict(FULL_CFG))
    pod = job["spec"]["template"]["spec"]
    assert set(pod) <= POD_KEYS and set(pod["containers"][0]) <= CONTAINER_KEYS
    found = {(k, repr(v)) for _, k, v in walk(pod) if k in PRIVILEGED_KEYS}
    assert found == {("privileged", "False"), ("allowPrivilegeEscalation", "False")}
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "serviceAccountName" not in pod


def test_spec_validation_rejects_privileged_fields_outright():
    for key in ("hostNetwork", "privileged", "volumes", "serviceAccountName"):
        with pytest.raises(InvalidSpec) as e:
            validate({"image": "ghcr.io/acme/x:1", key: True})
        assert key in e.value.message


def test_attempt_annotation_and_owner_label_sanitised():
    record = make_record(attempts=2)
    record["owner"] = "Dr. Ünïcode <" + "x" * 100 + ">"
    _, job = job_objects(record, {}, KubeConfig())
    owner = job["metadata"]["labels"]["sentinels.io/owner"]
    assert len(owner) <= 63 and owner[0].isalnum() and owner[-1].isalnum()
    assert job["metadata"]["annotations"]["sentinels.io/attempt"] == "2"
    assert job["spec"]["template"]["metadata"]["annotations"]["sentinels.io/attempt"] == "2"
    kubernetes_validate.validate(job, "1.31", strict=True)
    assert label_value("--a@b--") == "a-b" and label_value(None) == ""


def test_run_as_non_root_and_service_account_from_config():
    cfg = KubeConfig.from_dict({"run_as_non_root": True, "service_account": "sentinels-jobs"})
    _, job = job_objects(make_record(), {}, cfg)
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == "sentinels-jobs" and pod["automountServiceAccountToken"] is False
    kubernetes_validate.validate(job, "1.31", strict=True)


def test_owned_by_adds_owner_reference(big_configs):
    cm, job = job_objects(make_record(), {}, KubeConfig())
    created = copy.deepcopy(job)
    created["metadata"]["uid"] = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    owned = owned_by(cm, created)
    assert owned["metadata"]["ownerReferences"] == [{
        "apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
        "uid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "controller": False, "blockOwnerDeletion": False}]
    assert "ownerReferences" not in cm["metadata"]  # a copy
    kubernetes_validate.validate(owned, "1.31", strict=True)


@pytest.mark.parametrize("spec, cfg, field", [
    (dict(data="/datasets/x"), {}, "data"),  # no data store configured
    (dict(data="/datasets/x"), {"data_volume": {"root": "/datasets/other", "claim": "d"}}, "data"),
    (dict(outputs="/etc/sentinels"), {}, "outputs"),  # would hide the job configuration
    (dict(data="/datasets/x", outputs="/datasets/x"), {"data_volume": {"claim": "d"}}, "outputs"),
])
def test_records_that_cannot_run_here_get_a_clear_error(spec, cfg, field):
    with pytest.raises(InvalidSpec) as e:
        job_objects(make_record(**spec), {}, KubeConfig.from_dict(cfg))
    assert e.value.field == field


def test_malformed_records_are_refused():
    record = make_record()
    with pytest.raises(InvalidSpec, match="job id"):
        job_objects({**record, "id": "NOT-AN-ID"}, {}, KubeConfig())
    with pytest.raises(InvalidSpec, match="k8s_job"):
        job_objects({**record, "k8s_job": "something-else"}, {}, KubeConfig())
    with pytest.raises(InvalidSpec, match="image"):
        job_objects({**record, "spec": {**record["spec"], "image": ""}}, {}, KubeConfig())
    with pytest.raises(InvalidSpec, match="environment variable"):
        job_objects(record, {"NOT VALID": "x"}, KubeConfig())


def test_config_defaults():
    cfg = KubeConfig.from_dict(None)
    assert (cfg.namespace, cfg.ttl_seconds_after_finished, cfg.data_volume, cfg.outputs_claim) == ("default", 3600, None, None)
    assert KubeConfig.from_dict({"outputs_volume": "outs"}).outputs_claim == "outs"


@pytest.mark.parametrize("raw, needle", [
    ("not a mapping", "expected a mapping"),
    ({"namspace": "x"}, "unknown key(s) namspace"),
    ({"namespace": "Bad_NS"}, "kubernetes.namespace"),
    ({"ttl_seconds_after_finished": -1}, "kubernetes.ttl_seconds_after_finished"),
    ({"ttl_seconds_after_finished": "1h"}, "kubernetes.ttl_seconds_after_finished"),
    ({"data_volume": {"claim": "a", "nfs": {"server": "s", "path": "/p"}}}, "exactly one of claim"),
    ({"data_volume": {}}, "exactly one of claim"),
    ({"data_volume": {"claim": "a", "root": "relative"}}, "kubernetes.data_volume.root"),
    ({"data_volume": {"nfs": {"server": "s"}}}, "kubernetes.data_volume.nfs"),
    ({"data_volume": {"nfs": {"server": "s; rm", "path": "/p"}}}, "nfs.server"),
    ({"outputs_volume": {"pvc": "x"}}, "kubernetes.outputs_volume"),
    ({"image_pull_secrets": "regcred"}, "kubernetes.image_pull_secrets"),
    ({"run_as_non_root": "yes"}, "kubernetes.run_as_non_root"),
    ({"host": "localhost:6443"}, "kubernetes.host"),
    ({"request_timeout": 0}, "kubernetes.request_timeout"),
])
def test_bad_configuration_is_a_clear_config_error(raw, needle):
    with pytest.raises(ConfigError) as e:
        KubeConfig.from_dict(raw)
    assert needle in e.value.message


def test_a_requeued_attempt_runs_under_its_own_job_name():
    """A requeued job's record names its attempt's Job (sentinels-<id>-a2); this used to be refused."""
    record = make_record(attempts=2)
    record["k8s_job"] = f"sentinels-{record['id']}-a2"
    _, job = job_objects(record, {}, KubeConfig())
    assert job["metadata"]["name"] == record["k8s_job"]
    with pytest.raises(InvalidSpec, match="k8s_job"):
        job_objects({**record, "k8s_job": f"sentinels-{record['id']}-ax"}, {}, KubeConfig())
