"""The alert function: functions-framework's ASGI app, a real nats-server, real slack_sdk, a local Slack."""

import json
import logging
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from sentinels.adapters import jetstream
from sentinels.domain import capacity_watch, events
from sentinels.domain.errors import ConfigError
from tests.fake_slack import TOKEN, block_problems
from tests.test_alert_capacity import GPU_FULL, QUIET
from tests.test_alert_notify import record

MAIN = Path(__file__).resolve().parent.parent / "functions" / "alert" / "main.py"
NOTIFY = {"default_channel": "#general", "capacity_channel": "#ops", "teams": {"vision": "#vision"},
          "experiments": {"resnet*": "#alerts"}, "kibana_url": "https://kibana.example/app/discover?q={job}"}



def make_app(monkeypatch, home: Path, nats_url: str, slack_env: dict, notify_cfg=NOTIFY):
    """Start the function the way `sentinels up` and Knative do (module import = start-up)."""
    from functions_framework.aio import create_asgi_app

    home.mkdir(exist_ok=True)
    (home / "config.yaml").write_text(yaml.safe_dump({"notify": notify_cfg}))
    for var in ("SLACK_BOT_TOKEN", "SLACK_API_URL", "SLACK_WEBHOOK_URL", "SLACK_CHANNEL", "SENTINELS_NOTIFY"):
        monkeypatch.delenv(var, raising=False)
    for var, value in {"SENTINELS_HOME": str(home), "SENTINELS_NATS_URL": nats_url, **slack_env}.items():
        monkeypatch.setenv(var, value)
    app = create_asgi_app("alert", str(MAIN), "http")
    return app, sys.modules["main"]


@pytest.fixture
async def function(monkeypatch, tmp_path, nats_url, fake):
    """(post, module) for a bot-token alert function; post(type, data, id) -> (status, body)."""
    app, module = make_app(monkeypatch, tmp_path / "home", nats_url,
                           {"SLACK_BOT_TOKEN": TOKEN, "SLACK_API_URL": fake.api_url})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://alert") as client:
        yield poster(client), module
    if module.SERVICE.stores is not None:
        await module.SERVICE.stores.nc.close()


def poster(client):
    async def post(event_type, data, event_id=None, source="sentinels/on_job_event"):
        headers = {"content-type": "application/json", "ce-specversion": "1.0", "ce-type": event_type,
                   "ce-source": source, "ce-id": event_id or str(uuid.uuid4())}
        resp = await client.post("/", content=json.dumps(data).encode(), headers=headers)
        return resp.status_code, resp.json()
    post.client = client
    return post


async def put(js, rec):
    jobs = await jetstream.JetStreamJobs.open(js)
    await jobs.create(rec)
    return rec


async def test_succeeded_job_once_even_when_delivered_twice(function, fake, js, logs):
    post, _ = function
    rec = await put(js, record())
    status, body = await post(events.JOB_SUCCEEDED, {"job": rec["id"]}, event_id=f"{rec['id']}:SUCCEEDED:0")
    assert status == 200 and body == {"sent": ["#vision", "#alerts"], "already_sent": []}
    status, body = await post(events.JOB_SUCCEEDED, {"job": rec["id"]}, event_id=f"{rec['id']}:SUCCEEDED:0")
    assert status == 200 and body == {"sent": [], "already_sent": ["#vision", "#alerts"]}
    assert [m["channel"] for m in fake.messages] == ["#vision", "#alerts"]
    msg = fake.messages[0]
    assert block_problems(msg["blocks"]) == [] and "resnet (ab2cd3ef4g) of alice succeeded" in msg["text"]
    assert "https://kibana.example/app/discover?q=ab2cd3ef4g" in msg["text"]
    kv = await js.key_value("sentinels_alerts")
    assert len(await kv.keys()) == 2


