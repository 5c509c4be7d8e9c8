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
    (home / "config.yaml").write_text(yaml.safe_dump({"notify": {"capacity": {"after": "1s"}}}))
    with FakeSlack() as fake:
        base = free_block()
        env = {**os.environ, "SENTINELS_HOME": str(home), "SENTINELS_URL": f"http://127.0.0.1:{base}",
               "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "SENTINELS_TICK": "1",
               "SLACK_WEBHOOK_URL": fake.webhook_url, "MLFLOW_TRACKING_URI": "none"}
        up = subprocess.run([sys.executable, "-m", "cli.main", "up", "-d"], env=env, capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stderr
        assert "Slack incoming webhook" in up.stderr
        yield env, fake
        subprocess.run([sys.executable, "-m", "cli.main", "down"], env=env, capture_output=True, timeout=60)


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

    huge = cli(env, "submit", "python:3.11", "--cpu", "60", "--name", "huge", "--", "true").stdout.strip()
    assert wait_for(lambda: any("wait" in t and "CPU" in t for t in texts(fake)), timeout=40), texts(fake)
    time.sleep(3)  # several more passes: still one message for the episode
    exhausted = [t for t in texts(fake) if "CPU" in t and "wait" in t]
    assert len(exhausted) == 1, texts(fake)
    cli(env, "cancel", huge)
    assert wait_for(lambda: any("recovered" in t.lower() for t in texts(fake)), timeout=40), texts(fake)
    time.sleep(2)
    assert len([t for t in texts(fake) if "recovered" in t.lower()]) == 1
    assert len(fake.messages) == 4, texts(fake)
