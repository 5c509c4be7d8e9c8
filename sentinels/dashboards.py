"""The Grafana dashboards, generated in code so every query is one Python string a test can
parse (promql-parser) and evaluate (a real Prometheus): the platform (queue, throughput,
latency, capacity, errors) and one experiment (variable `job`: CPU and memory from cAdvisor
joined to kube-state-metrics' `kube_pod_labels{label_sentinels_io_job_id=...}`, GPU
utilisation and memory from DCGM).

`python -m sentinels.dashboards [DIR]` writes them as JSON into the chart (default
helm/sentinels/dashboards/), where the Grafana sidecar picks them up by label.
"""

import json
import sys
from pathlib import Path

from .domain.notify import GRAFANA_EXPERIMENT

PLATFORM_UID = "sentinels-platform"
EXPERIMENT_UID = GRAFANA_EXPERIMENT.split("/")[2]  # the link `sentinels status` prints opens this one
JOB_VARIABLE = "job"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
# pods of one job: kube-state-metrics exposes the label when metricLabelsAllowlist allows it
JOB_PODS = f'max by (namespace, pod) (kube_pod_labels{{label_sentinels_io_job_id="${JOB_VARIABLE}"}})'


def _join(expr: str) -> str:
    return f"{expr} * on (namespace, pod) group_left() {JOB_PODS}"


def panel(title: str, targets: list[tuple[str, str]], unit: str = "short", kind: str = "timeseries",
          description: str = "") -> dict:
    return {"type": kind, "title": title, "description": description, "datasource": DATASOURCE,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
            "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "datasource": DATASOURCE}
                        for i, (expr, legend) in enumerate(targets)]}


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def _layout(panels: list[dict]) -> list[dict]:
    """Two panels per line, rows across the whole width; ids and grid positions in order."""
    y, x, out = 0, 0, []
    for i, p in enumerate(panels, start=1):
        p = dict(p, id=i)
        if p["type"] == "row":
            y += 0 if x == 0 else 8
            p["gridPos"] = {"h": 1, "w": 24, "x": 0, "y": y}
            y, x = y + 1, 0
        else:
            p["gridPos"] = {"h": 8, "w": 12, "x": x, "y": y}
            x = 12 if x == 0 else 0
            y += 8 if x == 0 else 0
        out.append(p)
    return out


def _datasource_var() -> dict:
    return {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1}


def dashboard(uid: str, title: str, panels: list[dict], variables: list[dict], description: str) -> dict:
    return {"uid": uid, "title": title, "description": description, "tags": ["sentinels"], "timezone": "browser",
            "editable": True, "schemaVersion": 39, "version": 1, "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"}, "templating": {"list": [_datasource_var(), *variables]},
            "annotations": {"list": []}, "links": [], "panels": _layout(panels)}


def quantile(q: float, metric: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket[{RATE}])))"


def platform() -> dict:
    panels = [
        row("Queue"),
        panel("Waiting jobs per class", [("sum by (class) (sentinels_queue_jobs)", "{{class}}")]),
        panel("Oldest wait per class", [("max by (class) (sentinels_queue_oldest_wait_seconds)", "{{class}}")], "s"),
        panel("Jobs per state", [("sum by (state) (sentinels_jobs)", "{{state}}")]),
        panel("Waiting demand (what the autoscaler should add)", [
            ("sum(sentinels_queued_demand_cpu_cores)", "CPU cores"), ("sum(sentinels_queued_demand_gpus)", "GPUs")]),
        row("Throughput"),
        panel("Submitted per second", [(f"sum by (class) (rate(sentinels_jobs_submitted_total[{RATE}]))", "{{class}}")],
              "ops"),
        panel("Finished per second", [(f"sum by (state) (rate(sentinels_jobs_finished_total[{RATE}]))", "{{state}}")],
              "ops"),
        row("Latency"),
        panel("Time in queue (p50, p95)", [
            (quantile(0.5, "sentinels_queue_wait_seconds", "class"), "p50 {{class}}"),
            (quantile(0.95, "sentinels_queue_wait_seconds", "class"), "p95 {{class}}")], "s"),
        panel("Submit to start (p95)", [(quantile(0.95, "sentinels_start_latency_seconds", "class"), "{{class}}")], "s"),
        panel("Job duration by end state (p50)", [(quantile(0.5, "sentinels_job_duration_seconds", "state"), "{{state}}")],
              "s"),
        panel("Scheduling pass (p95) and jobs placed per pass", [
            (f"histogram_quantile(0.95, sum by (le) (rate(sentinels_schedule_pass_duration_seconds_bucket[{RATE}])))",
             "pass p95 (s)"),
            (f"sum(rate(sentinels_schedule_placed_jobs_sum[{RATE}])) / sum(rate(sentinels_schedule_placed_jobs_count[{RATE}]))",
             "placed per pass")]),
        row("Capacity"),
        panel("CPU cores: allocated / capacity", [
            ("sentinels_allocated_cpu_cores", "allocated"), ("sentinels_capacity_cpu_cores", "capacity")]),
        panel("Memory: allocated / capacity", [
            ("sentinels_allocated_memory_bytes", "allocated"), ("sentinels_capacity_memory_bytes", "capacity")], "bytes"),
        panel("GPUs: allocated / capacity", [
            ("sentinels_allocated_gpus", "allocated"), ("sentinels_capacity_gpus", "capacity")]),
        panel("Slots: allocated / capacity", [
            ("sentinels_allocated_slots", "allocated"), ("sentinels_capacity_slots", "capacity")]),
        row("Errors"),
        panel("Handler errors per function", [
            (f"sum by (function) (increase(sentinels_handler_errors_total[{RATE}]))", "{{function}}")]),
        panel("Redeliveries and dead letters", [
            (f"sum by (trigger) (increase(sentinels_broker_redeliveries_total[{RATE}]))", "redelivered {{trigger}}"),
            (f"sum by (trigger) (increase(sentinels_dead_letters_total[{RATE}]))", "dead letter {{trigger}}")]),
        panel("Slack sends and failures", [
            (f"sum(increase(sentinels_slack_sends_total[{RATE}]))", "sent"),
            (f"sum(increase(sentinels_slack_send_failures_total[{RATE}]))", "failed")]),
        panel("JetStream and cluster reachable; storage used", [
            ("min(sentinels_jetstream_up)", "JetStream up"), ("min(sentinels_cluster_up)", "cluster up"),
            ("sum(sentinels_jetstream_storage_bytes)", "storage bytes")]),
    ]
    return dashboard(PLATFORM_UID, "sentinels / platform", panels, [],
                     "Queue, throughput, latency, capacity and errors of the sentinels job queue.")


