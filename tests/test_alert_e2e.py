"""Slack from the embedded default: a webhook pointing at a local server that answers like
Slack. A succeeded job, a failed job and a capacity episode each give exactly one message."""

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from tests.fake_slack import FakeSlack
from tests.test_cli_e2e import cli, free_block
from sentinels.embedded import natsd


@pytest.fixture(scope="module")
def slack_stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    (home / "config.yaml").write_text(yaml.safe_dump({"notify": {"capacity": {"after": "1s"}},
                                                      "events": {"max_backoff": "1s"},
                                                      "local": {"cpu": 4, "memory": "8Gi"}}))
    with FakeSlack() as fake:
        base = free_block()
        env = {**os.environ, "SENTINELS_HOME": str(home), "SENTINELS_URL": f"http://127.0.0.1:{base}",
               "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "SENTINELS_TICK": "1",
               "SLACK_WEBHOOK_URL": fake.webhook_url, "MLFLOW_TRACKING_URI": "none"}
        up = subprocess.run([sys.executable, "-m", "sentinels.cli.main", "up", "-d"], env=env, capture_output=True, text=True, timeout=400)
        assert up.returncode == 0, up.stderr
        assert "Slack incoming webhook" in up.stderr
        yield env, fake
        subprocess.run([sys.executable, "-m", "sentinels.cli.main", "down"], env=env, capture_output=True, timeout=60)


def texts(fake):
    return [m.get("text", "") for m in fake.messages]


def wait_for(pred, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_one_message_per_ending_and_per_episode(slack_stack):
    env, fake = slack_stack
    ok = cli(env, "submit", "python:3.11", "--name", "fine", "--wait", "--", "true", timeout=120).stdout.strip()
    bad = cli(env, "submit", "python:3.11", "--name", "broken", "--wait", "--", sys.executable, "-c",
              "print('the last words'); raise SystemExit(4)", check=False, timeout=120).stdout.strip()
    assert wait_for(lambda: len(fake.messages) >= 2)
    time.sleep(1.5)  # a redelivery or a duplicate would show up now
    done = [t for t in texts(fake) if ok in t]
    failed = [m for m in fake.messages if bad in m.get("text", "")]
    assert len(done) == 1 and "succeeded" in done[0]
    assert len(failed) == 1 and "failed" in failed[0]["text"]
    assert "the last words" in json.dumps(failed[0]["blocks"]) and "exit code 4" in json.dumps(failed[0]["blocks"])

    # a job that can never fit waits for a bigger machine, not for room: no "cluster full"
    never = cli(env, "submit", "python:3.11", "--cpu", "60", "--name", "never", "--", "true").stdout.strip()
    time.sleep(4)
    assert len(fake.messages) == 2, texts(fake)
    cli(env, "cancel", never)
    sleep = ["--", sys.executable, "-c", "import time; time.sleep(600)"]
    blocker = cli(env, "submit", "python:3.11", "--cpu", "4", "--name", "blocker", *sleep).stdout.strip()
    huge = cli(env, "submit", "python:3.11", "--cpu", "4", "--name", "huge", "--", "true").stdout.strip()
    assert wait_for(lambda: any("CPU cores" in t for t in texts(fake)), timeout=60), texts(fake)
    time.sleep(3)  # several more passes: still one message for the episode
    exhausted = [t for t in texts(fake) if "CPU cores" in t]
    assert len(exhausted) == 1 and "exhausted" in exhausted[0].lower(), texts(fake)  # CPU is what blocks
    cli(env, "cancel", huge, blocker)
    assert wait_for(lambda: any("recovered" in t.lower() for t in texts(fake)), timeout=40), texts(fake)
    time.sleep(2)
    assert len([t for t in texts(fake) if "recovered" in t.lower()]) == 1
    assert len(fake.messages) == 4, texts(fake)


def test_a_slack_outage_longer_than_the_old_retry_budget_loses_nothing(slack_stack):
    env, fake = slack_stack
    before = len(fake.messages)
    fake.fail_with = 15  # the trigger's 5 retries used to be all: now retried up to the horizon
    job = cli(env, "submit", "python:3.11", "--name", "outage", "--wait", "--", "true", timeout=120).stdout.strip()
    assert wait_for(lambda: any(job in t for t in texts(fake)), timeout=90), texts(fake)
    assert fake.fail_with == 0 and len(fake.messages) == before + 1
    dead = json.loads(cli(env, "events", "--dead", "-o", "json").stdout)
    assert dead["count"] == 0


def test_dead_letters_are_counted_listed_and_replayed(slack_stack):
    import asyncio

    from sentinels.adapters import deadletters, jetstream
    from sentinels.domain import events

    env, fake = slack_stack
    job = cli(env, "submit", "python:3.11", "--name", "lost-note", "--wait", "--", "true", timeout=120).stdout.strip()
    assert wait_for(lambda: any(job in t for t in texts(fake)), timeout=60)
    event = events.envelope(events.JOB_SUCCEEDED, "tests", "a-lost-one", {"job": job}, "2026-11-28T00:00:00Z")

    async def bury():
        nc = await jetstream.connect(env["SENTINELS_NATS_URL"], **nats_login(env))
        try:
            await deadletters.add(nc.jetstream(), deadletters.letter("alert-job-succeeded", "alert", event, "refused",
                                                                      1, "2026-11-28T00:00:00Z", "2026-11-28T00:00:01Z"))
        finally:
            await nc.close()

    asyncio.run(bury())
    table = cli(env, "events", "--dead").stdout
    assert table.startswith("1 dead letter") and "a-lost-one" in table and "alert-job-succeeded" in table
    seq = json.loads(cli(env, "events", "--dead", "-o", "json").stdout)["letters"][0]["seq"]
    assert cli(env, "events", "--replay", "999999", check=False).returncode == 1
    assert "a-lost-one" in cli(env, "events", "--replay", str(seq)).stdout
    assert json.loads(cli(env, "events", "--dead", "-o", "json").stdout)["count"] == 0
    # the replay reached the alert function, whose dedupe (event id) sends it once more at most
    assert wait_for(lambda: sum(job in t for t in texts(fake)) == 2, timeout=30), texts(fake)
    bad = cli(env, "events", check=False)
    assert bad.returncode == 2 and "--dead" in bad.stderr


def nats_login(env, user="admin") -> dict:
    from pathlib import Path

    from sentinels.adapters import jetstream

    return {"login": jetstream.credentials(str(Path(env["SENTINELS_HOME"]) / "secrets" / f"nats-{user}.json"))}
