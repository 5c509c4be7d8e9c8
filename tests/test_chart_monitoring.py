"""The chart's monitoring pieces: exporter Deployment/Service/ServiceMonitor, PrometheusRule,
Alertmanager Slack receiver; rendered by real Helm, validated against real schemas and checked
by promtool/amtool."""

import shutil
import subprocess

import pytest
import yaml

from tests.chart_render import RULES_FILE, render, validate_custom


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def test_builtin_objects_validate_against_kubernetes_schemas():
    import kubernetes_validate

    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert {"Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= set(kinds)
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com"):
            continue
        kubernetes_validate.validate(d, "1.31", strict=True)
    dep = by_kind(docs, "Deployment")[0]
    assert dep["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sentinels"
    pod = dep["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["SENTINELS_METRICS_LISTEN"] == "0.0.0.0:9464" and env["SENTINELS_BACKEND"] == "kubernetes"
    # its own NATS user (read only), the functions' config.yaml (priorities, namespace)
    assert env["SENTINELS_NATS_URL"] == "nats://exporter:$(SENTINELS_NATS_PASSWORD)@rel-nats.sentinels.svc.cluster.local:4222"
    assert {"name": "config", "configMap": {"name": "rel-sentinels-config"}} in pod["volumes"]
    plain = {e["name"]: e.get("value") for e in by_kind(render({"natsAuth": {"enabled": False}}), "Deployment")[0]
             ["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert plain["SENTINELS_NATS_URL"] == "nats://rel-nats.sentinels.svc.cluster.local:4222"


def test_servicemonitor_and_rule_validate_against_the_crds():
    docs = render({"metrics": {"serviceMonitor": {"labels": {"release": "kps"}}}})
    sm = by_kind(docs, "ServiceMonitor")[0]
    validate_custom(sm, "monitoring.coreos.com-servicemonitors.yaml")
    assert sm["metadata"]["labels"]["release"] == "kps" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    rule = by_kind(docs, "PrometheusRule")[0]
    validate_custom(rule, "monitoring.coreos.com-prometheusrules.yaml")
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text())  # the promtool-tested file, unchanged


def test_a_bad_custom_resource_is_refused_by_the_crd():
    import jsonschema

    rule = by_kind(render(), "PrometheusRule")[0]
    rule["spec"]["groups"][0]["rules"][0]["for"] = ["not", "a", "duration"]
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(rule, "monitoring.coreos.com-prometheusrules.yaml")


def test_switches_leave_pieces_out():
    docs = render({"metrics": {"serviceMonitor": {"enabled": False}}, "alerts": {"enabled": False}})
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PrometheusRule")
    assert not render({"metrics": {"enabled": False}, "alerts": {"enabled": False}, "dashboards": {"enabled": False},
                       "logs": {"fluentBitFilter": {"enabled": False}}})


def test_values_outside_the_schema_are_refused():
    """The chart's values.schema.json knows the monitoring keys: a typo or a wrong type fails the
    render with the schema's message."""
    from tests import helm_chart

    for bad, says in (({"metrics": {"prot": 9464}}, "prot"), ({"alerts": {"slack": {"sendResolved": "yes"}}}, "sendResolved"),
                      ({"config": {"logs": {"elasticsearch": "es:9200"}}}, "elasticsearch")):
        with pytest.raises(Exception) as e:
            helm_chart.render(bad)
        assert says in str(e.value), str(e.value)[:300]


def alertmanager_config(values: dict) -> str:
    secret = [d for d in by_kind(render(values), "Secret") if d["metadata"]["name"] == "rel-sentinels-alertmanager"]
    assert len(secret) == 1
    return secret[0]["stringData"]["alertmanager.yaml"]


def amtool() -> str:
    path = shutil.which("amtool")
    if path is None:
        pytest.skip("amtool is not installed (Debian package prometheus-alertmanager; .ci/run installs it)")
    return path


def test_alertmanager_slack_receiver_passes_amtool(tmp_path):
    text = alertmanager_config({"alerts": {"slack": {"enabled": True, "channel": "#ops"}}})
    cfg = yaml.safe_load(text)
    slack = cfg["receivers"][0]["slack_configs"][0]
    assert slack["send_resolved"] is True and slack["channel"] == "#ops"
    assert slack["api_url_file"] == "/etc/alertmanager/secrets/sentinels-slack-webhook/url"  # never the URL itself
    (tmp_path / "alertmanager.yaml").write_text(text)
    r = subprocess.run([amtool(), "check-config", str(tmp_path / "alertmanager.yaml")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout and "1 receivers" in r.stdout


def test_a_broken_receiver_is_refused(tmp_path):
    """amtool refuses a receiver with a wrong type."""
    text = alertmanager_config({"alerts": {"slack": {"enabled": True}}}).replace("send_resolved: true",
                                                                               "send_resolved: sometimes")
    (tmp_path / "alertmanager.yaml").write_text(text)
    r = subprocess.run([amtool(), "check-config", str(tmp_path / "alertmanager.yaml")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0


def test_promtool_accepts_the_rendered_rule(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    rule = by_kind(render(), "PrometheusRule")[0]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    r = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_fluent_bit_filter_configmap_carries_the_tested_script():
    from tests.chart_render import CHART

    maps = [d for d in by_kind(render(), "ConfigMap") if d["metadata"]["name"] == "rel-sentinels-fluent-bit-lua"]
    assert len(maps) == 1
    data = maps[0]["data"]
    assert data["sentinels.lua"] == (CHART / "files/fluent-bit/sentinels.lua").read_text().rstrip("\n")
    assert "call    sentinels_job" in data["filter.conf"] and "Match   kube.*" in data["filter.conf"]
    assert not [d for d in render({"logs": {"fluentBitFilter": {"enabled": False}}}) if d["kind"] == "ConfigMap"
                and d["metadata"]["name"] == "rel-sentinels-fluent-bit-lua"]
