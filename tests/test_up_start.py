"""`sentinels up` tells the truth at start: a busy port, an unreachable Kubernetes API or a
child that dies during start-up make it exit non-zero with one line naming the cause, and
leave nothing running."""

import os
import socket
import subprocess
import sys

import pytest

from sentinels.domain.errors import ConfigError
from sentinels.embedded import natsd, supervisor
from sentinels.settings import Settings


def stack_env(tmp_path, **extra):
    return {**os.environ, "SENTINELS_HOME": str(tmp_path), "SENTINELS_URL": f"http://127.0.0.1:{natsd.free_block(4)}",
            "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", **extra}


def up(env):
    r = subprocess.run([sys.executable, "-m", "cli.main", "up", "-d"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def listening(port):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def error_lines(stderr):
    """The error: one line; the rest of stderr is start-up notes (runtime, identities, Slack)."""
    return [line for line in stderr.splitlines() if line.startswith("sentinels: up:")]


@pytest.mark.parametrize("component", ["nats", "schedule"])
def test_a_busy_port_stops_up_with_one_line_naming_port_and_component(tmp_path, component):
    env = stack_env(tmp_path)
    port = int(env["SENTINELS_NATS_URL"].rsplit(":", 1)[1]) if component == "nats" \
        else int(env["SENTINELS_URL"].rsplit(":", 1)[1]) + 1
    with listening(port):
        r = up(env)
    assert r.returncode != 0
    (line,) = error_lines(r.stderr)
    assert line.startswith(f"sentinels: up: port {port} on 127.0.0.1 ({component}) is not free"), r.stderr
    assert not (tmp_path / "run" / "up.pid").exists() and not (tmp_path / "jetstream").exists()


def test_an_unreachable_kubernetes_api_stops_up(tmp_path):
    (tmp_path / "config.yaml").write_text(f"kubernetes: {{host: 'http://127.0.0.1:{natsd.free_port()}', "
                                          "request_timeout: 2}\n")
    r = up(stack_env(tmp_path, SENTINELS_BACKEND="kubernetes"))
    assert r.returncode != 0
    (line,) = error_lines(r.stderr)
    assert line.startswith("sentinels: up: kubernetes: Kubernetes API unreachable") and "127.0.0.1" in line, r.stderr
    assert not (tmp_path / "run" / "up.pid").exists()


def test_a_child_dying_during_start_up_is_named_and_nothing_is_left_running(tmp_path, monkeypatch):
    env = stack_env(tmp_path)
    monkeypatch.setitem(supervisor.SERVICES, "router", "sentinels.no_such_router")
    settings = Settings.load(env=env)
    sup = supervisor.Supervisor(settings)
    monkeypatch.setattr(sup, "env", lambda: {**env, "PYTHONUNBUFFERED": "1"})
    with pytest.raises(ConfigError) as e:
        sup.start()
    assert e.value.message.startswith("router exited during start-up (code 1): ") and "no_such_router" in e.value.message
    assert all(p.poll() is not None for p in sup.children.values())
    assert not (tmp_path / "run" / "up.pid").exists()
    with listening(settings.nats_port()):  # its NATS port is free again
        pass
