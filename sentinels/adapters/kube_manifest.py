"""The Kubernetes objects for one job, built from its record without I/O.

Kept apart from the API calls so the whitelist can be read and tested on its own: only
the fields written here reach the pod. Nothing from the spec can ask for a hostPath,
host networking, privilege or a service-account token; the data store and the outputs
volume come from the cluster configuration (`KubeConfig`), never from the spec.
"""

import posixpath
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..domain import quantity
from ..domain.errors import ConfigError, InvalidSpec
from ..domain.job import base_labels, is_job_id
from ..domain.names import (ATTEMPT_ANNOTATION, CONTAINER, JOB_ID_LABEL, JOB_NAME_LABEL, MANAGED_BY,  # noqa: F401
                            MANAGED_BY_LABEL, is_job_name, job_name)
from ..domain.placement import GPU_TAINT
from ..domain.registries import Registries
from ..domain.spec import DNS1123_LABEL, ENV_NAME, config_of, label_value

CONFIG_KEY = "job.yaml"
# The job's YAML rides on its pod as this annotation, projected into the container as the file
# SENTINELS_CONFIG names (a downward API volume): one API call per launch instead of a
# ConfigMap and a Job. A larger file (the API server allows 256 KiB of annotations per object)
# still goes into a ConfigMap of its own.
CONFIG_ANNOTATION = "sentinels.io/config"
INLINE_CONFIG_BYTES = 128 * 1024
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class DataVolume:
    """The shared data store, mounted read-only; spec `data` paths are relative to `root`."""

    root: str  # e.g. /datasets: spec data /datasets/imagenet -> subPath imagenet
    claim: Optional[str] = None  # a PersistentVolumeClaim name ...
    nfs_server: Optional[str] = None  # ... or an NFS export
    nfs_path: Optional[str] = None


