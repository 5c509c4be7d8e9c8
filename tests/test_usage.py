"""Job usage in the embedded default: the pure accumulation, the executor's sampler on real
processes (psutil), the peaks logged to a real MLflow store at the end, and `sentinels top`."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sentinels.domain import usage
from sentinels.embedded.usage import Sampler, group_sample, read

ROOT = Path(__file__).resolve().parent.parent
JOB = "ab2cd3ef4g"


def test_step_accumulates_cpu_peaks_and_gpu_seconds():
    u = usage.step({}, usage.Sample(100.0, {1: 2.0}, 100, gpus=2, gpu_util=50.0, gpu_memory_bytes=10))
    assert u["cpu_seconds"] == 2.0 and u["cpu_cores"] == 0.0 and u["gpu_seconds"] == 0.0
    u = usage.step(u, usage.Sample(102.0, {1: 4.0, 2: 1.0}, 300, gpus=2, gpu_util=90.0, gpu_memory_bytes=5))
    assert u["cpu_seconds"] == 5.0 and u["cpu_cores"] == 1.5 and u["gpu_seconds"] == 4.0
    u = usage.step(u, usage.Sample(104.0, {2: 1.5}, 50, gpus=2, gpu_util=10.0))  # pid 1 ended
    assert u["cpu_seconds"] == 5.5 and u["cpu_cores"] == 0.25
    assert (u["peak_memory_bytes"], u["peak_cpu_cores"], u["peak_gpu_util"], u["peak_gpu_memory_bytes"]) == (300, 1.5, 90.0, 10)
    end = usage.ended(u)
    assert end["memory_bytes"] == 0 and end["peak_memory_bytes"] == 300 and end["cpu_seconds"] == 5.5
    assert usage.system_metrics(end) == {"system/peak_memory_bytes": 300.0, "system/cpu_seconds": 5.5,
                                         "system/peak_cpu_cores": 1.5, "system/gpu_seconds": 8.0,
                                         "system/peak_gpu_memory_bytes": 10.0,
                                         "system/peak_gpu_utilization_percentage": 90.0}


BURN = "x = bytearray(80 << 20)\nimport time\nt = time.time()\nwhile time.time() - t < 1.5: pass\ntime.sleep(600)\n"


@pytest.fixture
def busy(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", BURN], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def state(pid, outcome=None, run_id=None):
    return {"job": JOB, "record": {"name": "burn", "owner": "ada"}, "outcome": outcome,
            "extra_env": {"MLFLOW_RUN_ID": run_id} if run_id else {},
            "pod": {"phase": "Running" if outcome is None else "Failed", "pgid": pid, "attempt": 1, "gpus": []}}


def test_sampler_follows_a_real_process_and_logs_peaks_to_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("burn"))
    busy = subprocess.Popen([sys.executable, "-c", BURN], start_new_session=True)
    try:
        sampled(tmp_path, busy, client, uri, run.info.run_id)
    finally:
        busy.kill()
        busy.wait()


def sampled(tmp_path, busy, client, uri, run_id):
    (tmp_path / JOB).mkdir()
    clock = [time.time()]
    s = Sampler(tmp_path, wall=lambda: clock[0], mlflow_uri=uri)
    time.sleep(2.5)
    s.tick({JOB: state(busy.pid)})
    first = read(tmp_path / JOB)
    assert first["running"] and first["memory_bytes"] > 80 << 20 and first["cpu_seconds"] > 0.1
    clock[0] += 2
    s.tick({JOB: state(busy.pid)})
    assert read(tmp_path / JOB)["peak_memory_bytes"] > 80 << 20
    busy.kill()
    busy.wait()
    clock[0] += 2
    s.tick({JOB: state(busy.pid, outcome="Failed", run_id=run_id)})
    for t in s.threads:
        t.join(120)
    done = read(tmp_path / JOB)
    assert not done["running"] and done["memory_bytes"] == 0 and done["mlflow"] == "logged"
    metrics = client.get_run(run_id).data.metrics
    assert metrics["system/peak_memory_bytes"] > 80 << 20 and metrics["system/cpu_seconds"] > 0.1
    s.tick({JOB: state(busy.pid, outcome="Failed", run_id=run_id)})  # once only
    assert s.threads == [] or not any(t.is_alive() for t in s.threads)
    assert JOB in s.done


def test_group_sample_sees_only_the_group(busy):
    cpu, rss = group_sample(busy.pid)
    assert list(cpu) == [busy.pid] and rss > 0
    assert group_sample(2 ** 22 + 7) == ({}, 0)


def test_tree_sample_sees_descendants_and_container_lookup_without_engine():
    from sentinels.embedded.usage import container_pid, tree_sample

    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                               "print(c.pid, flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        cpu, rss = tree_sample(parent.pid)
        assert set(cpu) == {parent.pid, child} and rss > 0
    finally:
        parent.kill()
        parent.wait()
    assert tree_sample(2 ** 22 + 7) == ({}, 0)
    assert container_pid("nosuchengine://abc", "x") is None


def top(env, *args):
    r = subprocess.run([sys.executable, "-m", "sentinels.cli.main", "top", *args], env=env, capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_cli_top_reads_the_samples_through_the_api(tmp_path):
    """`sentinels top` asks the read API (the submit function on a real nats-server), which
    reads the executor's samples; the CLI reads no file itself."""
    from tests.conftest import TOKENS, post_ce, submit_stack

    home = tmp_path / "home"
    with submit_stack(home) as fn:
        env = {**os.environ, "SENTINELS_URL": fn.url, "SENTINELS_TOKEN": TOKENS["alice"],
               "SENTINELS_HOME": str(tmp_path / "elsewhere")}
        ids = []
        for running in (True, False):
            status, rec = post_ce(fn.url, "io.sentinels.job.submit", {"spec": {"image": "python:3.11",
                                  "command": ["true"]}}, token=TOKENS["alice"])
            assert status == 201
            ids.append(rec["id"])
            (home / "jobs" / rec["id"]).mkdir(parents=True)
            doc = {**usage.empty(), "job": rec["id"], "name": "burn", "running": running, "at": time.time(),
                   "cpu_cores": 1.25, "peak_cpu_cores": 1.9, "memory_bytes": 3 << 30, "peak_memory_bytes": 4 << 30}
            (home / "jobs" / rec["id"] / "usage.json").write_text(json.dumps(doc))
        live, ended = ids
        r = top(env)
        assert r.returncode == 0 and live in r.stdout and ended not in r.stdout  # running jobs only
        assert "1.25" in r.stdout and "3.0Gi" in r.stdout and "4.0Gi" in r.stdout
        rows = json.loads(top(env, ended, "-o", "json").stdout)  # one job, also after it ended
        assert rows[0]["peak_memory_bytes"] == 4 << 30 and rows[0]["running"] is False
        status, rec = post_ce(fn.url, "io.sentinels.job.submit", {"spec": {"image": "python:3.11",
                              "command": ["true"]}}, token=TOKENS["alice"])
        r = top(env, rec["id"])
        assert r.returncode == 1 and f"no usage recorded for job {rec['id']}" in r.stderr
        r = top(env, "qq2qq3qq4q")
        assert r.returncode == 1 and "job qq2qq3qq4q not found" in r.stderr
        r = top(env, "not-an-id")
        assert r.returncode == 2 and "is not a job id" in r.stderr


async def test_top_on_kubernetes_without_prometheus_says_so():
    from sentinels.adapters.prometheus_usage import PrometheusUsage
    from sentinels.domain.errors import Unavailable
    from sentinels.embedded import natsd

    with pytest.raises(Unavailable, match="SENTINELS_PROMETHEUS_URL") as e:
        await PrometheusUsage(None).usage(None)
    assert "kubectl top pod" in e.value.message
    with pytest.raises(Unavailable, match="is unreachable") as e:
        await PrometheusUsage(f"http://127.0.0.1:{natsd.free_port()}").usage(None)
    assert "\n" not in e.value.message
