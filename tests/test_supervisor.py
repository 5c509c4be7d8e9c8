"""The supervisor keeps every part alive and owns its children.

nats-server killed -9 is restarted like the functions, health reflects JetStream, the
restart back-off starts again after a healthy minute, and a supervisor killed -9 takes
its children with it (parent-death signal), so the next `up` starts clean.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from sentinels.embedded import natsd, supervisor
from sentinels.settings import Settings
from tests.test_alert_e2e import wait_for
from tests.test_cli_e2e import cli
from tests.test_up_lifecycle import children_of, start_foreground


def health(url):
    try:
        with urllib.request.urlopen(url + "/", timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return None, {}


def named_children(pid):
    out = {}
    for kid in children_of(pid):
        try:
            cmd = open(f"/proc/{kid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        text = b" ".join(cmd).decode(errors="replace")
        out["nats" if "nats-server" in text else text.split()[-1] if "serve" in text else text] = kid
    return out


@pytest.fixture
def up(tmp_path):
    base = natsd.free_block(4)
    env = {**os.environ, "SENTINELS_HOME": str(tmp_path), "SENTINELS_URL": f"http://127.0.0.1:{base}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "MLFLOW_TRACKING_URI": "none"}
    proc = start_foreground(env)
    yield env, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_nats_killed_is_restarted_and_health_says_so_meanwhile(up):
    env, proc = up
    nats = named_children(proc.pid)["nats"]
    assert health(env["SENTINELS_URL"])[1]["jetstream"] == "ok"
    os.kill(nats, signal.SIGKILL)
    # while it is down, health is not "ok"; then the supervisor brings it back
    assert wait_for(lambda: named_children(proc.pid).get("nats") not in (None, nats), 60)
    assert wait_for(lambda: health(env["SENTINELS_URL"])[0] == 200, 180)
    job = cli(env, "submit", "python:3.11", "--cpu", "0.1", "--", "true").stdout.strip()
    assert wait_for(lambda: json.loads(cli(env, "status", job, "-o", "json").stdout)["state"] == "SUCCEEDED", 180)


def test_health_is_503_while_jetstream_is_down(up):
    env, proc = up
    nats = named_children(proc.pid)["nats"]
    os.kill(nats, signal.SIGSTOP)  # frozen: the HTTP server answers, JetStream does not
    try:
        seen = []
        assert wait_for(lambda: seen.append(health(env["SENTINELS_URL"])) or seen[-1][0] == 503, 30), seen
        status, body = seen[-1]
        assert body["ok"] is False and body["jetstream"].startswith("unavailable")
    finally:
        os.kill(nats, signal.SIGCONT)
    assert wait_for(lambda: health(env["SENTINELS_URL"])[0] == 200, 30)


def test_supervisor_killed_9_takes_its_children_with_it(up):
    env, proc = up
    kids = list(children_of(proc.pid))
    assert len(kids) >= 6
    proc.kill()
    proc.wait()

    def gone():
        return not [k for k in kids if os.path.exists(f"/proc/{k}")
                    and "zombie" not in open(f"/proc/{k}/status").read().lower()]

    assert wait_for(gone, 30), "children outlived the supervisor"
    again = start_foreground(env)  # the next up starts clean on the same ports
    try:
        assert health(env["SENTINELS_URL"])[0] == 200
    finally:
        again.send_signal(signal.SIGINT)
        again.communicate(timeout=60)


def test_restart_backoff_resets_after_a_healthy_minute(tmp_path, monkeypatch, capsys):
    sup = supervisor.Supervisor(Settings.load(env={"SENTINELS_HOME": str(tmp_path)}))
    restarted = []

    def restart(name):
        restarted.append(name)
        sup.children[name] = subprocess.Popen([sys.executable, "-c", "pass"])
        sup.started[name] = time.monotonic() - (120 if len(restarted) == 3 else 0)  # the third ran "a minute"

    monkeypatch.setattr(sup, "restart", restart)
    monkeypatch.setattr(supervisor, "backoff", lambda n: 0.0)
    sup.children["x"] = subprocess.Popen([sys.executable, "-c", "pass"])
    sup.started["x"] = time.monotonic()
    threading.Timer(3.0, lambda: setattr(sup, "stopping", True)).start()
    sup.watch()
    numbers = [int(line.rsplit("#", 1)[1]) for line in capsys.readouterr().err.splitlines() if "restart #" in line]
    assert numbers[:5] == [1, 2, 3, 1, 2]


def test_backoff_is_capped():
    assert supervisor.backoff(1) < supervisor.backoff(2) < supervisor.backoff(3)
    assert supervisor.backoff(50) == supervisor.MAX_BACKOFF