@dataclass(frozen=True)
class KubeConfig:
    """Cluster-side settings for the Kubernetes backend (the `kubernetes:` configuration block)."""

    namespace: str = "default"
    ttl_seconds_after_finished: int = 3600
    data_volume: Optional[DataVolume] = None
    outputs_claim: Optional[str] = None  # PVC for outputs (subPath = job id); emptyDir when unset
    image_pull_secrets: tuple[str, ...] = ()  # for every job, whatever its registry
    registries: Registries = Registries()  # per registry host (`registries:`): the platform picks the Secret
    service_account: Optional[str] = None  # its token is never mounted
    run_as_non_root: bool = False  # most ML images run as root; opt in per cluster
    config_dir: str = "/etc/sentinels"  # where job.yaml is mounted (SENTINELS_CONFIG)
    # how the adapter reaches the API server: explicit host, else in-cluster, else kubeconfig
    host: Optional[str] = None
    kubeconfig: Optional[str] = None
    context: Optional[str] = None
    request_timeout: float = 10.0

    KEYS = ("namespace", "ttl_seconds_after_finished", "data_volume", "outputs_volume",
            "image_pull_secrets", "service_account", "run_as_non_root", "config_dir",
            "host", "kubeconfig", "context", "request_timeout")

    @classmethod
    def from_dict(cls, raw: Optional[Mapping]) -> "KubeConfig":
        """Validate a configuration mapping; raise ConfigError naming the bad key."""
        raw = {} if raw is None else raw
        if not isinstance(raw, Mapping):
            raise ConfigError(f"kubernetes: expected a mapping, got {type(raw).__name__}")
        unknown = sorted(str(k) for k in raw if k not in cls.KEYS)
        if unknown:
            raise ConfigError(f"kubernetes: unknown key(s) {', '.join(unknown)} (known: {', '.join(cls.KEYS)})")
        kw: dict[str, Any] = {}
        if raw.get("namespace") is not None:
            kw["namespace"] = _dns_name(raw["namespace"], "namespace", label=True)
        if raw.get("ttl_seconds_after_finished") is not None:
            kw["ttl_seconds_after_finished"] = _whole(raw["ttl_seconds_after_finished"], "ttl_seconds_after_finished")
        if raw.get("data_volume") is not None:
            kw["data_volume"] = _data_volume(raw["data_volume"])
        if raw.get("outputs_volume") is not None:
            kw["outputs_claim"] = _outputs_claim(raw["outputs_volume"])
        secrets = raw.get("image_pull_secrets")
        if secrets is not None:
            if isinstance(secrets, str) or not isinstance(secrets, (list, tuple)):
                raise ConfigError("kubernetes.image_pull_secrets: expected a list of Secret names")
            kw["image_pull_secrets"] = tuple(_dns_name(s, "image_pull_secrets") for s in secrets)
        if raw.get("service_account") is not None:
            kw["service_account"] = _dns_name(raw["service_account"], "service_account")
        if raw.get("run_as_non_root") is not None:
            if not isinstance(raw["run_as_non_root"], bool):
                raise ConfigError("kubernetes.run_as_non_root: expected true or false")
            kw["run_as_non_root"] = raw["run_as_non_root"]
        if raw.get("config_dir") is not None:
            kw["config_dir"] = _abs_path(raw["config_dir"], "config_dir")
        for key in ("host", "kubeconfig", "context"):
            if raw.get(key) is not None:
                if not isinstance(raw[key], str) or not raw[key].strip():
                    raise ConfigError(f"kubernetes.{key}: expected a non-empty string")
                kw[key] = raw[key].strip()
        if kw.get("host") and not re.match(r"^https?://", kw["host"]):
            raise ConfigError(f"kubernetes.host: {kw['host']!r} must start with http:// or https://")
        if raw.get("request_timeout") is not None:
            t = raw["request_timeout"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 300:
                raise ConfigError(f"kubernetes.request_timeout: expected seconds between 0 and 300, got {t!r}")
            kw["request_timeout"] = float(t)
        return cls(**kw)


def _dns_name(value, key: str, label: bool = False) -> str:
    pattern, limit = (DNS1123_LABEL, 63) if label else (_DNS1123_SUBDOMAIN, 253)
    if not isinstance(value, str) or len(value) > limit or not pattern.match(value):
        raise ConfigError(f"kubernetes.{key}: {value!r} is not a valid Kubernetes name")
    return value


def _whole(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"kubernetes.{key}: expected a whole number of seconds >= 0, got {value!r}")
    return value


def _abs_path(value, key: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or ".." in value.split("/"):
        raise ConfigError(f"kubernetes.{key}: {value!r} must be an absolute path without '..'")
    return posixpath.normpath(value)


def _data_volume(raw) -> DataVolume:
    if not isinstance(raw, Mapping):
        raise ConfigError("kubernetes.data_volume: expected a mapping {root, claim} or {root, nfs: {server, path}}")
    unknown = sorted(str(k) for k in raw if k not in ("root", "claim", "nfs"))
    if unknown:
        raise ConfigError(f"kubernetes.data_volume: unknown key(s) {', '.join(unknown)} (known: root, claim, nfs)")
    root = _abs_path(raw.get("root", "/datasets"), "data_volume.root")
    if ("claim" in raw) == ("nfs" in raw):
        raise ConfigError("kubernetes.data_volume: give exactly one of claim (a PVC name) or nfs {server, path}")
    if "claim" in raw:
        return DataVolume(root=root, claim=_dns_name(raw["claim"], "data_volume.claim"))
    nfs = raw["nfs"]
    if not isinstance(nfs, Mapping) or set(nfs) != {"server", "path"}:
        raise ConfigError("kubernetes.data_volume.nfs: expected exactly {server, path}")
    server = nfs["server"]
    if not isinstance(server, str) or not re.match(r"^[A-Za-z0-9.:\[\]-]+$", server):
        raise ConfigError(f"kubernetes.data_volume.nfs.server: {server!r} is not a host name or address")
    return DataVolume(root=root, nfs_server=server, nfs_path=_abs_path(nfs["path"], "data_volume.nfs.path"))


def _outputs_claim(raw) -> str:
    if isinstance(raw, Mapping):
        if set(raw) != {"claim"}:
            raise ConfigError("kubernetes.outputs_volume: expected {claim: <PVC name>}")
        raw = raw["claim"]
    return _dns_name(raw, "outputs_volume.claim")


def _volumes(job_id: str, spec: dict, cfg: KubeConfig, config_name: Optional[str]) -> tuple[list, list]:
    """`config_name`: the ConfigMap holding the job's YAML; None: it is the pod's annotation."""
    if config_name is None:
        source = {"downwardAPI": {"defaultMode": 0o444, "items": [
            {"path": CONFIG_KEY, "fieldRef": {"fieldPath": f"metadata.annotations['{CONFIG_ANNOTATION}']"}}]}}
    else:
        source = {"configMap": {"name": config_name, "defaultMode": 0o444,
                                "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}]}}
    volumes = [{"name": "config", **source}]
    mounts = [{"name": "config", "mountPath": cfg.config_dir, "readOnly": True}]
    data = spec.get("data")
    if data:
        dv = cfg.data_volume
        if dv is None:
            raise InvalidSpec(f"data: {data!r} asked for, but no data store is configured on this cluster", "data")
        data = posixpath.normpath(data)
        if data != dv.root and not data.startswith(dv.root.rstrip("/") + "/"):
            raise InvalidSpec(f"data: {data!r} is outside the cluster's data store {dv.root}", "data")
        sub = posixpath.relpath(data, dv.root)
        source = ({"persistentVolumeClaim": {"claimName": dv.claim, "readOnly": True}} if dv.claim else
                  {"nfs": {"server": dv.nfs_server, "path": dv.nfs_path, "readOnly": True}})
        volumes.append({"name": "data", **source})
        mount = {"name": "data", "mountPath": data, "readOnly": True}
        if sub != ".":
            mount["subPath"] = sub
        mounts.append(mount)
    outputs = spec.get("outputs")
    if outputs:
        if cfg.outputs_claim:
            volumes.append({"name": "outputs", "persistentVolumeClaim": {"claimName": cfg.outputs_claim}})
            mounts.append({"name": "outputs", "mountPath": outputs, "subPath": job_id})
        else:
            volumes.append({"name": "outputs", "emptyDir": {}})
            mounts.append({"name": "outputs", "mountPath": outputs})
    paths = [m["mountPath"] for m in mounts]
    clash = next((p for p in paths if paths.count(p) > 1), None)
    if clash:
        raise InvalidSpec(f"outputs: {clash!r} is also used for the data store or the job configuration", "outputs")
    return volumes, mounts


def _env(spec: dict, extra_env: Mapping, job_id: str, cfg: KubeConfig) -> list:
    env = {**spec.get("env", {}), **{k: str(v) for k, v in (extra_env or {}).items() if v is not None},
           "SENTINELS_JOB_ID": job_id, "SENTINELS_CONFIG": posixpath.join(cfg.config_dir, CONFIG_KEY)}
    bad = [k for k in env if not ENV_NAME.match(k)]
    if bad:
        raise InvalidSpec(f"env: {bad[0]!r} is not an environment variable name", "env")
    return [{"name": k, "value": str(v)} for k, v in env.items()]


def config_text(record: dict) -> str:
    """The file the job finds at SENTINELS_CONFIG."""
    from .. import yamlfile

    return yamlfile.dump(config_of(record))


def config_inline(text: str) -> bool:
    """Whether the job's YAML fits in its pod's annotation (else: a ConfigMap)."""
    return len(text.encode()) <= INLINE_CONFIG_BYTES


def config_map(record: dict, cfg: KubeConfig, text: Optional[str] = None) -> dict:
    """The ConfigMap holding the job spec as YAML (mounted at cfg.config_dir/job.yaml), for a
    file too large for an annotation."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": record["k8s_job"], "namespace": cfg.namespace, "labels": base_labels(record)},
        "immutable": True,
        "data": {CONFIG_KEY: config_text(record) if text is None else text},
    }


def job(record: dict, extra_env: Mapping, cfg: KubeConfig, config: Optional[str] = None) -> dict:
    """The batch/v1 Job that runs the record's spec once (plus `retries` re-runs).

    `config`: the job's YAML, carried by the pod (annotation + downward API volume); None:
    the ConfigMap of the Job's name holds it."""
    spec, job_id, name = record["spec"], record["id"], record["k8s_job"]
    labels = {**spec.get("labels", {}), **base_labels(record)}
    annotations = {ATTEMPT_ANNOTATION: str(int(record.get("attempts") or 0))}
    pod_annotations = dict(annotations) if config is None else {**annotations, CONFIG_ANNOTATION: config}
    res = spec["resources"]
    amounts = {"cpu": quantity.format_cpu(res["cpu_millis"]), "memory": quantity.format_memory(res["memory_bytes"])}
    if res.get("gpu"):
        amounts[GPU_TAINT] = str(res["gpu"])
    volumes, mounts = _volumes(job_id, spec, cfg, name if config is None else None)
    container = {
        "name": CONTAINER,
        "image": spec["image"],
        "env": _env(spec, extra_env, job_id, cfg),
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if spec.get("command"):
        container["command"] = list(spec["command"])
    if spec.get("args"):
        container["args"] = list(spec["args"])
    pod_security: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if cfg.run_as_non_root:
        pod_security["runAsNonRoot"] = True
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
    }
    if cfg.service_account:
        pod["serviceAccountName"] = cfg.service_account
    secrets = pull_secrets(spec["image"], record.get("team"), cfg)
    if secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in secrets]
    if spec.get("node_selector"):
        pod["nodeSelector"] = dict(spec["node_selector"])
    if res.get("gpu"):
        pod["tolerations"] = [{"key": GPU_TAINT, "operator": "Exists", "effect": "NoSchedule"}]
    job_spec = {
        "backoffLimit": int(spec.get("retries") or 0),
        "completions": 1,
        "parallelism": 1,
        "ttlSecondsAfterFinished": cfg.ttl_seconds_after_finished,
        # evictions, preemptions and lost nodes never count against backoffLimit
        "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
        "template": {"metadata": {"labels": dict(labels), "annotations": pod_annotations}, "spec": pod},
    }
    if spec.get("timeout_seconds"):
        job_spec["activeDeadlineSeconds"] = int(spec["timeout_seconds"])
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": cfg.namespace, "labels": labels, "annotations": annotations},
            "spec": job_spec}


def pull_secrets(image: str, team: Optional[str], cfg: KubeConfig) -> list[str]:
    """The imagePullSecrets of a pod pulling `image` for `team`: its registry's Secret (chosen
    by host, never by the job), then those configured for every job."""
    own = cfg.registries.secret_for(image, team)
    return list(dict.fromkeys(([own] if own else []) + list(cfg.image_pull_secrets)))


def _check_record(record: dict) -> None:
    if not isinstance(record, dict) or not is_job_id(record.get("id")):
        raise InvalidSpec("record: missing or malformed job id")
    if not isinstance(record.get("spec"), dict) or not record["spec"].get("image"):
        raise InvalidSpec("record: the job spec has no image (required on Kubernetes)", "image")
    if "k8s_job" in record and not is_job_name(record["id"], record["k8s_job"]):
        raise InvalidSpec(f"record: k8s_job must be {job_name(record['id'])!r} or an attempt's "
                          f"{job_name(record['id'], 2)!r}, got {record.get('k8s_job')!r}")


def job_objects(record: dict, extra_env: Mapping, cfg: KubeConfig) -> tuple[Optional[dict], dict]:
    """(ConfigMap or None, Job) for one job; raise InvalidSpec when the record cannot run here.

    The ConfigMap is None when the job's YAML fits in its pod's annotation (nearly always).
    A requeued job's next attempt runs as a Job of its own name (`lifecycle.job_name`), so
    the old attempt's Job, still being deleted, never blocks it and its late events stay stale.
    """
    _check_record(record)
    record = {**record, "k8s_job": record.get("k8s_job") or job_name(record["id"], int(record.get("attempts") or 1))}
    text = config_text(record)
    if config_inline(text):
        return None, job(record, extra_env, cfg, text)
    return config_map(record, cfg, text), job(record, extra_env, cfg)


def owned_by(obj: dict, owner: dict) -> dict:
    """A copy of `obj` garbage-collected with `owner` (a created object with metadata.uid)."""
    meta = owner["metadata"]
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"],
           "controller": False, "blockOwnerDeletion": False}
    return {**obj, "metadata": {**obj["metadata"], "ownerReferences": [ref]}}
