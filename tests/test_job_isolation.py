"""Jobs cannot read the platform's secrets, and cannot escape a stop.

As root the stack runs jobs as an unprivileged user (`local.run_as`, `nobody` by
default): the job's id, its minimal environment, its HOME, what it can read of
`$SENTINELS_HOME` (the NATS credentials, the internal token) and of the functions'
/proc/<pid>/environ. A job that `setsid`s a child still has that child stopped.
Tokens given in plaintext are kept only as hashes.
"""

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from sentinels import auth
from sentinels.embedded import machine
from sentinels.embedded.kubelet import Kubelet
from sentinels.adapters.memory import MemorySink
from tests.test_local_executor import finish, kill_leftovers, make_record

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="running jobs as another user needs root")


@pytest.fixture
def request_cleanup():
    todo = []
    yield todo
    for fn in todo:
        fn()


def alive(pid: int) -> bool:
    try:
        return "zombie" not in open(f"/proc/{pid}/status").read().lower()
    except OSError:
        return False


async def test_a_child_that_left_the_group_with_setsid_is_stopped_too(tmp_path):
    kubelet = Kubelet(tmp_path / "jobs", machine.capacity({"cpu": 8, "memory": "8Gi", "stop_grace": 1}), MemorySink())
    kubelet.recover()
    pidfile = tmp_path / "escaped.pid"
    script = f"setsid sleep 300 & echo $! > {pidfile}; sleep 300"
    try:
        kubelet.launch(make_record("eeeeeeeeee", ["/bin/sh", "-c", script]), {})
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        escaped = int(pidfile.read_text())
        assert alive(escaped)
        kubelet.stop("eeeeeeeeee")
        await finish(kubelet, "eeeeeeeeee")
        deadline = time.monotonic() + 10
        while alive(escaped) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not alive(escaped), "the setsid child outlived the stop"
    finally:
        kill_leftovers(tmp_path)


async def test_a_daemon_left_behind_by_a_finished_job_is_killed(tmp_path):
    kubelet = Kubelet(tmp_path / "jobs", machine.capacity({"cpu": 8, "memory": "8Gi", "stop_grace": 1}), MemorySink())
    kubelet.recover()
    pidfile = tmp_path / "daemon.pid"
    try:
        kubelet.launch(make_record("ffffffffff", ["/bin/sh", "-c", f"setsid sleep 300 & echo $! > {pidfile}"]), {})
        state = await finish(kubelet, "ffffffffff")
        assert state["outcome"] == "Complete"
        escaped = int(pidfile.read_text())
        deadline = time.monotonic() + 10
        while alive(escaped) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not alive(escaped)
    finally:
        kill_leftovers(tmp_path)


@ROOT_ONLY
async def test_as_root_jobs_run_as_nobody_with_a_minimal_environment(tmp_path, monkeypatch, request_cleanup):
    monkeypatch.delenv("SENTINELS_RUN_AS", raising=False)
    import shutil
    import tempfile
    from pathlib import Path

    home = Path(tempfile.mkdtemp(prefix="sentinels-isolation-", dir="/tmp"))  # reachable by nobody
    os.chmod(home, 0o755)
    request_cleanup.append(lambda: shutil.rmtree(home, ignore_errors=True))
    (home / "secrets").mkdir(parents=True)
    os.chmod(home / "secrets", 0o700)
    (home / "secrets" / "nats-admin.json").write_text('{"user": "admin", "password": "p"}')
    os.chmod(home / "secrets" / "nats-admin.json", 0o600)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.example/secret")
    monkeypatch.setenv("SENTINELS_TOKEN", "the-admin-token")
    cap = machine.capacity({"cpu": 8, "memory": "8Gi", "stop_grace": 1}, home / "jobs")
    assert cap.run_as == "nobody"
    closed = machine.capacity({"cpu": 8, "memory": "8Gi"}, tmp_path / "jobs")  # under /tmp/pytest-of-root (0700)
    assert closed.run_as is None
    with pytest.raises(Exception, match="cannot reach the job directories"):
        machine.capacity({"cpu": 8, "memory": "8Gi", "run_as": "nobody"}, tmp_path / "jobs")
    kubelet = Kubelet(home / "jobs", cap, MemorySink())
    kubelet.recover()
    script = ("id -u; echo HOME=$HOME; env | sort > env.txt; "
              f"cat {home}/secrets/nats-admin.json && echo READ-SECRET; "
              f"cat /proc/1/environ > /dev/null 2>&1 && echo READ-INIT-ENV; "
              "echo out > $SENTINELS_OUTPUTS/o.txt && echo WROTE-OUTPUTS")
    try:
        kubelet.launch(make_record("gggggggggg", ["/bin/sh", "-c", script]), {})
        await finish(kubelet, "gggggggggg")
        log = (home / "jobs" / "gggggggggg" / "log").read_text()
        assert log.splitlines()[0] == "65534", log
        assert f"HOME={home}/jobs/gggggggggg/work" in log
        assert "READ-SECRET" not in log and "READ-INIT-ENV" not in log and "WROTE-OUTPUTS" in log
        env = (home / "jobs" / "gggggggggg" / "work" / "env.txt").read_text()
        assert "hooks.example" not in env and "the-admin-token" not in env
        names = {line.split("=", 1)[0] for line in env.splitlines()}
        assert names <= {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "TMPDIR", "PWD", "SHLVL", "_", "OLDPWD",
                         "SENTINELS_JOB_ID", "SENTINELS_CONFIG", "SENTINELS_OUTPUTS", "CUDA_VISIBLE_DEVICES"}, names
    finally:
        kill_leftovers(home)


