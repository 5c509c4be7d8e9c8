"""helm/sentinels with real Helm: strict lint, renders valid against real schemas, bad values refused.

Core objects are validated strictly with kubernetes-validate; custom resources against the
CRD schemas of ../shared/crds (skipped, with the reason, when that folder is absent).
The dependencies are not downloadable here: lint uses stub subcharts in a temporary copy,
and renders leave them out (what they would render is the upstream charts' business).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests import helm_chart as hc

pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) is not installed")

CORE_GROUPS = ("v1", "rbac.authorization.k8s.io/v1", "networking.k8s.io/v1", "apps/v1", "batch/v1",
               "policy/v1", "scheduling.k8s.io/v1")
ALL_OFF = {"nats": {"enabled": False}, "knative-operator": {"enabled": False}, "mlflow": {"enabled": False},
           "eck-operator": {"enabled": False}, "eck-stack": {"enabled": False}, "opensearch": {"enabled": False},
           "fluent-bit": {"enabled": False}, "kube-prometheus-stack": {"enabled": False},
           "dcgm-exporter": {"enabled": False}, "natsAuth": {"enabled": False},
           "networkPolicy": {"enabled": False}, "test": {"enabled": False}}


def name_of(d):
    return f"{d['kind']}/{d['metadata'].get('namespace', '-')}/{d['metadata']['name']}"


DEFAULTS = hc.render_all()
OFF = hc.render_all(ALL_OFF)
EXTRAS_VALUES = {"outputs": {"enabled": True, "storageClassName": "nfs-client"}, "registries": {
    "ghcr.io": {"secret": "ghcr-pull"},
    "registry.vision.internal:5000": {"secret": "vision-pull", "teams": ["vision"],
                                      "create": {"username": "vision-bot", "password": "pw-from-values"}}}}
EXTRAS = hc.render_all(EXTRAS_VALUES)


def test_dependencies_are_pinned_and_conditional():
    values = yaml.safe_load((hc.CHART / "values.yaml").read_text())
    names = set()
    for dep in hc.dependencies():
        names.add(dep["name"])
        assert dep["repository"].startswith("https://"), dep
        assert all(c.isdigit() or c in "v." for c in str(dep["version"])), f"{dep['name']} is not pinned: {dep['version']}"
        assert dep["condition"] == f"{dep['name']}.enabled"
        assert isinstance(values[dep["name"]]["enabled"], bool)
    assert {"nats", "knative-operator", "mlflow", "fluent-bit", "kube-prometheus-stack", "dcgm-exporter"} <= names
    assert "eck-stack" in names or "opensearch" in names
    assert values["dcgm-exporter"]["nodeSelector"], "the DCGM exporter belongs on GPU nodes only"
    assert not values["mlflow"].get("minio", {}).get("enabled"), "MinIO is in maintenance mode: not a default"


@pytest.mark.parametrize("values", [{}, {"knative": {"objects": True, "install": True}}, ALL_OFF],
                         ids=["defaults", "everything-on", "optional-off"])
def test_strict_lint_is_clean(tmp_path, values):
    import helm_python

    report = helm_python.lint(str(hc.stubbed_copy(tmp_path)), values, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_a_missing_dependency_is_what_strict_lint_reports(tmp_path):
    """The stubs are what makes lint clean: without them strict lint complains (so the test can fail)."""
    import helm_python

    report = helm_python.lint(str(hc.CHART), {}, strict=True)
    assert report["errors"] or any(m["severity"] >= 2 for m in report["messages"])


@pytest.mark.parametrize("docs", [DEFAULTS, OFF, EXTRAS], ids=["defaults", "optional-off", "outputs+registries"])
def test_core_objects_validate_strictly(docs):
    core = [d for d in docs if d["apiVersion"] in CORE_GROUPS]
    assert core
    for d in core:
        kubernetes_validate.validate(d, "1.31", strict=True)


@pytest.mark.parametrize("docs", [DEFAULTS, OFF, EXTRAS], ids=["defaults", "optional-off", "outputs+registries"])
def test_custom_resources_validate_against_real_crds(docs):
    schemas = hc.crd_schemas()
    if schemas is None:
        pytest.skip(f"no CRD schemas at {hc.CRDS} (they are not part of the repository)")
    custom = [d for d in docs if d["apiVersion"] not in CORE_GROUPS]
    checked = set()
    for d in custom:
        schema = schemas.get((d["apiVersion"], d["kind"]))
        if schema is None:
            assert d["apiVersion"] == "operator.knative.dev/v1beta1", f"no CRD for {name_of(d)}"
            continue  # the knative-operator's own CRDs are not in ../shared/crds
        jsonschema.Draft7Validator(schema).validate({k: v for k, v in d.items() if k != "status"})
        checked.add(d["kind"])
    assert {"Service", "Broker", "Trigger", "PingSource", "ApiServerSource"} <= checked


def test_a_crd_schema_catches_a_wrong_field():
    schemas = hc.crd_schemas()
    if schemas is None:
        pytest.skip(f"no CRD schemas at {hc.CRDS}")
    (trigger,) = [d for d in DEFAULTS if d["kind"] == "Trigger"][:1]
    bad = json.loads(json.dumps(trigger))
    bad["spec"]["delivery"]["retry"] = "five"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schemas[("eventing.knative.dev/v1", "Trigger")]).validate(bad)


@pytest.mark.parametrize("docs", [DEFAULTS, OFF, EXTRAS], ids=["defaults", "optional-off", "outputs+registries"])
def test_every_object_carries_the_standard_labels(docs):
    for d in docs:
        labels = d["metadata"].get("labels") or {}
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                    "app.kubernetes.io/part-of", "app.kubernetes.io/component", "app.kubernetes.io/version"):
            assert key in labels, f"{name_of(d)} lacks {key}"


def test_knative_objects_wait_for_knative_unless_forced():
    bare = hc.documents(hc.render())
    assert not [d for d in bare if "knative" in d["apiVersion"]]
    notes = hc.render()["sentinels/templates/NOTES.txt"]
    assert "helm upgrade --install" in notes
    forced = hc.documents(hc.render({"knative": {"objects": True}}))
    assert {"Service", "Broker", "Trigger", "PingSource", "ApiServerSource"} <= {d["kind"] for d in forced}
    assert not [d for d in hc.documents(hc.render({"knative": {"objects": False}}, api_versions=hc.KNATIVE_APIS))
                if d["apiVersion"].startswith(("serving.knative", "eventing.knative", "sources.knative"))]


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_services_one_image_args_and_visibility():
    services = {n: s for n, s in by_kind(DEFAULTS, "Service").items()
                if s["apiVersion"].startswith("serving.knative.dev")}  # not the exporter's core Service
    assert set(services) == {"sentinels-submit", "sentinels-schedule", "sentinels-on-job-event", "sentinels-alert"}
    scale = {}
    for name, svc in services.items():
        local = svc["metadata"]["labels"].get("networking.knative.dev/visibility") == "cluster-local"
        assert local == (name != "sentinels-submit")
        tpl = svc["spec"]["template"]
        (c,) = tpl["spec"]["containers"]
        assert c["image"] == "ghcr.io/sentinels/sentinels:0.1.0" and "command" not in c
        fn = name.removeprefix("sentinels-").replace("-", "_")
        assert c["args"][:4] == ["--target", fn, "--source", f"functions/{fn}/main.py"] and "--asgi" in c["args"]
        assert c["readinessProbe"] and c["livenessProbe"] and c["resources"]["requests"]
        assert c["securityContext"]["runAsNonRoot"] and not c["securityContext"]["allowPrivilegeEscalation"]
        env = {e["name"]: e for e in c["env"]}
        assert env["SENTINELS_BROKER_URL"]["value"] == \
            "http://nats-broker-ingress.knative-eventing.svc.cluster.local/sentinels/sentinels"
        assert env["SENTINELS_BACKEND"]["value"] == "kubernetes"
        scale[fn] = tpl["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"]
    # functions with per-process state run as one process
    assert scale["schedule"] == "1" and scale["alert"] == "1"


def test_broker_is_the_replicated_native_jetstream_broker():
    broker = by_kind(DEFAULTS, "Broker")["sentinels"]
    ann = broker["metadata"]["annotations"]
    assert ann["eventing.knative.dev/broker.class"] == "NatsJetStreamBroker"
    assert json.loads(ann["natsjetstream.eventing.knative.dev/config"])["stream"]["replicas"] == 3


def test_config_map_carries_the_functions_configuration():
    (cm,) = [d for d in DEFAULTS if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sentinels-config"]
    cfg = yaml.safe_load(cm["data"]["config.yaml"])
    assert cfg["backend"] == "kubernetes" and cfg["kubernetes"]["namespace"] == "sentinels"
    assert cfg["priorities"]["classes"]["critical"] == 1000 and cfg["notify"]["default_channel"] == "#ml-jobs"
    from sentinels.settings import CONFIG_KEYS

    assert set(cfg) <= CONFIG_KEYS, set(cfg) - CONFIG_KEYS
    assert cfg["nats_replicas"] == 3  # sentinels' streams replicated like the NATS cluster
    assert "nats_replicas" not in yaml.safe_load(
        [d for d in OFF if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sentinels-config"][0]["data"]["config.yaml"])


def test_registries_reach_the_configuration_by_secret_name_and_made_secrets_stay_out_of_it():
    from sentinels.domain.registries import Registries, auth_hosts

    docs = hc.render_all({"jobsNamespace": "ml", "registries": EXTRAS_VALUES["registries"]})
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sentinels-config"]
    assert "pw-from-values" not in cm["data"]["config.yaml"]
    regs = Registries.from_dict(yaml.safe_load(cm["data"]["config.yaml"])["registries"])
    assert regs.secret_for("ghcr.io/acme/x:1") == "ghcr-pull"
    assert (regs.secret_for("registry.vision.internal:5000/r:1", "vision"),
            regs.secret_for("registry.vision.internal:5000/r:1", "nlp")) == ("vision-pull", None)
    (secret,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "vision-pull"]
    kubernetes_validate.validate(secret, "1.31", strict=True)
    assert secret["type"] == "kubernetes.io/dockerconfigjson" and secret["metadata"]["namespace"] == "ml"
    import base64

    text = base64.b64decode(secret["data"][".dockerconfigjson"]).decode()
    assert auth_hosts(text, "the chart's Secret") == {"registry.vision.internal:5000"}
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "ghcr-pull"]  # referenced only
    assert not [d for d in DEFAULTS if d["kind"] == "Secret" and "registry" in json.dumps(d["metadata"]["labels"])]


def test_outputs_claim_is_written_by_jobs_and_read_by_the_lifecycle_function():
    from sentinels.adapters.kube_manifest import KubeConfig, job_objects
    from sentinels.domain.lifecycle import LifecycleConfig
    from tests.test_kube_manifest import make_record

    (pvc,) = by_kind(EXTRAS, "PersistentVolumeClaim").values()
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"]["storageClassName"] == "nfs-client"
    (serving,) = by_kind(EXTRAS, "KnativeServing").values()
    assert serving["spec"]["config"]["features"]["kubernetes.podspec-persistent-volume-claim"] == "enabled"
    assert "kubernetes.podspec-persistent-volume-claim" not in json.dumps(by_kind(DEFAULTS, "KnativeServing"))
    mounted = {}
    for svc in by_kind(EXTRAS, "Service").values():
        if svc["apiVersion"] != "serving.knative.dev/v1":
            continue
        pod = svc["spec"]["template"]["spec"]
        claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        mounted[svc["metadata"]["name"]] = (claims, [m for m in pod["containers"][0]["volumeMounts"]
                                                     if m["name"] == "outputs"])
    assert mounted.pop("sentinels-on-job-event") == (
        [{"name": "outputs", "persistentVolumeClaim": {"claimName": "sentinels-outputs", "readOnly": True}}],
        [{"name": "outputs", "mountPath": "/mnt/outputs", "readOnly": True}])
    assert all(v == ([], []) for v in mounted.values()), mounted  # the other functions do not see it
    (cm,) = [d for d in EXTRAS if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sentinels-config"]
    cfg = yaml.safe_load(cm["data"]["config.yaml"])
    assert LifecycleConfig.from_dict(cfg["lifecycle"]).outputs_root == "/mnt/outputs"
    assert cfg["lifecycle"]["max_attempts"] == 3  # the rest of config.lifecycle stays
    record = make_record(outputs="/outputs")
    _, job = job_objects(record, {}, KubeConfig.from_dict(cfg["kubernetes"]))
    pod = job["spec"]["template"]["spec"]
    assert {"name": "outputs", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}} in pod["volumes"]
    assert {"name": "outputs", "mountPath": "/outputs", "subPath": record["id"]} in pod["containers"][0]["volumeMounts"]


def test_outputs_with_jobs_in_another_namespace_need_a_claim_of_the_functions_own():
    import helm_python

    with pytest.raises(helm_python.HelmError) as err:
        hc.render_all({"outputs": {"enabled": True}, "jobsNamespace": "ml"})
    assert "set outputs.functionClaim" in str(err.value)
    docs = hc.render_all({"outputs": {"enabled": True, "functionClaim": "outputs-mirror"}, "jobsNamespace": "ml"})
    (pvc,) = by_kind(docs, "PersistentVolumeClaim").values()
    assert pvc["metadata"]["namespace"] == "ml"
    svc = by_kind(docs, "Service")["sentinels-on-job-event"]
    assert {"name": "outputs", "persistentVolumeClaim": {"claimName": "outputs-mirror", "readOnly": True}} in \
        svc["spec"]["template"]["spec"]["volumes"]


def test_nats_replicas_setting_is_checked(tmp_path):
    from sentinels.domain.errors import ConfigError
    from sentinels.settings import Settings

    assert Settings(home=tmp_path, file={"nats_replicas": 3}).nats_replicas() == 3
    assert Settings(home=tmp_path).nats_replicas() == 1
    with pytest.raises(ConfigError, match="nats_replicas must be 1, 3 or 5"):
        Settings(home=tmp_path, file={"nats_replicas": 2}).nats_replicas()


def test_jobs_in_another_namespace_move_rbac_and_the_source():
    docs = hc.render_all({"jobsNamespace": "ml"})
    for role in list(by_kind(docs, "Role").values()) + list(by_kind(docs, "RoleBinding").values()):
        assert role["metadata"]["namespace"] == "ml"
    for binding in by_kind(docs, "RoleBinding").values():
        assert all(s["namespace"] == "sentinels" for s in binding["subjects"])
    source = by_kind(docs, "ApiServerSource")["sentinels-kube"]
    assert source["spec"]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "ml"}}
    assert "sentinels-apiserversource-namespaces" in by_kind(docs, "ClusterRole")
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sentinels-config"]
    assert yaml.safe_load(cm["data"]["config.yaml"])["kubernetes"]["namespace"] == "ml"
    # same namespace: no selector, no namespace access
    assert "namespaceSelector" not in by_kind(DEFAULTS, "ApiServerSource")["sentinels-kube"]["spec"]
    assert "sentinels-apiserversource-namespaces" not in by_kind(DEFAULTS, "ClusterRole")


def test_network_policies_close_the_internal_functions():
    policies = by_kind(DEFAULTS, "NetworkPolicy")
    assert set(policies) == {"sentinels-schedule", "sentinels-on-job-event", "sentinels-alert"}
    services = by_kind(DEFAULTS, "Service")
    for name, pol in policies.items():
        pod_labels = services[name]["spec"]["template"]["metadata"]["labels"]
        assert pol["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
        sources = [f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                   for f in pol["spec"]["ingress"][0]["from"]]
        assert "knative-eventing" in sources


def test_helm_test_hook_submits_and_waits():
    (pod,) = [d for d in DEFAULTS if d["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[:2] == ["sentinels", "submit"] and "--wait" in cmd
    assert pod["spec"]["activeDeadlineSeconds"] > 0 and pod["spec"]["automountServiceAccountToken"] is False


BAD_VALUES = [
    ({"broker": {"streamReplicas": 2}}, "/broker/streamReplicas"),
    ({"functions": {"schedule": {"maxScale": "one"}}}, "/functions/schedule/maxScale"),
    ({"jobsNamespace": "Not_A_Namespace"}, "/jobsNamespace"),
    ({"tick": {"schedule": "every minute"}}, "/tick/schedule"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"knative": {"objects": "maybe"}}, "/knative/objects"),
    ({"config": {"kubernetes": {"namespace": "x"}}}, "/config/kubernetes"),
    ({"secrets": {"slack": {"name": "Slack Secret"}}}, "/secrets/slack/name"),
    ({"unknownKey": 1}, "unknownKey"),
    ({"registries": {"ghcr.io": {"secret": "GHCR_Pull"}}}, "/registries/ghcr.io/secret"),
    ({"outputs": {"claim": "Outputs_Claim"}}, "/outputs/claim"),
    ({"outputs": {"mountPath": "mnt/outputs"}}, "/outputs/mountPath"),
    ({"outputs": {"accessMode": "ReadWriteOnce"}}, "/outputs"),
    ({"registries": {"ghcr.io": {"teams": ["vision"]}}}, "/registries/ghcr.io"),
    ({"registries": {"ghcr.io": {"secret": "x", "password": "p"}}}, "/registries/ghcr.io"),
    ({"registries": {"ghcr.io": {"secret": "x", "create": {"username": "bot"}}}}, "/registries/ghcr.io/create"),
]


@pytest.mark.parametrize("values,where", BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_values_that_violate_the_schema_fail_with_its_message(values, where):
    import helm_python

    with pytest.raises(helm_python.HelmValuesError) as err:
        hc.render(values)
    assert where in str(err.value) and "schema" in str(err.value)


def nats_conf(tmp_path: Path) -> Path:
    """nats.conf as the nats dependency builds it from our values (config.* and its merge
    blocks, the "$include" key turned into an include), with the rendered auth.conf beside it."""
    values = yaml.safe_load((hc.CHART / "values.yaml").read_text())["nats"]["config"]
    (cm,) = [d for d in DEFAULTS if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sentinels-nats-auth"]
    (tmp_path / "sentinels").mkdir()
    (tmp_path / "sentinels" / "auth.conf").write_text(cm["data"]["auth.conf"])
    replicas = values["cluster"]["replicas"]
    conf = {"port": 4222, "server_name": "sentinels-nats-0", "http_port": 8222, "lame_duck_duration": "30s",
            "pid_file": str(tmp_path / "nats.pid"),
            "jetstream": {"store_dir": str(tmp_path / "data"), "max_file_store": 20 * 2**30,
                          **values["jetstream"]["merge"]},
            "cluster": {"name": "sentinels-nats", "port": 6222, "no_advertise": True,
                        "routes": [f"nats://sentinels-nats-{i}.sentinels-nats-headless:6222" for i in range(replicas)]}}
    includes = [v for k, v in sorted(values["merge"].items()) if k.endswith("$include")]
    body = json.dumps(conf, indent=2)
    text = "\n".join(f"include {p};" for p in includes) + "\n" + body[1:-1].rstrip() + "\n"
    path = tmp_path / "nats.conf"
    path.write_text("{\n" + text + "}\n")
    return path


def nats_check(conf: Path, env: dict) -> subprocess.CompletedProcess:
    from sentinels.embedded import natsd

    return subprocess.run([natsd.binary(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), **env})


USERS = ("submit", "schedule", "on-job-event", "alert", "broker", "inspect", "exporter")


def test_rendered_nats_configuration_passes_nats_server_t(tmp_path):
    values = yaml.safe_load((hc.CHART / "values.yaml").read_text())["nats"]
    assert values["config"]["jetstream"]["merge"]["sync_interval"] == "always"
    assert values["config"]["cluster"]["replicas"] == 3 and values["config"]["jetstream"]["enabled"]
    conf = nats_conf(tmp_path)
    env = {f"SENTINELS_NATS_{u.upper().replace('-', '_')}": f"pw-{u}" for u in USERS}
    # the NATS container gets exactly these variables from the Secret
    assert set(env) == set(values["container"]["env"])
    assert {v["valueFrom"]["secretKeyRef"]["key"] for v in values["container"]["env"].values()} == set(USERS)
    ok = nats_check(conf, env)
    assert ok.returncode == 0, ok.stderr + ok.stdout
    # a missing password is a configuration error that names the variable
    bad = nats_check(conf, {k: v for k, v in env.items() if k != "SENTINELS_NATS_ALERT"})
    assert bad.returncode != 0 and "SENTINELS_NATS_ALERT" in bad.stderr + bad.stdout


def test_nats_users_are_least_privilege():
    (cm,) = [d for d in DEFAULTS if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sentinels-nats-auth"]
    auth = cm["data"]["auth.conf"]
    blocks = {u: auth[auth.index(f'user: "{u}"'):].split("}}", 1)[0] for u in USERS}
    inspect = blocks["inspect"]
    assert "$KV." not in inspect and "sentinels." not in inspect and "DELETE" not in inspect
    assert "MSG.DELETE.SENTINELS_QUEUE" in blocks["schedule"]
    assert "MSG.DELETE" not in blocks["submit"] and "sentinels_alerts" not in blocks["submit"]
    assert "sentinels.queue" not in blocks["alert"]
    assert '"sentinels.>"' in blocks["broker"].split("deny:", 1)[1]
    exporter = blocks["exporter"]  # reads and hears counts; writes nothing of sentinels'
    assert "$KV." not in exporter and "STREAM.CREATE" not in exporter and "MSG.DELETE" not in exporter
    assert '"sentinels.metrics.>"' in exporter.split("subscribe:", 1)[1] and "sentinels.metrics" in blocks["schedule"]


def test_chart_readme_documents_every_value_we_own():
    values = yaml.safe_load((hc.CHART / "values.yaml").read_text())
    readme = (hc.CHART / "README.md").read_text()
    dependencies = {d["name"] for d in hc.dependencies()}
    for key, value in values.items():
        if key in dependencies:
            assert f"`{key}`" in readme, key
        elif isinstance(value, dict) and value:
            for sub in value:
                assert f"`{key}.{sub}`" in readme, f"{key}.{sub} is not in helm/sentinels/README.md"
        else:
            assert f"`{key}`" in readme, f"{key} is not in helm/sentinels/README.md"
