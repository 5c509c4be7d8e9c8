"""`sentinels up` in the foreground: Ctrl-C stops every child, and the data survives a restart."""

import json
import os
import signal
import subprocess
import sys
import time

from sentinels.embedded import natsd
from tests.conftest import wait_http
from tests.test_cli_e2e import cli


def start_foreground(env):
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "up"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_http(env["SENTINELS_URL"] + "/", proc, timeout=120)
    return proc


def children_of(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_ctrl_c_stops_everything_and_a_restart_keeps_the_queue(tmp_path):
    base = natsd.free_block(6)
    env = {**os.environ, "SENTINELS_HOME": str(tmp_path), "SENTINELS_URL": f"http://127.0.0.1:{base}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "MLFLOW_TRACKING_URI": "none"}
    proc = start_foreground(env)
    supervisor = children_of(proc.pid) or [proc.pid]
    kids = [k for s in supervisor for k in children_of(s)] + children_of(proc.pid)
    assert len(kids) >= 7  # nats, executor, four functions, router, exporter
    job_id = cli(env, "submit", "python:3.11", "--cpu", "60", "--name", "stays", "--", "true").stdout.strip()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped" in out and "Traceback" not in out
    time.sleep(0.2)
    alive = [k for k in kids if os.path.exists(f"/proc/{k}") and "zombie" not in open(f"/proc/{k}/status").read().lower()]
    assert alive == [], f"children left running: {alive}"
    assert not (tmp_path / "run" / "up.pid").exists()

    proc = start_foreground(env)
    try:
        status = json.loads(cli(env, "status", job_id, "-o", "json").stdout)
        assert status["state"] == "QUEUED" and status["position"] == 1 and status["name"] == "stays"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