def test_who_runs_the_jobs():
    assert machine.job_user(None, {}, euid=0) == "nobody"
    assert machine.job_user(None, {}, euid=1000) is None
    assert machine.job_user("root", {}, euid=0) is None
    assert machine.job_user(None, {"SENTINELS_RUN_AS": ""}, euid=0) is None
    with pytest.raises(Exception, match="no user"):
        machine.job_user("no-such-user-here", {}, euid=0)


def test_plaintext_tokens_are_kept_only_as_hashes(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({"users": [{"user": "alice", "team": "vision", "token": "s3cret-alice"},
                                              {"user": "bob", "token_sha256": "ab" * 32}]}))
    assert auth.hash_at_rest(path) == 1
    text = path.read_text()
    assert "s3cret-alice" not in text and hashlib.sha256(b"s3cret-alice").hexdigest() in text
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    ids = auth.Identities.load(path)
    assert ids.identify("Bearer s3cret-alice")["user"] == "alice"
    assert auth.hash_at_rest(path) == 0  # nothing left to hash


def test_up_hashes_the_tokens_file_and_says_so(tmp_path):
    from tests.test_cli_e2e import free_block
    from sentinels.embedded import natsd

    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"users": [{"user": "alice", "role": "admin", "token": "s3cret-alice"}]}))
    base = free_block()
    env = {**os.environ, "SENTINELS_HOME": str(tmp_path / "home"), "SENTINELS_URL": f"http://127.0.0.1:{base}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "MLFLOW_TRACKING_URI": "none",
           "SENTINELS_TOKENS_FILE": str(tokens), "SENTINELS_TOKEN": "s3cret-alice"}
    up = subprocess.run([sys.executable, "-m", "sentinels.cli.main", "up", "-d"], env=env, capture_output=True, text=True,
                        timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        assert "1 plaintext token(s) replaced by their SHA-256" in up.stderr
        assert "s3cret-alice" not in tokens.read_text()
        job = subprocess.run([sys.executable, "-m", "sentinels.cli.main", "submit", "python:3.11", "-o", "json", "--", "true"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert job.returncode == 0 and json.loads(job.stdout)["owner"] == "alice", job.stderr
    finally:
        subprocess.run([sys.executable, "-m", "sentinels.cli.main", "down"], env=env, capture_output=True, timeout=60)
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "home" / "logs").glob("*.log"))
    assert "s3cret-alice" not in logs


@ROOT_ONLY
async def test_no_path_a_job_is_given_leads_to_the_tokens_or_the_nats_credentials(tmp_path, monkeypatch,
                                                                                  request_cleanup):
    """The probe: from SENTINELS_CONFIG, SENTINELS_OUTPUTS, HOME and its working directory a
    job walks up to $SENTINELS_HOME and tries the tokens file, config.yaml, the NATS
    credentials, the internal token, the stack's logs and the JetStream store."""
    import shutil
    import tempfile
    from pathlib import Path

    from sentinels.embedded import natsauth, supervisor
    from sentinels.settings import Settings

    monkeypatch.delenv("SENTINELS_RUN_AS", raising=False)
    home = Path(tempfile.mkdtemp(prefix="sentinels-probe-", dir="/tmp"))
    os.chmod(home, 0o755)  # as a fresh `mkdir` leaves it
    request_cleanup.append(lambda: shutil.rmtree(home, ignore_errors=True))
    tokens = home / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"users": [{"user": "alice", "role": "admin", "token": "s3cret-alice"}]}))
    os.chmod(tokens, 0o644)
    (home / "config.yaml").write_text("token: s3cret-alice\n")
    os.chmod(home / "config.yaml", 0o644)
    settings = Settings.load(env={"SENTINELS_HOME": str(home), "SENTINELS_TOKENS_FILE": str(tokens)})
    notes = supervisor.protect_home(settings)
    assert any("tokens file" in n and "0600" in n for n in notes), notes
    natsauth.ensure(home)
    natsauth.internal_token(home)
    (home / "logs" / "submit.log").write_text("a log line\n")
    targets = [tokens, home / "config.yaml", natsauth.credentials_file(home, "admin"),
               natsauth.credentials_file(home, "executor"), natsauth.internal_token(home), home / "logs" / "submit.log"]
    assert all(t.exists() for t in targets)
    cap = machine.capacity({"cpu": 8, "memory": "8Gi", "stop_grace": 1}, home / "jobs")
    assert cap.run_as == "nobody"
    kubelet = Kubelet(home / "jobs", cap, MemorySink())
    kubelet.recover()
    rel = [str(t.relative_to(home)) for t in targets]
    script = ('cat "$SENTINELS_CONFIG" > /dev/null && echo READ-CONFIG; '
              'for base in "$(dirname "$SENTINELS_CONFIG")/../.." "$SENTINELS_OUTPUTS/../../.." "$HOME/../../.." '
              '"$PWD/../../.."; do '
              f'for f in {" ".join(rel)}; do cat "$base/$f" > /dev/null 2>&1 && echo "READ $f"; done; '
              'ls "$base" > /dev/null 2>&1 && echo "LISTED $base"; '
              'ls "$base/jetstream" > /dev/null 2>&1 && echo "LISTED jetstream"; done; echo PROBED')
    try:
        kubelet.launch(make_record("hhhhhhhhhh", ["/bin/sh", "-c", script]), {})
        await finish(kubelet, "hhhhhhhhhh")
        log = (home / "jobs" / "hhhhhhhhhh" / "log").read_text()
        assert "READ-CONFIG" in log and "PROBED" in log, log  # its own configuration it reads
        assert "READ " not in log and "LISTED" not in log, log
    finally:
        kill_leftovers(home)
