"""The Grafana dashboards: the JSON in the chart is what the generator makes, every query
parses with promql-parser once Grafana's variables are substituted, the experiment
dashboard joins cAdvisor and DCGM to the job's pods, and the chart ships them by label."""

import json
from pathlib import Path

import pytest

from sentinels import dashboards
from tests.chart_render import render

DIR = Path(__file__).resolve().parent.parent / "helm/sentinels/dashboards"


def test_checked_in_json_is_what_the_generator_makes():
    for name, board in dashboards.all_dashboards().items():
        assert json.loads((DIR / name).read_text()) == board, f"regenerate: python -m sentinels.dashboards ({name})"


@pytest.mark.parametrize("name", ["platform.json", "experiment.json"])
def test_every_query_parses(name):
    promql_parser = pytest.importorskip("promql_parser")
    board = json.loads((DIR / name).read_text())
    exprs = dashboards.expressions(board)
    assert len(exprs) >= 8
    for expr in exprs:
        if "$__" in expr:  # Grafana's interval variables are not PromQL: substitute them first
            with pytest.raises(Exception):
                promql_parser.parse(expr)
        promql_parser.parse(dashboards.substitute(expr))


def test_a_broken_query_does_not_parse():
    promql_parser = pytest.importorskip("promql_parser")
    with pytest.raises(Exception):
        promql_parser.parse(dashboards.substitute("sum by (class) (sentinels_queue_jobs"))


def test_experiment_dashboard_joins_usage_to_the_job():
    board = dashboards.experiment()
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "job"]
    exprs = dashboards.expressions(board)
    joined = [e for e in exprs if 'kube_pod_labels{label_sentinels_io_job_id="$job"}' in e]
    for metric in ("container_cpu_usage_seconds_total", "container_memory_working_set_bytes", "DCGM_FI_DEV_GPU_UTIL",
                   "DCGM_FI_DEV_FB_USED"):
        assert any(metric in e for e in joined), metric
    ids = [p["id"] for p in board["panels"]]
    assert ids == sorted(set(ids))


def test_platform_dashboard_covers_every_exporter_family():
    text = " ".join(dashboards.expressions(dashboards.platform()))
    for family in ("queue_jobs", "queue_oldest_wait_seconds", "jobs_submitted_total", "queue_wait_seconds",
                   "start_latency_seconds", "job_duration_seconds", "schedule_pass_duration_seconds",
                   "allocated_gpus", "capacity_slots", "queued_demand_gpus", "handler_errors_total",
                   "dead_letters_total", "slack_send_failures_total", "jetstream_up"):
        assert f"sentinels_{family}" in text, family


def test_chart_ships_dashboards_with_the_sidecar_label():
    maps = [d for d in render() if d["kind"] == "ConfigMap" and "-dashboard-" in d["metadata"]["name"]]
    assert sorted(m["metadata"]["name"] for m in maps) == ["rel-sentinels-dashboard-experiment", "rel-sentinels-dashboard-platform"]
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        (key, text), = m["data"].items()
        assert json.loads(text) == json.loads((DIR / key).read_text())
    assert not [d for d in render({"dashboards": {"enabled": False}}) if "-dashboard-" in d["metadata"]["name"]]


def test_status_links_open_the_experiment_dashboard_and_discover():
    from sentinels.domain import notify

    cfg = notify.NotifyConfig.from_dict({"grafana_url": "https://grafana.example/", "kibana_url": "https://kb.example"})
    links = dict(notify.job_links({"id": "ab2cd3ef4g", "spec": {}}, cfg))
    assert links["Grafana"] == "https://grafana.example/d/sentinels-experiment/sentinels-experiment?var-job=ab2cd3ef4g"
    board = dashboards.experiment()
    assert board["uid"] == "sentinels-experiment" and board["templating"]["list"][1]["name"] == "job"
    assert links["Kibana logs"].startswith("https://kb.example/app/discover#/")
    assert "sentinels_job_id:%22ab2cd3ef4g%22" in links["Kibana logs"]


def test_status_links_open_the_experiment_dashboard_and_discover_for_the_job():
    """A bare Grafana or Kibana address in notify: the links `sentinels status` prints (and
    Slack carries) open the chart's experiment dashboard with its `job` variable, and
    Discover filtered on the field the Fluent Bit filter lifts."""
    from sentinels.domain import notify

    cfg = notify.NotifyConfig.from_dict({"grafana_url": "https://grafana.example/", "kibana_url": "https://kb.example"})
    links = dict(notify.job_links({"id": "ab2cd3ef4g", "name": "n", "owner": "ada", "spec": {}}, cfg))
    uid = dashboards.experiment()["uid"]
    assert links["Grafana"] == f"https://grafana.example/d/{uid}/{uid}?var-job=ab2cd3ef4g"
    assert [v["name"] for v in dashboards.experiment()["templating"]["list"]] == ["datasource", "job"]
    assert links["Kibana logs"].startswith("https://kb.example/app/discover#/")
    assert "sentinels_job_id:%22ab2cd3ef4g%22" in links["Kibana logs"]