def experiment() -> dict:
    variable = {"name": JOB_VARIABLE, "label": "Job id", "type": "query", "datasource": DATASOURCE,
                "query": {"query": "label_values(kube_pod_labels, label_sentinels_io_job_id)", "refId": "jobs"},
                "definition": "label_values(kube_pod_labels, label_sentinels_io_job_id)", "refresh": 2,
                "current": {}, "hide": 0, "includeAll": False, "multi": False, "sort": 1, "allowCustomValue": True}
    cpu = f'sum by (pod) (rate(container_cpu_usage_seconds_total{{container!="", container!="POD"}}[{RATE}]))'
    mem = 'sum by (pod) (container_memory_working_set_bytes{container!="", container!="POD"})'
    panels = [
        row("CPU and memory (cAdvisor, kube-state-metrics)"),
        panel("CPU used (cores) and requested", [
            (_join(cpu), "used {{pod}}"),
            (_join('sum by (namespace, pod) (kube_pod_container_resource_requests{resource="cpu"})'),
             "requested {{pod}}")]),
        panel("Memory working set and limit", [
            (_join(mem), "used {{pod}}"),
            (_join('sum by (namespace, pod) (kube_pod_container_resource_limits{resource="memory"})'), "limit {{pod}}")],
              "bytes"),
        panel("Peak memory over the range", [(f"max_over_time(({_join(mem)})[$__range:])", "{{pod}}")], "bytes", "stat"),
        panel("CPU-seconds over the range", [(f"sum(increase(({_join(cpu)})[$__range:]))", "cpu-seconds")], "s", "stat"),
        row("GPU (DCGM exporter, honorLabels)"),
        panel("GPU utilisation", [(_join("avg by (namespace, pod, gpu) (DCGM_FI_DEV_GPU_UTIL)"), "GPU {{gpu}} {{pod}}")],
              "percent"),
        panel("GPU memory used", [(_join("sum by (namespace, pod, gpu) (DCGM_FI_DEV_FB_USED)"), "GPU {{gpu}} {{pod}}")],
              "decmbytes"),
    ]
    return dashboard(EXPERIMENT_UID, "sentinels / experiment", panels, [variable],
                     "CPU, memory and GPU use of one sentinels job (pods labelled sentinels.io/job-id).")


def all_dashboards() -> dict[str, dict]:
    return {"platform.json": platform(), "experiment.json": experiment()}


def expressions(board: dict) -> list[str]:
    """Every PromQL query of a dashboard (panel targets and query variables)."""
    out = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for v in board["templating"]["list"]:
        if v["type"] == "query":  # label_values(SELECTOR, LABEL): the selector is the PromQL part
            out.append(v["definition"].removeprefix("label_values(").rsplit(",", 1)[0])
    return out


def substitute(expr: str, job: str = "abcdefghij") -> str:
    """A query with Grafana's variables replaced as Grafana would, so PromQL tools can read it."""
    return (expr.replace("$__rate_interval", "1m").replace("[$__range:]", "[1h:]").replace("$__range", "1h")
            .replace(f"${JOB_VARIABLE}", job))


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "helm/sentinels/dashboards"
    out.mkdir(parents=True, exist_ok=True)
    for name, board in all_dashboards().items():
        (out / name).write_text(json.dumps(board, indent=2) + "\n")
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
