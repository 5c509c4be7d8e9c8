"""The embedded broker against a real nats-server and a real HTTP subscriber: Knative's
delivery rules (2xx ack, 5xx retried with back-off, 4xx final, dead letter after the last
try), the trigger table read from Trigger manifests, and the HTTP event sink."""

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from sentinels.adapters import jetstream
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
    r = router.Router(settings, triggers.load(tmp_path))
    task = asyncio.create_task(r.run(tick=3600))
    try:
        sink = jetstream.JetStreamSink(js)
        for ce_id in ("ok", "flaky", "refused", "down"):
            await sink.emit(events.envelope(events.JOB_QUEUED, "tests", ce_id, {"job": ce_id}, "2026-11-28T00:00:00Z"))
        assert await wait_until(lambda: sub.count("flaky") == 3 and sub.count("down") == 3)
        await asyncio.sleep(0.5)  # nothing more may arrive
        assert (sub.count("ok"), sub.count("flaky"), sub.count("refused"), sub.count("down")) == (1, 3, 1, 3)
        assert ("ok", events.JOB_QUEUED, {"job": "ok"}) in sub.seen  # binary mode: data is the body
        dead = [json.loads((await js.get_msg(jetstream.EVENTS_STREAM, seq=s)).data)["id"]
                for s in range(1, (await js.stream_info(jetstream.EVENTS_STREAM)).state.last_seq + 1)
                if (await js.get_msg(jetstream.EVENTS_STREAM, seq=s)).subject.startswith("sentinels.events.deadletter.")]
        assert sorted(dead) == ["down", "refused"]
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
