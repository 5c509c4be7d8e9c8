"""A real Prometheus server (Debian package) on loopback scrapes the exporter of a real
`sentinels up -d`, loads the platform rules, and every PromQL expression of the dashboards
and rules evaluates without error against it (Grafana variables substituted first)."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from sentinels import dashboards
from sentinels.embedded import natsd
from tests.test_cli_e2e import cli

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "helm/sentinels/files/prometheus-rules.yaml"


def get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = cond()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{what}: not reached within {timeout} s (last: {last!r})")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    base = natsd.free_block(6)
    env = {**os.environ, "SENTINELS_HOME": str(home), "SENTINELS_URL": f"http://127.0.0.1:{base}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "SENTINELS_TICK": "1",
           "MLFLOW_TRACKING_URI": "none"}
    (home / "config.yaml").write_text(yaml.safe_dump({"local": {"cpu": 2, "memory": "4Gi", "gpu": 0, "slots": 2}}))
    up = subprocess.run([sys.executable, "-m", "sentinels.cli.main", "up", "-d"], env=env, capture_output=True, text=True,
                        timeout=120)
    assert up.returncode == 0, up.stderr + up.stdout
    assert f"metrics at http://127.0.0.1:{base + 4}/metrics" in up.stdout  # `up` says where to scrape
    yield env, base + 4
    subprocess.run([sys.executable, "-m", "sentinels.cli.main", "down"], env=env, capture_output=True, timeout=60)


K8S_JOB = "kk2kk3kk4k"


class Cadvisor:
    """What cAdvisor, kube-state-metrics and the DCGM exporter show for one running job's pod."""

    def __init__(self):
        self.t0 = time.time()

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        pod = {"namespace": "ml", "pod": f"sentinels-{K8S_JOB}-abcde"}
        labels = GaugeMetricFamily("kube_pod_labels", "", labels=["namespace", "pod", "label_sentinels_io_job_id"])
        labels.add_metric([pod["namespace"], pod["pod"], K8S_JOB], 1)
        cpu = CounterMetricFamily("container_cpu_usage_seconds", "", labels=["namespace", "pod", "container"])
        cpu.add_metric([pod["namespace"], pod["pod"], "main"], 0.5 * (time.time() - self.t0))  # half a core
        mem = GaugeMetricFamily("container_memory_working_set_bytes", "", labels=["namespace", "pod", "container"])
        mem.add_metric([pod["namespace"], pod["pod"], "main"], 3 << 30)
        util = GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "", labels=["namespace", "pod", "gpu"])
        fb = GaugeMetricFamily("DCGM_FI_DEV_FB_USED", "", labels=["namespace", "pod", "gpu"])
        for gpu, (u, used) in enumerate(((80, 1024), (60, 2048))):
            util.add_metric([pod["namespace"], pod["pod"], str(gpu)], u)
            fb.add_metric([pod["namespace"], pod["pod"], str(gpu)], used)
        yield from (labels, cpu, mem, util, fb)


