"""Two teams on two job slots in the embedded default, with one preemption, end to end."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sentinels.embedded import natsd

pytestmark = pytest.mark.e2e

TOKENS = {"users": [{"user": "vera", "team": "vision", "role": "user", "token": "vera-token"},
                    {"user": "nils", "team": "nlp", "role": "user", "token": "nils-token"}]}
PRIORITIES = {"classes": {"critical": 1000, "normal": 10, "low": 1}, "default": "normal",
              "roles": {"admin": "critical", "user": "critical"}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    (home / "tokens.yaml").write_text(yaml.safe_dump(TOKENS))
    (home / "priorities.yaml").write_text(yaml.safe_dump(PRIORITIES))
    (home / "config.yaml").write_text(yaml.safe_dump({
        "tokens_file": str(home / "tokens.yaml"), "priorities": str(home / "priorities.yaml"),
        "local": {"slots": 2, "stop_grace": 2},
        "quotas": {"teams": {"vision": {"jobs": 1, "borrowing": {"jobs": 1}}, "nlp": {"jobs": 1}}},
        "preemption": {"classes": ["critical"]},
    }))
    env = {**os.environ, "SENTINELS_HOME": str(home), "SENTINELS_URL": f"http://127.0.0.1:{natsd.free_block(5)}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "SENTINELS_TICK": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db"}
    env.pop("SENTINELS_TOKEN", None)
    up = subprocess.run([sys.executable, "-m", "sentinels.cli.main", "up", "-d"], env=env, capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stderr + up.stdout
    yield env
    subprocess.run([sys.executable, "-m", "sentinels.cli.main", "down"], env=env, capture_output=True, timeout=60)


def cli(env, token, *args):
    r = subprocess.run([sys.executable, "-m", "sentinels.cli.main", *args], env={**env, "SENTINELS_TOKEN": token},
                       capture_output=True, text=True, timeout=60)
    assert "Traceback" not in r.stderr and r.returncode == 0, r.stderr
    return r.stdout.strip()


def status(env, job_id):
    return json.loads(cli(env, "vera-token", "status", job_id, "-o", "json"))


def wait_for(env, job_id, check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = status(env, job_id)
        if check(record):
            return record
        time.sleep(0.3)
    logs = Path(env["SENTINELS_HOME"]) / "logs"
    tails = "\n".join(f"--- {name}\n" + "\n".join((logs / name).read_text(errors="replace").splitlines()[-60:])
                      for name in ("schedule.log", "on_job_event.log", "executor.log") if (logs / name).exists())
    raise AssertionError(f"{job_id}: {record['state']} / {record['reason']}\n{tails}")


def test_borrowing_reclaim_and_preemption(env):
    sleep = ["--", sys.executable, "-c", "import time; time.sleep(600)"]
    v1 = cli(env, "vera-token", "submit", "python:3.11", "--name", "v1", *sleep)
    v2 = cli(env, "vera-token", "submit", "python:3.11", "--name", "v2", *sleep)
    for job_id in (v1, v2):  # the second one borrows nlp's idle slot
        wait_for(env, job_id, lambda r: r["state"] == "RUNNING")
    # nils is within nlp's nominal quota: vision's borrowed job is taken back for him
    n1 = cli(env, "nils-token", "submit", "python:3.11", "--name", "n1", *sleep)
    wait_for(env, n1, lambda r: r["state"] == "RUNNING", timeout=90)
    requeued = [r for r in (status(env, v1), status(env, v2)) if r["state"] == "QUEUED"]
    assert len(requeued) == 1 and requeued[0]["attempts"] == 2
    hist = json.loads(cli(env, "vera-token", "history", requeued[0]["id"], "-o", "json"))
    assert hist[-1]["to"] == "QUEUED" and hist[-1]["reason"].startswith(f"preempted by {n1}"), hist
    # told before SIGTERM, in a file next to its outputs (read by a job that checkpoints on the signal)
    told = Path(env["SENTINELS_HOME"]) / "jobs" / requeued[0]["id"] / "outputs" / ".sentinels-preempted"
    assert told.read_text().startswith(f"preempted by {n1} (normal, nils) at "), told
    # `sentinels share` says who holds what: vision back within its nominal quota, nlp holding its one job
    deadline = time.monotonic() + 30
    while True:
        rows = {r["name"]: r for r in json.loads(cli(env, "nils-token", "share", "-o", "json"))["rows"]}
        if rows["vision"]["holds"]["jobs"] == 1 and rows["nlp"]["holds"]["jobs"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert rows["vision"]["borrowed"] == {"jobs": 0} and rows["nlp"]["holds"]["jobs"] == 1, rows
    assert rows["vision"]["nominal"] == {"jobs": 1} and rows["vision"]["borrowing_limit"] == {"jobs": 1}
    queue = json.loads(cli(env, "vera-token", "queue", "-o", "json"))["jobs"]
    assert [r["share"]["key"] for r in queue] == ["vision"]
    # a critical job of vision's preempts a lower-class job: nils' normal one
    crit = cli(env, "vera-token", "submit", "python:3.11", "--name", "crit", "--priority", "critical", *sleep)
    record = wait_for(env, crit, lambda r: r["state"] in ("RUNNING", "FAILED"), timeout=90)
    assert record["state"] == "RUNNING"
    hist = json.loads(cli(env, "nils-token", "history", n1, "-o", "json"))
    assert any(h["to"] == "QUEUED" and crit in h["reason"] for h in hist), hist
    for job_id in (v1, v2, n1, crit):
        cli(env, "vera-token" if job_id != n1 else "nils-token", "cancel", job_id)
