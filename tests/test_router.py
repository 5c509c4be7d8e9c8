"""The embedded broker against a real nats-server and a real HTTP subscriber: Knative's
delivery rules (2xx ack, 5xx retried with back-off, 4xx final, dead letter after the last
try), the trigger table read from Trigger manifests, and the HTTP event sink."""

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from sentinels.adapters import deadletters, jetstream
from sentinels.domain import events
from sentinels.domain.errors import ConfigError
from sentinels.embedded import router, triggers
from sentinels.settings import Settings
from sentinels.adapters.http_sink import HttpSink

TRIGGER = {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
           "metadata": {"name": "schedule-job-queued"},
           "spec": {"broker": "sentinels", "filter": {"attributes": {"type": events.JOB_QUEUED}},
                    "subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                           "name": "sentinels-schedule"}},
                    "delivery": {"retry": 2, "backoffPolicy": "exponential", "backoffDelay": "PT0.1S"}}}


class Subscriber:
    """Answers each event id with the statuses scripted for it (then 200); records everything."""

    def __init__(self, script):
        self.script, self.seen = script, []
        sub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"] or 0))
                ce_id = self.headers["ce-id"]
                sub.seen.append((ce_id, self.headers["ce-type"], json.loads(body or b"null")))
                todo = sub.script.get(ce_id) or [200]
                status = todo.pop(0) if len(todo) > 1 else todo[0]
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]

    def count(self, ce_id):
        return sum(1 for i, _, _ in self.seen if i == ce_id)


async def wait_until(pred, timeout=10):
    for _ in range(int(timeout / 0.05)):
        if pred():
            return True
        await asyncio.sleep(0.05)
    return False


def test_retry_settings_and_capped_backoff(tmp_path):
    t = triggers.Trigger("x", events.JOB_QUEUED, "schedule", 3, 0.2, True)
    retry = router.Retry.from_dict({"retry_horizon": "2h", "max_backoff": "30s"})
    assert (retry.horizon, retry.max_backoff) == (7200.0, 30.0)
    assert [retry.delay(t, n) for n in (1, 2, 3, 10, 500)] == [0.2, 0.4, 0.8, 30.0, 30.0]
    assert router.Retry().horizon == 24 * 3600
    for bad, words in (({"retry_horizon": "soon"}, "events.retry_horizon"), ({"x": 1}, "unknown key"),
                       ([], "mapping")):
        with pytest.raises(ConfigError, match=words):
            router.Retry.from_dict(bad)
    settings = Settings(home=tmp_path, file={"events": {"retry_horizon": "1h"}})
    assert router.retry_settings(settings, {}).horizon == 3600
    assert router.retry_settings(settings, {"SENTINELS_RETRY_HORIZON": "90"}).horizon == 90


def test_trigger_table_comes_from_the_manifests(tmp_path):
    (tmp_path / "t.yaml").write_text(yaml.safe_dump_all([TRIGGER, {"kind": "Broker", "metadata": {"name": "x"}}]))
    [t] = triggers.load(tmp_path)
    assert (t.name, t.event_type, t.function, t.retry, t.backoff_delay) == ("schedule-job-queued", events.JOB_QUEUED,
                                                                          "schedule", 2, 0.1)
    assert router.delays(t) == [0.1, 0.2]
    real = triggers.load()  # the shipped knative/triggers.yaml
    assert {t.function for t in real} == {"submit", "schedule", "on_job_event", "alert"}
    bad = dict(TRIGGER, spec=dict(TRIGGER["spec"], delivery={"backoffDelay": "soon"}))
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="ISO-8601"):
        triggers.load(tmp_path)


