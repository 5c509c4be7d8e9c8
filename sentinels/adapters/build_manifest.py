"""The Kubernetes Job that builds a job's image from its Dockerfile: rootless BuildKit.

Kaniko is archived, so the cluster builds with `moby/buildkit:<v>-rootless` running
`buildctl-daemonless.sh` as an unprivileged user (BUILDKITD_FLAGS
--oci-worker-no-process-sandbox, seccomp and AppArmor Unconfined, as BuildKit's own
rootless example needs), pushing `<builds.registry>/<name>:<job id>`. The context is the
URL given (a git or https tar URL BuildKit fetches itself); a Dockerfile URL is fetched
by an init container into an emptyDir. Pure: the manifest is built from the record
without I/O, and labelled `sentinels.io/component: build`, so its events reach the
lifecycle on the same path as the job's own Job. The Secret `registries:` names for the
push registry's host (a kubernetes.io/dockerconfigjson one, as for pulls) is mounted as
BuildKit's /home/user/.docker/config.json: it pushes there and pulls base images with it.
"""

from ..domain import build as builds
from ..domain.errors import ConfigError, InvalidSpec
from ..domain.observe import ATTEMPT_ANNOTATION, IMAGE_ANNOTATION
from .kube_manifest import KubeConfig, base_labels

FETCH_IMAGE = "busybox:1.36"
UNCONFINED = {"seccompProfile": {"type": "Unconfined"}, "appArmorProfile": {"type": "Unconfined"}}


def build_job(record: dict, bcfg: builds.BuildConfig, cfg: KubeConfig) -> dict:
    """The batch/v1 Job that builds `record`'s image and pushes it; raises on what a cluster cannot build."""
    build = record.get("build") or {}
    if not bcfg.registry:
        raise ConfigError("builds.registry: a cluster build pushes the image there; none is configured")
    for key in ("dockerfile", "context"):
        value = build.get(key)
        if value and not builds.is_url(value):
            raise InvalidSpec(f"build.{key}: {value!r} is a path on your machine; a cluster build needs an "
                              "http(s) or git URL", f"build.{key}")
    job_id, spec = record["id"], record["spec"]
    image = builds.pushed_image(bcfg.registry, spec["name"], job_id)
    name = builds.build_job_name(job_id)
    labels = {**base_labels(record), **builds.BUILD_LABEL}
    annotations = {ATTEMPT_ANNOTATION: str(int(record.get("attempts") or 1)), IMAGE_ANNOTATION: image}
    args = ["build", "--frontend", "dockerfile.v0",
            "--output", f"type=image,name={image},push=true"]
    volumes: list[dict] = [{"name": "buildkitd", "emptyDir": {}}]
    mounts: list[dict] = [{"name": "buildkitd", "mountPath": "/home/user/.local/share/buildkit"}]
    init: list[dict] = []
    secret = cfg.registries.secret_for(image, record.get("team"))
    if secret:
        volumes.append({"name": "registry-auth", "secret": {"secretName": secret, "defaultMode": 0o444, "items": [
            {"key": ".dockerconfigjson", "path": "config.json"}]}})
        mounts.append({"name": "registry-auth", "mountPath": "/home/user/.docker", "readOnly": True})
    if build.get("context"):
        args += ["--opt", f"context={build['context']}"]
    if build.get("dockerfile"):
        volumes.append({"name": "dockerfile", "emptyDir": {}})
        mounts.append({"name": "dockerfile", "mountPath": "/dockerfile", "readOnly": True})
        init.append({"name": "fetch-dockerfile", "image": FETCH_IMAGE,
                     "command": ["wget", "-T", str(bcfg.fetch_timeout_seconds), "-O", "/dockerfile/Dockerfile",
                                 build["dockerfile"]],
                     "volumeMounts": [{"name": "dockerfile", "mountPath": "/dockerfile"}],
                     "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True,
                                         "allowPrivilegeEscalation": False}})
        args += ["--local", "dockerfile=/dockerfile"]
        if not build.get("context"):
            args += ["--local", "context=/dockerfile"]
    container = {
        "name": "buildkit", "image": bcfg.buildkit_image, "command": ["buildctl-daemonless.sh"], "args": args,
        "env": [{"name": "BUILDKITD_FLAGS", "value": "--oci-worker-no-process-sandbox"}],
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, **UNCONFINED},
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
    }
    pod_spec = {"restartPolicy": "Never", "automountServiceAccountToken": False, "containers": [container],
                "volumes": volumes}
    if init:
        pod_spec["initContainers"] = init
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": cfg.namespace, "labels": labels, "annotations": annotations},
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": int(bcfg.deadline_seconds),
                 "ttlSecondsAfterFinished": int(cfg.ttl_seconds_after_finished),
                 "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec}},
    }
