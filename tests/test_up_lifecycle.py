"""`sentinels up` in the foreground: Ctrl-C stops every child, and the data survives a restart.
`sentinels up -d` tells the truth: a busy port, an unreachable Kubernetes API or a child
dying during start-up fails it with one line naming the cause, and nothing stays running."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sentinels.domain.errors import ConfigError
from sentinels.embedded import natsd
from tests.conftest import wait_http
from tests.test_cli_e2e import cli


def start_foreground(env):
    """`sentinels up` in the foreground, returned once it has started: the API answers and
    the supervisor wrote its pid file (after every component answered its health check)."""
    proc = subprocess.Popen([sys.executable, "-m", "sentinels.cli.main", "up"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(env["SENTINELS_URL"] + "/", proc, timeout=120)
    except RuntimeError:
        raise AssertionError(f"up did not start: {proc.communicate(timeout=60)[0]}") from None
    pid_file = Path(env["SENTINELS_HOME"]) / "run" / "up.pid"
    deadline = time.monotonic() + 120
    while not pid_file.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "up did not finish its start"
        time.sleep(0.05)
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


# --- `up -d` tells the truth: a start that cannot work fails with one line and leaves nothing ---
def stack_env(home, **extra):
    base = natsd.free_block(6)
    return {**os.environ, "SENTINELS_HOME": str(home), "SENTINELS_URL": f"http://127.0.0.1:{base}",
            "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "MLFLOW_TRACKING_URI": "none", **extra}


def processes_of(home) -> list[int]:
    """Every process started for this SENTINELS_HOME (by its environment)."""
    needle = f"SENTINELS_HOME={home}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                environ = open(f"/proc/{entry}/environ", "rb").read() + b"\0"
                status = open(f"/proc/{entry}/status").read().lower()
            except OSError:
                continue
            if needle in environ and "zombie" not in status:
                found.append(int(entry))
    return found


def fails_cleanly(env, *words, timeout=240):
    """`up -d` exits non-zero with one line holding `words`, and nothing of it runs on."""
    r = subprocess.run([sys.executable, "-m", "sentinels.cli.main", "up", "-d"], env=env, capture_output=True, text=True,
                       timeout=timeout)
    lines = r.stderr.strip().splitlines()
    try:
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr + r.stdout
        assert lines and all(w in lines[-1] for w in words), r.stderr
        assert lines[-1].startswith("sentinels: up: ") and not any(ln.startswith("sentinels: up: ") for ln in lines[:-1])
        assert "sentinels up (pid" not in r.stdout
        deadline = time.monotonic() + 30
        while processes_of(env["SENTINELS_HOME"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_of(env["SENTINELS_HOME"]) == [], "a failed start left processes running"
        assert not (Path(env["SENTINELS_HOME"]) / "run" / "up.pid").exists()
    finally:
        for pid in processes_of(env["SENTINELS_HOME"]):
            os.kill(pid, signal.SIGKILL)
    return lines[-1]


def test_a_busy_function_port_is_named_with_its_component(tmp_path):
    env = stack_env(tmp_path)
    port = int(env["SENTINELS_URL"].rsplit(":", 1)[1]) + 1  # the schedule function's
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        fails_cleanly(env, f"port {port} (schedule) is in use")


def test_a_busy_nats_port_is_named_and_the_other_server_is_left_alone(tmp_path):
    env = stack_env(tmp_path / "mine")
    port = int(env["SENTINELS_NATS_URL"].rsplit(":", 1)[1])
    other = natsd.start(tmp_path / "other", port)  # another stack's JetStream on our port
    try:
        fails_cleanly(env, f"port {port} (nats-server) is in use")
        assert other.poll() is None
    finally:
        other.terminate()
        other.wait()


def test_nats_start_never_takes_another_server_for_its_own(tmp_path):
    """The race behind the preflight check: a server that answers on the port but is not ours."""
    port = natsd.free_port()
    other = natsd.start(tmp_path / "other", port)
    try:
        with pytest.raises(ConfigError, match=f"port {port} .nats-server. is in use"):
            natsd.start(tmp_path / "mine", port)
    finally:
        other.terminate()
        other.wait()


def test_an_unreachable_kubernetes_api_stops_the_start(tmp_path):
    dead = natsd.free_port()  # nothing listens there
    (tmp_path / "config.yaml").write_text(f"kubernetes: {{host: 'http://127.0.0.1:{dead}', request_timeout: 3}}\n")
    env = stack_env(tmp_path, SENTINELS_BACKEND="kubernetes")
    line = fails_cleanly(env, "SENTINELS_BACKEND=kubernetes", "unreachable", f"127.0.0.1:{dead}")
    assert "Kubernetes API" in line


def test_a_child_dying_during_start_up_stops_everything(tmp_path):
    broken = tmp_path / "knative"
    broken.mkdir()
    (broken / "triggers.yaml").write_text("kind: Trigger\nspec: [not, a, trigger\n")  # the router cannot load it
    env = stack_env(tmp_path / "home", SENTINELS_KNATIVE_DIR=str(broken))
    fails_cleanly(env, "router exited during start-up", "router.log")


def test_without_the_full_mlflow_package_up_says_so_in_one_line_and_tracks_nothing(tmp_path):
    """The core installs only mlflow-skinny: the local store (SQLAlchemy) and the server (Flask)
    are the `mlflow` extra. Without it `up` says so once and runs with tracking off."""
    code = """
import json, sys
for missing in ("sqlalchemy", "flask", "alembic"):
    sys.modules[missing] = None  # as if only mlflow-skinny were installed
from sentinels.embedded import supervisor
from sentinels.settings import Settings
settings = Settings.load()
notes = supervisor.check_config(settings)
sup = supervisor.Supervisor(settings)
print(json.dumps({"notes": notes, "store": sup.store_uri, "server": sup.mlflow_url, "init": sup.init_mlflow() is None,
                  "env": sup.env("on_job_event")["MLFLOW_TRACKING_URI"]}))
"""
    env = {**os.environ, "SENTINELS_HOME": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    said = [n for n in got["notes"] if "mlflow" in n.lower()]
    assert said == ["MLflow tracking is off: the local store needs the full mlflow package "
                    "(pip install 'sentinels[mlflow]'), or set MLFLOW_TRACKING_URI to an MLflow server"], got["notes"]
    assert (got["store"], got["server"], got["init"], got["env"]) == ("none", None, True, "none")