@pytest.fixture(scope="module")
def cadvisor():
    from prometheus_client import CollectorRegistry, start_http_server

    reg = CollectorRegistry()
    reg.register(Cadvisor())
    port = natsd.free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=reg)
    yield port
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def prometheus(stack, cadvisor, tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian package prometheus; .ci/run installs it)")
    _, exporter_port = stack
    d = tmp_path_factory.mktemp("prometheus")
    shutil.copy(RULES, d / "rules.yaml")
    (d / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [{"job_name": "sentinels-exporter",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]},
                           {"job_name": "kubernetes-pods", "honor_labels": True,
                            "static_configs": [{"targets": [f"127.0.0.1:{cadvisor}"]}]}]}))
    port = natsd.free_port()
    proc = subprocess.Popen([binary, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=open(d / "log", "wb"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: urllib.request.urlopen(url + "/-/ready", timeout=1).status == 200, 60, "prometheus ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def query(url: str, expr: str) -> dict:
    return get_json(url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


def scalar(url: str, expr: str):
    res = query(url, expr)["data"]["result"]
    return float(res[0]["value"][1]) if res else None


def test_exporter_is_scraped_and_reports_the_queue(stack, prometheus):
    env, port = stack
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "sentinels_queue_jobs{" in text
    # two jobs that can never fit (more CPU than the machine has) wait in class high
    for name in ("big-one", "big-two"):
        cli(env, "submit", "python:3.11", "--cpu", "60", "--priority", "high", "--name", name, "--", "true")
    wait(lambda: scalar(prometheus, 'up{job="sentinels-exporter"}') == 1, 60, "target up")
    wait(lambda: scalar(prometheus, 'sentinels_queue_jobs{class="high"}') == 2, 60, "queue depth scraped")
    assert scalar(prometheus, 'sentinels_queued_demand_cpu_cores{class="high",shape="cpu"}') == 120
    assert scalar(prometheus, "sentinels_capacity_cpu_cores") == 2
    assert scalar(prometheus, 'sentinels_jobs{state="queued"}') == 2
    assert wait(lambda: scalar(prometheus, "sentinels_schedule_pass_duration_seconds_count"), 60, "passes counted")


def test_every_dashboard_and_rule_expression_evaluates(stack, prometheus):
    wait(lambda: scalar(prometheus, 'up{job="sentinels-exporter"}') == 1, 60, "target up")
    exprs = [dashboards.substitute(e) for board in dashboards.all_dashboards().values()
             for e in dashboards.expressions(board)]
    exprs += [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert len(exprs) > 30
    for expr in exprs:
        got = query(prometheus, expr)
        assert got["status"] == "success", (expr, got)


def test_a_broken_expression_is_refused(prometheus):
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as e:
        query(prometheus, "sum by (class (sentinels_queue_jobs")
    assert e.value.code == 400


def test_rules_load_and_are_healthy(stack, prometheus):
    def rules():
        groups = get_json(prometheus + "/api/v1/rules")["data"]["groups"]
        got = [r for g in groups for r in g["rules"]]
        return got if len(got) == 7 and all(r.get("health") == "ok" for r in got) else None

    got = wait(rules, 60, "7 healthy rules")
    assert {r["name"] for r in got} >= {"SentinelsJetStreamUnavailable", "SentinelsExporterDown"}
    firing = {a["labels"]["alertname"] for a in get_json(prometheus + "/api/v1/alerts")["data"]["alerts"]
              if a["state"] == "firing"}
    assert "SentinelsJetStreamUnavailable" not in firing and "SentinelsExporterDown" not in firing


def top(env, *args):
    r = subprocess.run([sys.executable, "-m", "sentinels.cli.main", "top", *args], env=env, capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_top_on_kubernetes_reads_prometheus(prometheus, capsys):
    """The read API's usage source on Kubernetes, against a real Prometheus scraping what
    cAdvisor, kube-state-metrics and DCGM would show; then `top`'s table of its rows."""
    import asyncio

    from sentinels.cli import top as cli_top
    from sentinels.cli.output import emit
    from sentinels.adapters.prometheus_usage import PrometheusUsage

    wait(lambda: scalar(prometheus, 'count(count_over_time(container_cpu_usage_seconds_total[1m]) > 2)'), 60,
         "a few cAdvisor samples")
    rows = asyncio.run(PrometheusUsage(prometheus).usage(None))
    assert [r["job"] for r in rows] == [K8S_JOB]
    row = rows[0]
    assert 0.3 < row["cpu_cores"] < 0.7 and row["memory_bytes"] == 3 << 30 and row["peak_memory_bytes"] == 3 << 30
    assert row["gpu_util"] == 70 and row["gpu_memory_bytes"] == 3 << 30
    assert cli_top.show(asyncio.run(PrometheusUsage(prometheus).usage(K8S_JOB)), K8S_JOB, "table", emit) == 0
    table = capsys.readouterr().out
    assert K8S_JOB in table and "3.0Gi" in table and "70%" in table
    assert asyncio.run(PrometheusUsage(prometheus).usage("zz2zz3zz4z")) == []


def test_a_finished_jobs_peaks_come_from_prometheus(prometheus):
    """What on_job_event logs to the run's MLflow metrics at the end on Kubernetes."""
    import asyncio

    from sentinels.adapters.prometheus_usage import PrometheusUsage, peak_queries

    wait(lambda: scalar(prometheus, 'count(count_over_time(container_cpu_usage_seconds_total[1m]) > 2)'), 60,
         "a few cAdvisor samples")
    for expr in peak_queries(K8S_JOB, 120).values():  # each one valid PromQL for the real server
        assert query(prometheus, expr)["status"] == "success"
    # a subquery sees the series at its steps only: wait for the first step after the first sample
    wait(lambda: len(asyncio.run(PrometheusUsage(prometheus).peaks(K8S_JOB, 120))) == len(peak_queries(K8S_JOB, 1)),
         60, "subquery steps with samples of every series (irate needs two)")
    peaks = asyncio.run(PrometheusUsage(prometheus).peaks(K8S_JOB, 120))
    assert peaks["peak_memory_bytes"] == 3 << 30 and peaks["peak_gpu_memory_bytes"] == 3 << 30
    assert peaks["peak_gpu_util"] == 70 and peaks["cpu_seconds"] > 0 and 0 <= peaks["peak_cpu_cores"] < 1
    assert asyncio.run(PrometheusUsage(prometheus).peaks("zz2zz3zz4z", 120)) == {}


def test_top_in_the_embedded_default_shows_a_running_job(stack):
    env, _ = stack
    burn = "x = bytearray(64 << 20)\nimport time\nt = time.time()\nwhile time.time() - t < 120: pass\n"
    job_id = cli(env, "submit", "python:3.11", "--cpu", "1", "--name", "burner", "--", sys.executable, "-c",
                 burn).stdout.strip()
    try:
        def sampled():
            rows = json.loads(top(env, "-o", "json").stdout)
            mine = [r for r in rows if r["job"] == job_id]
            return mine[0] if mine and mine[0]["peak_memory_bytes"] > 64 << 20 and mine[0]["cpu_seconds"] > 0 else None

        row = wait(sampled, 90, "the job sampled")
        assert row["running"] and row["name"] == "burner"
        assert "burner" in top(env).stdout
    finally:
        cli(env, "cancel", job_id)
