"""knative/*.yaml: rendered from the chart, parseable, core objects strictly valid, wiring consistent.

knative/ is what helm/render_knative.py renders from helm/sentinels (one source: the
chart); the first test fails when they differ. Knative kinds have no published schema in
kubernetes-validate (SchemaNotFoundError), so their shape is checked here against the
trigger table (the chart tests also validate them against the real CRDs); the core kinds
are validated strictly against Kubernetes 1.31.
"""

import runpy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from sentinels.domain import events

KNATIVE = Path(__file__).resolve().parent.parent / "knative"
FILES = ("broker.yaml", "triggers.yaml", "pingsource.yaml", "apiserversource.yaml", "services.yaml", "rbac.yaml",
         "configmap.yaml", "networkpolicies.yaml")
CORE = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "NetworkPolicy"}
SERVICES = {"sentinels-submit", "sentinels-schedule", "sentinels-on-job-event", "sentinels-alert"}
ROUTES = {  # function -> event types (the routing table)
    "submit": ["io.sentinels.job.submit", "io.sentinels.job.cancel", "io.sentinels.job.reprioritize"],
    "schedule": ["io.sentinels.job.queued", "dev.knative.sources.ping", "io.sentinels.capacity.changed",
                 "io.sentinels.job.succeeded", "io.sentinels.job.failed", "io.sentinels.job.cancelled",
                 "io.sentinels.job.requeued", "io.sentinels.job.building"],  # the last: start a Dockerfile build
    "on-job-event": ["dev.knative.apiserver.resource.add", "dev.knative.apiserver.resource.update",
                     "dev.knative.apiserver.resource.delete", "io.sentinels.job.cancel_requested",
                     "io.sentinels.job.preempt_requested",
                     "io.sentinels.job.scheduled", "dev.knative.sources.ping"],  # the tick: MLflow catch-up
    "alert": ["io.sentinels.job.succeeded", "io.sentinels.job.failed", "io.sentinels.job.cancelled",
              "io.sentinels.job.requeued", "io.sentinels.capacity.exhausted", "io.sentinels.capacity.recovered"],
}
KNOWN_TYPES = {v for k, v in vars(events).items() if k.isupper() and isinstance(v, str) and "." in v}


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KNATIVE / name).read_text()) if d is not None]


def everything() -> list[dict]:
    return [d for name in FILES for d in docs(name)]


def by_kind(kind: str) -> list[dict]:
    return [d for d in everything() if d["kind"] == kind]


def test_knative_is_what_the_chart_renders():
    pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) is not installed")
    render = runpy.run_path(str(KNATIVE.parent / "helm" / "render_knative.py"))["render"]
    expected = render()
    current = {p.name: p.read_text() for p in KNATIVE.glob("*.yaml")}
    assert set(current) == set(expected)
    for name in expected:
        assert current[name] == expected[name], f"knative/{name} differs from the chart: run python helm/render_knative.py"


def test_every_file_parses_and_names_are_unique():
    assert {p.name for p in KNATIVE.glob("*.yaml")} == set(FILES)
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in everything()]
    assert len(keys) == len(set(keys))
    for d in everything():
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sentinels"