async def test_delivery_retries_then_acks_and_dead_letters_what_is_refused(tmp_path, nats_url, js):
    sub = Subscriber({"flaky": [503, 500, 200], "refused": [400], "down": [503]})
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(TRIGGER))
    settings = Settings(home=tmp_path, url=f"http://127.0.0.1:{sub.port - 1}", nats_url=nats_url)
    r = router.Router(settings, triggers.load(tmp_path), router.Retry(horizon=1.5, max_backoff=0.3))
    task = asyncio.create_task(r.run(tick=3600))
    try:
        sink = jetstream.JetStreamSink(js)
        for ce_id in ("ok", "flaky", "refused", "down"):
            await sink.emit(events.envelope(events.JOB_QUEUED, "tests", ce_id, {"job": ce_id}, "2026-11-28T00:00:00Z"))
        assert await wait_until(lambda: sub.count("flaky") == 3)
        # "down" is retried past the trigger's 2 retries, with a capped back-off, until the horizon
        assert await wait_until(lambda: sub.count("down") >= 5)
        for _ in range(200):
            if await deadletters.count(js) == 2:
                break
            await asyncio.sleep(0.05)
        tries = sub.count("down")
        await asyncio.sleep(0.8)  # past the horizon: nothing more may arrive
        assert sub.count("down") == tries
        assert (sub.count("ok"), sub.count("flaky"), sub.count("refused")) == (1, 3, 1)
        assert ("ok", events.JOB_QUEUED, {"job": "ok"}) in sub.seen  # binary mode: data is the body
        letters = await deadletters.listing(js)
        assert await deadletters.count(js) == 2
        assert sorted(d["event"]["id"] for d in letters) == ["down", "refused"]
        by_id = {d["event"]["id"]: d for d in letters}
        assert by_id["refused"]["reason"] == "refused" and by_id["refused"]["attempts"] == 1
        assert by_id["down"]["reason"].startswith("still failing after") and by_id["down"]["attempts"] == tries
        assert by_id["down"]["trigger"] == "schedule-job-queued" and by_id["down"]["function"] == "schedule"
        # the subscriber is back: a replay delivers the event again and removes its letter
        sub.script["down"] = [200]
        assert await deadletters.replay(js, by_id["down"]["seq"]) == "down"
        assert await wait_until(lambda: sub.count("down") == tries + 1)
        assert [d["event"]["id"] for d in await deadletters.listing(js)] == ["refused"]
        assert await deadletters.replay(js, by_id["down"]["seq"]) is None  # gone
    finally:
        task.cancel()
        await r.nc.close()
        sub.server.shutdown()


async def test_http_sink_posts_binary_mode_cloudevents():
    sub = Subscriber({"bad": [500]})
    sink = HttpSink(f"http://127.0.0.1:{sub.port}/")
    await sink.emit(events.envelope(events.JOB_QUEUED, "tests", "e1", {"job": "x"}, "2026-11-28T00:00:00Z", subject="x"))
    assert sub.seen == [("e1", events.JOB_QUEUED, {"job": "x"})]
    import httpx
    with pytest.raises(httpx.HTTPStatusError):  # the function answers 5xx: the broker redelivers
        await sink.emit(events.envelope(events.JOB_QUEUED, "tests", "bad", {}, "2026-11-28T00:00:00Z"))
    sub.server.shutdown()


async def test_local_http_keeps_connections_and_survives_the_server_closing_them():
    """The router's client against real uvicorn: one connection for many deliveries, a
    chunked answer, a connection the server closed while idle (sent again on a new one),
    and a function that is not there (an OSError for the router to retry)."""
    import uvicorn

    from sentinels.embedded import localhttp, natsd

    peers = set()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        peers.add(scope["client"][1])
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        chunked = scope["path"] == "/chunked"
        headers = [] if chunked else [(b"content-length", str(len(body) + 4).encode())]
        await send({"type": "http.response.start", "status": 202, "headers": headers})
        if chunked:  # no length given: uvicorn sends the pieces chunked
            await send({"type": "http.response.body", "body": b"got ", "more_body": True})
            await send({"type": "http.response.body", "body": body})
        else:
            await send({"type": "http.response.body", "body": b"got " + body})

    port = natsd.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", timeout_keep_alive=1))
    task = asyncio.create_task(server.serve())
    client = localhttp.LocalHttp(timeout=10)
    try:
        assert await wait_until(lambda: server.started)
        url = f"http://127.0.0.1:{port}"
        answers = [await client.post(url + "/", f"event {i}".encode(), {"ce-id": str(i)}) for i in range(5)]
        assert [(a.status_code, a.text) for a in answers] == [(202, f"got event {i}") for i in range(5)]
        assert len(peers) == 1  # kept alive
        assert (await client.post(url + "/chunked", b"in pieces", {})).text == "got in pieces"
        localhttp.IDLE_SECONDS, before = 60.0, localhttp.IDLE_SECONDS  # keep what uvicorn closes meanwhile
        try:
            await asyncio.sleep(1.6)  # past uvicorn's keep-alive timeout: it closed our idle connection
            assert (await client.post(url + "/", b"late", {})).text == "got late"
        finally:
            localhttp.IDLE_SECONDS = before
        assert len(peers) == 2
        with pytest.raises(OSError):
            await client.post(f"http://127.0.0.1:{natsd.free_port()}/", b"nobody", {})
    finally:
        await client.aclose()
        server.should_exit = True
        await task