async def test_failed_job_with_log_lines(function, fake, js, logs):
    post, _ = function
    rec = await put(js, record("FAILED", team=None, raw_spec={"image": "python:3.11", "name": "etl", "command": ["x"]},
                               log_tail=["loading", "Traceback (most recent call last):", "ValueError: bad row 17"],
                               exit_code=1))
    status, body = await post(events.JOB_FAILED, {"job": rec["id"], "state": "FAILED"})
    assert status == 200 and body["sent"] == ["#general"]
    (msg,) = fake.messages
    logs_block = next(b["text"]["text"] for b in msg["blocks"] if "Last log lines" in str(b))
    assert "ValueError: bad row 17```" in logs_block and "exit code 1" in str(msg["blocks"])


async def test_capacity_episode_one_message_each(function, fake, logs):
    post, _ = function
    state, sent = None, []
    for t, obs in [(0, GPU_FULL), (300, GPU_FULL), (600, GPU_FULL), (900, GPU_FULL), (1200, QUIET), (1500, QUIET)]:
        state, evs = capacity_watch.step(state, obs, 1_800_000_000 + t)
        for ev in evs:  # what the scheduler sends, delivered twice by the broker
            for _ in range(2):
                status, body = await post(ev["type"], ev["data"], event_id=ev["id"], source=capacity_watch.SOURCE)
                assert status == 200
                sent.append(body)
    assert [b["sent"] for b in sent] == [["#ops"], [], ["#ops"], []]
    assert [m["text"] for m in fake.messages] == [
        "Cluster capacity exhausted: 12 jobs wait for GPUs; 0 of 16 GPUs free for 10 min; largest request 8",
        "Cluster capacity recovered: room again after 20 min; no job waits for room; 6 of 16 GPUs free; "
        "44 of 64 CPU cores free; 156Gi of 256Gi memory free"]
    assert all(block_problems(m["blocks"]) == [] for m in fake.messages)


@pytest.mark.parametrize("event_type, data, why", [
    (events.JOB_SUCCEEDED, {}, "data has no job id"),
    (events.JOB_FAILED, ["not", "a", "mapping"], "data has no job id"),
    (events.JOB_FAILED, {"job": "../etc"}, "data has no job id"),
    (events.JOB_SUCCEEDED, {"job": "zzzzzzzzzz"}, "job zzzzzzzzzz is unknown"),
    (events.CAPACITY_EXHAUSTED, {"summary": "no episode"}, "capacity event without episode"),
    (events.JOB_QUEUED, {"job": "ab2cd3ef4g"}, "is not one the alert function handles"),
])
async def test_bad_or_unknown_events_are_acknowledged_without_a_message(function, fake, js, event_type, data, why, logs):
    post, _ = function
    status, body = await post(event_type, data)
    assert status == 200 and why in body["ignored"]
    assert fake.messages == []
    assert any(why in r.getMessage() for r in logs.records if r.name == "sentinels.alert")


async def test_unfinished_job_sends_nothing(function, fake, js, logs):
    post, _ = function
    rec = await put(js, {**record(), "state": "RUNNING"})
    status, body = await post(events.JOB_SUCCEEDED, {"job": rec["id"]})
    assert status == 200 and "is RUNNING, not finished" in body["ignored"]
    assert fake.messages == []


async def test_not_a_cloudevent_is_a_400(function, fake):
    post, _ = function
    resp = await post.client.post("/", content=b'{"job": "ab2cd3ef4g"}', headers={"content-type": "application/json"})
    assert resp.status_code == 400 and "not a valid CloudEvent" in resp.json()["error"]
    assert fake.messages == []


async def test_slack_outage_answers_503_then_the_redelivery_sends_once(function, fake, js, logs):
    post, _ = function
    rec = await put(js, record("FAILED"))
    fake.fail_with = 1
    status, body = await post(events.JOB_FAILED, {"job": rec["id"]}, event_id="e-1")
    assert status == 503 and "Slack is unavailable" in body["error"]
    status, body = await post(events.JOB_FAILED, {"job": rec["id"]}, event_id="e-1")
    assert status == 200 and body == {"sent": ["#vision", "#alerts"], "already_sent": []}
    status, body = await post(events.JOB_FAILED, {"job": rec["id"]}, event_id="e-1")
    assert body == {"sent": [], "already_sent": ["#vision", "#alerts"]}
    assert [m["channel"] for m in fake.messages] == ["#vision", "#alerts"]