@pytest.mark.parametrize("obj", [d for d in everything() if d["kind"] in CORE],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_core_objects_validate_strictly(obj):
    kubernetes_validate.validate(obj, "1.31", strict=True)


def test_knative_kinds_have_no_schema_so_they_are_checked_here():
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(by_kind("Trigger")[0], "1.31", strict=True)


def test_broker_is_nats_jetstream():
    (broker,) = docs("broker.yaml")
    assert (broker["apiVersion"], broker["kind"], broker["metadata"]["name"]) == ("eventing.knative.dev/v1", "Broker", "sentinels")
    assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "NatsJetStreamBroker"


def test_triggers_route_exactly_the_table():
    triggers = docs("triggers.yaml")
    assert all(t["kind"] == "Trigger" and t["apiVersion"] == "eventing.knative.dev/v1" for t in triggers)
    got = {}
    for t in triggers:
        spec = t["spec"]
        assert spec["broker"] == "sentinels"
        assert set(spec["filter"]) == {"attributes"} and set(spec["filter"]["attributes"]) == {"type"}
        ref = spec["subscriber"]["ref"]
        assert (ref["apiVersion"], ref["kind"]) == ("serving.knative.dev/v1", "Service") and ref["name"] in SERVICES
        delivery = spec["delivery"]
        assert (delivery["retry"], delivery["backoffPolicy"], delivery["backoffDelay"]) == (5, "exponential", "PT0.5S")
        assert delivery["deadLetterSink"]["ref"]["name"] in SERVICES
        function = ref["name"].removeprefix("sentinels-")
        event_type = spec["filter"]["attributes"]["type"]
        got.setdefault(function, []).append(event_type)
        expected_name = f"{function}-{'-'.join(event_type.split('.')[-2:])}".replace("_", "-")
        assert t["metadata"]["name"] == expected_name
    assert got == ROUTES


def test_trigger_types_exist_in_the_event_catalogue():
    used = {t["spec"]["filter"]["attributes"]["type"] for t in docs("triggers.yaml")}
    assert used <= KNOWN_TYPES, used - KNOWN_TYPES


def test_services_visibility_and_command():
    services = docs("services.yaml")
    assert {s["metadata"]["name"] for s in services} == SERVICES
    accounts = {a["metadata"]["name"] for a in by_kind("ServiceAccount")}
    for s in services:
        name = s["metadata"]["name"]
        local = s["metadata"]["labels"].get("networking.knative.dev/visibility") == "cluster-local"
        assert local == (name != "sentinels-submit")
        pod = s["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == name and name in accounts
        (c,) = pod["containers"]
        assert c["image"] == "ghcr.io/sentinels/sentinels:0.1.0"
        fn = name.removeprefix("sentinels-").replace("-", "_")
        cmd = c["args"]  # the image's entrypoint is functions-framework
        assert "command" not in c and "--asgi" in cmd
        assert cmd[cmd.index("--target") + 1] == fn
        source = cmd[cmd.index("--source") + 1]
        assert source == f"functions/{fn}/main.py"
        env = {e["name"]: e.get("value") for e in c["env"]}
        # the NatsJetStreamBroker class's shared ingress, not the channel-based broker's
        assert env["SENTINELS_BROKER_URL"] == "http://nats-broker-ingress.knative-eventing.svc.cluster.local/sentinels/sentinels"
        assert "K_SINK" not in env


def test_sources_feed_the_broker():
    (ping,) = docs("pingsource.yaml")
    (api,) = docs("apiserversource.yaml")
    for src in (ping, api):
        assert src["apiVersion"] == "sources.knative.dev/v1"
        assert src["spec"]["sink"]["ref"] == {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "sentinels"}
    assert (ping["metadata"]["name"], ping["spec"]["schedule"]) == ("sentinels-tick", "* * * * *")
    assert api["spec"]["mode"] == "Resource"
    resources = {(r["apiVersion"], r["kind"]): r.get("selector") for r in api["spec"]["resources"]}
    managed = {"matchLabels": {"app.kubernetes.io/managed-by": "sentinels"}}
    assert resources == {("batch/v1", "Job"): managed, ("v1", "Pod"): managed, ("v1", "Node"): None}
    assert api["spec"]["serviceAccountName"] in {a["metadata"]["name"] for a in by_kind("ServiceAccount")}


def permissions(account: str) -> set[tuple]:
    """(namespaced?, group, resource, verb) the account is granted through its bindings."""
    roles = {(r["kind"], r["metadata"]["name"]): r for r in by_kind("Role") + by_kind("ClusterRole")}
    out = set()
    for binding in by_kind("RoleBinding") + by_kind("ClusterRoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"]):
            continue
        role = roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.add((role["kind"] == "Role", group, res, verb))
    return out


@pytest.mark.slow  # seconds of schema work: kept out of `pytest -m fast`
def test_least_privilege_rbac():
    for account in ("sentinels-submit", "sentinels-alert"):
        assert permissions(account) == set()
        (sa,) = [a for a in by_kind("ServiceAccount") if a["metadata"]["name"] == account]
        assert sa["automountServiceAccountToken"] is False
    schedule = permissions("sentinels-schedule")
    for verb in ("create", "get", "list", "delete"):
        assert (True, "batch", "jobs", verb) in schedule and (True, "", "configmaps", verb) in schedule
    assert {(False, "", "nodes", v) for v in ("get", "list", "watch")} <= schedule
    assert (False, "", "pods", "list") in schedule
    on_event = permissions("sentinels-on-job-event")
    assert {(True, "batch", "jobs", "delete"), (True, "", "pods", "get"), (True, "", "pods", "list"),
            (True, "", "pods/log", "get")} <= on_event
    source = permissions("sentinels-apiserversource")
    assert source == ({(True, "batch", "jobs", v) for v in ("get", "list", "watch")}
                      | {(True, "", "pods", v) for v in ("get", "list", "watch")}
                      | {(False, "", "nodes", v) for v in ("get", "list", "watch")})
    granted = set().union(*(permissions(a["metadata"]["name"]) for a in by_kind("ServiceAccount")))
    assert not any(verb in ("*", "escalate", "bind", "impersonate") or res in ("*", "secrets")
                   for _, _, res, verb in granted)
