"""The Slack adapter through the real slack_sdk clients against a local server that answers like Slack."""

import logging
import time
from urllib.parse import urlparse

import pytest

from sentinels.adapters import slack
from sentinels.domain import notify
from sentinels.domain.errors import ConfigError, Unavailable
from sentinels.embedded import natsd
from tests.fake_slack import SECRETS, TOKEN, block_problems
from tests.test_alert_notify import record

NOW = "2026-11-28T07:00:00.000Z"



def bot(fake, **kw):
    return slack.SlackNotifier(token=TOKEN, api_url=fake.api_url, default_channel="#general", **kw)


def test_bot_token_posts_blocks_and_fallback_text(fake, logs):
    msg = notify.job_message(record(), NOW)
    assert bot(fake).send("#vision", msg) == "#vision"
    assert len(fake.messages) == 1
    got = fake.messages[0]
    assert got["channel"] == "#vision" and got["text"] == msg["text"] and got["blocks"] == msg["blocks"]
    assert block_problems(got["blocks"]) == []


def test_webhook_posts_once_to_its_own_channel(fake, logs):
    msg = notify.job_message(record("FAILED", log_tail=["boom"]), NOW)
    notifier = slack.notifier_from_env({"SLACK_WEBHOOK_URL": fake.webhook_url})
    assert notifier.kind == "webhook" and notifier.per_channel is False
    notifier.send("", msg)
    assert [(m["via"], m["text"]) for m in fake.messages] == [("webhook", msg["text"])]
    assert "boom" in str(fake.messages[0]["blocks"]) and "failed" in fake.messages[0]["text"]


@pytest.mark.slow  # real waits: kept out of `pytest -m fast`
def test_rate_limit_is_retried_after_retry_after(fake, logs):
    fake.rate_limited, fake.retry_after = 1, 1
    bot(fake).send("#vision", notify.job_message(record(), NOW))
    (t1, p1), (t2, p2) = fake.requests
    assert p1 == p2 == "/api/chat.postMessage" and t2 - t1 >= 1.0
    assert len(fake.messages) == 1


@pytest.mark.slow  # real waits: kept out of `pytest -m fast`
def test_rate_limit_on_the_webhook_is_retried_too(fake, logs):
    fake.rate_limited, fake.retry_after = 1, 1
    slack.SlackNotifier(webhook_url=fake.webhook_url).send("", notify.job_message(record(), NOW))
    assert len(fake.requests) == 2 and fake.requests[1][0] - fake.requests[0][0] >= 1.0 and len(fake.messages) == 1


@pytest.mark.slow  # real waits: kept out of `pytest -m fast`
def test_long_retry_after_and_outages_are_transient_errors(fake, logs):
    fake.rate_limited, fake.retry_after = 1, 60
    started = time.monotonic()
    with pytest.raises(Unavailable, match="ratelimited"):
        bot(fake).send("#vision", notify.job_message(record(), NOW))
    assert time.monotonic() - started < 5  # did not sleep a minute: the broker redelivers later
    fake.fail_with = 1
    with pytest.raises(Unavailable, match="service_unavailable"):
        bot(fake).send("#vision", notify.job_message(record(), NOW))
    dead = f"http://127.0.0.1:{natsd.free_port()}/api/"
    with pytest.raises(Unavailable, match="unreachable"):
        slack.SlackNotifier(token=TOKEN, api_url=dead, default_channel="#general", timeout=1).send("#x", {"text": "t"})
    assert fake.messages == []


def test_channel_not_found_falls_back_to_default_and_is_logged_once(fake, logs):
    notifier = bot(fake)
    msg = notify.job_message(record(), NOW)
    assert notifier.send("#gone", msg) == "#general"
    assert notifier.send("#gone", msg) == "#general"
    assert [m["channel"] for m in fake.messages] == ["#general", "#general"]
    warnings = [r.getMessage() for r in logs.records if r.name == "sentinels.slack" and r.levelno == logging.WARNING]
    assert warnings == ["Slack channel #gone: channel_not_found; sending to the default channel #general instead"]


def test_invalid_auth_is_a_clear_error(fake, logs):
    wrong = slack.SlackNotifier(token="xoxb-wrong", api_url=fake.api_url, default_channel="#general")
    with pytest.raises(ConfigError) as e:
        wrong.check()
    assert e.value.message == "Slack rejected the bot token (invalid_auth); check SLACK_BOT_TOKEN"
    with pytest.raises(ConfigError, match="invalid_auth"):
        wrong.send("#vision", {"text": "x"})
    env = {"SLACK_BOT_TOKEN": "xoxb-wrong", "SLACK_API_URL": fake.api_url}
    with pytest.raises(ConfigError, match=r"Slack rejected the bot token \(invalid_auth\)"):
        slack.start(env, "#general", strict=True)
    fallback = slack.start(env, "#general")  # the function's way: logged, no crash loop
    assert isinstance(fallback, slack.ConsoleNotifier)
    assert any(r.levelno == logging.ERROR and "invalid_auth" in r.getMessage() for r in logs.records)
    bot(fake).check()  # the right token passes
    assert fake.messages == []


def test_webhook_that_slack_does_not_know_is_a_config_error(fake, logs):
    with pytest.raises(ConfigError, match=r"Slack rejected the incoming webhook \(no_service\)"):
        slack.SlackNotifier(webhook_url=fake.url + "/hooks/T000/B000/other").send("", {"text": "x"})


def test_console_when_nothing_is_configured(logs):
    notifier = slack.start({}, "")
    assert isinstance(notifier, slack.ConsoleNotifier)
    notifier.send("#vision", {"text": "resnet succeeded", "blocks": []})
    lines = [r.getMessage() for r in logs.records if r.name == "sentinels.slack"]
    assert lines == ["notifications: no Slack configured (set SLACK_WEBHOOK_URL or SLACK_BOT_TOKEN): notifications go to this log",
                     "notification for #vision: resnet succeeded"]


def test_secrets_reaching_the_sdk_logger_are_redacted(fake, logs):
    """Defence in depth: whatever the SDK logs through our logger loses the token and the webhook path."""
    slack.SlackNotifier(webhook_url=fake.webhook_url)
    bot(fake)
    sdk = logging.getLogger(slack.SDK_LOG)
    sdk.error("Failed to send a request to %s (%s)", fake.webhook_url, urlparse(fake.webhook_url).path)
    sdk.error(f"no luck with {TOKEN}")
    assert [r.getMessage() for r in logs.records if r.name == slack.SDK_LOG] == [
        "Failed to send a request to (redacted) ((redacted))", "no luck with (redacted)"]


def test_configuration_errors():
    with pytest.raises(ConfigError, match="default_channel"):
        slack.notifier_from_env({"SLACK_BOT_TOKEN": TOKEN})
    with pytest.raises(ConfigError, match="http"):
        slack.notifier_from_env({"SLACK_WEBHOOK_URL": "hooks.example/x"})
    with pytest.raises(ConfigError, match="whitespace"):
        slack.notifier_from_env({"SLACK_WEBHOOK_URL": "https://hooks.example/a b"})
    assert slack.notifier_from_env({"SLACK_WEBHOOK_URL": "https://hooks.example/x\n"}).kind == "webhook"  # a file's newline


def test_the_sdk_alone_would_log_the_webhook_url(fake, caplog):
    """Control for the `logs` fixture: without our logger the SDK prints the secret URL at debug."""
    from slack_sdk.webhook import WebhookClient

    caplog.set_level(logging.DEBUG)
    WebhookClient(fake.webhook_url).send(text="x")
    assert SECRETS[1] in caplog.text