async def test_missing_channel_falls_back_and_the_fallback_is_not_sent_twice(function, fake, js, logs):
    post, _ = function
    fake.channels.discard("#alerts")
    rec = await put(js, record(team=None))
    status, body = await post(events.JOB_SUCCEEDED, {"job": rec["id"]}, event_id="e-2")
    assert status == 200 and body["sent"] == ["#general"]
    assert [m["channel"] for m in fake.messages] == ["#general"]
    assert sum("#alerts: channel_not_found" in r.getMessage() for r in logs.records) == 1


async def test_webhook_sends_one_message_for_several_channels(monkeypatch, tmp_path, nats_url, fake, js, logs):
    app, module = make_app(monkeypatch, tmp_path / "home", nats_url, {"SLACK_WEBHOOK_URL": fake.webhook_url})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://alert") as client:
        post = poster(client)
        rec = await put(js, record())
        for _ in range(2):
            status, _body = await post(events.JOB_SUCCEEDED, {"job": rec["id"]}, event_id="e-3")
            assert status == 200
        health = (await client.get("/")).json()
    await module.SERVICE.stores.nc.close()
    assert [m["via"] for m in fake.messages] == ["webhook"]
    assert health["notifications"] == "Slack incoming webhook"


async def test_invalid_token_at_start_logs_a_clear_error_and_falls_back_to_the_log(monkeypatch, tmp_path, nats_url,
                                                                                   fake, js, logs):
    app, module = make_app(monkeypatch, tmp_path / "home", nats_url,
                           {"SLACK_BOT_TOKEN": "xoxb-revoked", "SLACK_API_URL": fake.api_url})
    errors = [r.getMessage() for r in logs.records if r.levelno == logging.ERROR]
    assert "Slack rejected the bot token (invalid_auth); check SLACK_BOT_TOKEN; notifications go to this log " \
           "until it is fixed" in errors
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://alert") as client:
        rec = await put(js, record())
        status, body = await poster(client)(events.JOB_SUCCEEDED, {"job": rec["id"]})
    await module.SERVICE.stores.nc.close()
    assert status == 200 and body["sent"] == ["#vision", "#alerts"]
    assert fake.messages == []
    assert any(r.getMessage().startswith("notification for #vision: :white_check_mark: resnet (ab2cd3ef4g)")
               for r in logs.records)


def test_bad_notify_configuration_fails_at_start(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="notify configuration: teams.vision"):
        make_app(monkeypatch, tmp_path / "home", "nats://127.0.0.1:1", {}, {"teams": {"vision": "not a channel"}})


async def test_a_preemption_tells_the_victims_channels_who_took_the_room(function, fake, js, logs):
    post, _ = function
    rec = await put(js, {**record(), "state": "QUEUED", "attempts": 2})
    why = "preempted by zz2yy3xx4w (critical, vera) at 2026-12-02T05:00:00.000Z; requeued at the front of normal"
    status, body = await post(events.JOB_REQUEUED, {"job": rec["id"], "state": "QUEUED", "reason": why})
    assert status == 200 and body["sent"] == ["#vision", "#alerts"], body
    msg = fake.messages[0]
    assert block_problems(msg["blocks"]) == [] and "preempted" in msg["blocks"][0]["text"]["text"]
    assert f"resnet ({rec['id']}) of alice (vision): preempted by zz2yy3xx4w (critical, vera)" in msg["text"]
    status, body = await post(events.JOB_REQUEUED, {"job": rec["id"], "state": "QUEUED", "reason": "requeued after: evicted"})
    assert status == 200 and "not a preemption" in body["ignored"]  # an eviction is no one's doing
    muted = await put(js, {**record(), "id": "mm2nn3oo4p", "state": "QUEUED",
                           "spec": {**record()["spec"], "notify": {"on": ["failed"]}}})
    status, body = await post(events.JOB_REQUEUED, {"job": muted["id"], "reason": why})
    assert "nobody asked" in body["ignored"] and len(fake.messages) == 2
