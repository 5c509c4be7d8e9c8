"""A Secret missing on Kubernetes is named in the function's start-up error (one line, no traceback).

The chart references Secrets as optional and tells each function what to expect
(SENTINELS_EXPECT_SECRETS); these tests take that list from the real rendered chart.
"""

import json
import os
import subprocess
import sys

import pytest

from sentinels import expected_secrets
from tests import helm_chart as hc

ROOT = hc.ROOT


def chart_env(function: str) -> dict:
    """The plain env of a rendered function Service, and which names come from Secrets."""
    pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) is not installed")
    (svc,) = [d for d in hc.render_all() if d["kind"] == "Service" and d["metadata"]["name"] == f"sentinels-{function}"]
    env = svc["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value") for e in env}


def test_alert_names_the_missing_slack_secret():
    env = chart_env("alert")
    assert env["SLACK_BOT_TOKEN"] is None and env["SLACK_WEBHOOK_URL"] is None  # from the Secret
    plain = {k: v for k, v in env.items() if v is not None}
    problems = expected_secrets.missing(plain)
    assert any("'sentinels-slack'" in p and "bot-token or webhook-url" in p for p in problems), problems
    assert any("'sentinels-nats'" in p for p in problems)
    present = {**plain, "SLACK_WEBHOOK_URL": "https://hooks.example/x", "SENTINELS_NATS_PASSWORD": "pw"}
    assert expected_secrets.missing(present) == []


def test_submit_names_the_missing_tokens_secret(tmp_path):
    env = {k: v for k, v in chart_env("submit").items() if v is not None}
    problems = expected_secrets.missing(env)
    assert any("'sentinels-tokens' (key tokens.yaml)" in p for p in problems), problems
    wanted = json.loads(env["SENTINELS_EXPECT_SECRETS"])
    (tokens,) = [w for w in wanted if w["secret"] == "sentinels-tokens"]
    assert tokens["file"] == env["SENTINELS_TOKENS_FILE"]


def test_nothing_expected_outside_kubernetes():
    assert expected_secrets.missing({}) == []
    assert expected_secrets.missing({"SENTINELS_EXPECT_SECRETS": "not json"})  # a broken list is reported too


def test_the_function_stops_with_one_line(tmp_path):
    want = json.dumps([{"secret": "sentinels-slack", "key": "bot-token|webhook-url", "env": "SLACK_BOT_TOKEN|SLACK_WEBHOOK_URL"}])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "SENTINELS_"))}
    env.update(SENTINELS_HOME=str(tmp_path), SENTINELS_EXPECT_SECRETS=want, MLFLOW_TRACKING_URI="none")
    proc = subprocess.run([sys.executable, "-c", "import sentinels.functions.alert.main"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("sentinels-alert: cannot start: Secret 'sentinels-slack' (key bot-token or webhook-url)")
