"""Bad input never gives a 5xx or a traceback: a property-based fuzz of the submit endpoint.

hypothesis sends structured and binary CloudEvents with hostile specs (deep nesting,
NUL bytes, 5,000-digit numbers, exponents like 1e5000, unicode digits, falsy wrong
types, system paths), wrong methods, paths and content types, to the real submit
function over a real nats-server. Every answer is 2xx or 4xx; a 4xx writes nothing
(records, queue and history unchanged); the server still answers afterwards. The bad
inputs the adversarial run found are also pinned one by one.
"""

import asyncio
import json
import threading
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinels.adapters import jetstream
from sentinels.domain import events
from sentinels.domain.spec import FIELDS
from sentinels.embedded import natsd
from sentinels.functions.submit.openapi import DOCUMENT
from tests.conftest import FunctionServer

STREAMS = ("KV_" + jetstream.JOBS_BUCKET, jetstream.QUEUE_STREAM, jetstream.HISTORY_STREAM)


class Store:
    """A NATS connection on its own loop thread, to count what was written between requests."""

    def __init__(self, url):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.nc = self.call(jetstream.connect(url))
        self.js = self.nc.jetstream(timeout=10)
        self.call(jetstream.ensure(self.js))

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def written(self) -> tuple:
        async def counts():
            return tuple([(await self.js.stream_info(s)).state.last_seq for s in STREAMS])
        return self.call(counts())

    def close(self):
        self.call(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def submit(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz")
    port = natsd.free_port()
    nats = natsd.start(home / "js", port)
    url = f"nats://127.0.0.1:{port}"
    store = Store(url)
    fn = FunctionServer("submit", {"SENTINELS_HOME": str(home), "SENTINELS_NATS_URL": url}, home)
    client = httpx.Client(base_url=fn.url, timeout=30)
    yield client, store, fn
    client.close()
    fn.stop()
    store.close()
    nats.terminate()
    nats.wait()


HOSTILE = st.sampled_from([
    "1e5000", "1e1000000", "²", "٣", "9" * 5000, "\x00", "a\x00b", "/", "/proc/self", "/proc", "/etc/x", "..", "",
    " ", "-1", "1e-40", "0x10", "NaN", "inf", "1Gi\x00", "${HOME}", "🙂", "a" * 200_000,
])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text() | HOSTILE
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=4), max_leaves=12)
SPECS = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), VALUES, max_size=8) | VALUES
RESOURCES = st.fixed_dictionaries({}, optional={"cpu": VALUES, "memory": VALUES, "gpu": VALUES})


def nested(depth: int) -> str:
    return '{"spec": ' + "[" * depth + "]" * depth + "}"


HUGE_NUMBER = b'{"spec": {"image": "python:3.11", "resources": {"cpu": ' + b"9" * 5000 + b"}}}"


@st.composite
def requests(draw):
    spec = draw(SPECS)
    if isinstance(spec, dict) and draw(st.booleans()):
        spec = {"image": "python:3.11", **spec, "resources": draw(RESOURCES)}
    data = {"spec": spec} if draw(st.booleans()) else spec
    mode = draw(st.sampled_from(["binary", "structured", "structured-no-data", "raw"]))
    method = draw(st.sampled_from(["POST"] * 6 + ["PUT", "DELETE", "PATCH", "OPTIONS"]))
    path = draw(st.sampled_from(["/"] * 6 + ["/x", "/submit", "//", "/%00"]))
    ce = {"specversion": "1.0", "type": draw(st.sampled_from([events.JOB_SUBMIT] * 4 + [events.JOB_CANCEL, "x", ""])),
          "source": "fuzz", "id": str(uuid.uuid4())}
    if mode == "binary":
        body = json.dumps(data).encode()
        ctype = draw(st.sampled_from(["application/json", "text/plain", "application/xml", "", "application/json; x=1"]))
        headers = {"content-type": ctype, **{f"ce-{k}": v for k, v in ce.items()}}
    elif mode == "raw":
        body = draw(st.sampled_from([nested(5000).encode(), nested(900).encode(), b"\xff\xfe", b"[1,", b"null",
                                     HUGE_NUMBER]))
        headers = {"content-type": "application/json", **{f"ce-{k}": v for k, v in ce.items()}}
    else:
        event = dict(ce) if mode == "structured-no-data" else {**ce, "data": data}
        body = json.dumps(event).encode()
        headers = {"content-type": "application/cloudevents+json"}
    return method, path, headers, body


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(req=requests())
def test_only_2xx_or_4xx_and_nothing_written_on_4xx(submit, req):
    client, store, fn = submit
    method, path, headers, body = req
    before = store.written()
    r = client.request(method, path, content=body, headers=headers)
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert "Traceback" not in r.text
    if r.status_code >= 400:
        assert "error" in r.json()
        assert store.written() == before, "a refused request wrote something"
    assert fn.proc.poll() is None


def test_the_server_answers_after_the_fuzz(submit):
    client, store, fn = submit
    assert client.get("/").status_code == 200
    r = client.post("/", content=json.dumps({"spec": {"image": "python:3.11", "command": ["true"]}}).encode(),
                    headers={"content-type": "application/json", "ce-specversion": "1.0", "ce-type": events.JOB_SUBMIT,
                             "ce-source": "fuzz", "ce-id": "after"})
    assert r.status_code == 201


SPEC = {"image": "python:3.11", "command": ["true"]}


@pytest.mark.parametrize("spec, words", [
    (dict(SPEC, resources={"cpu": "1e5000"}), "exponent"),
    (dict(SPEC, resources={"cpu": "1e1000000"}), "exponent"),
    (dict(SPEC, resources={"gpu": "²"}), "whole number of GPUs"),
    (dict(SPEC, resources={"memory": "9" * 5000}), "too long for a quantity"),
    (dict(SPEC, env={"A": "x\x00y"}), "NUL"),
    (dict(SPEC, args=["ok", "a\x00"]), "NUL"),
    (dict(SPEC, experiment="exp\x00"), "NUL"),
    (dict(SPEC, env=False), "env: expected a mapping"),
    (dict(SPEC, labels=[]), "labels: expected a mapping"),
    (dict(SPEC, params=0), "params: expected a mapping"),
    (dict(SPEC, outputs="/"), "system directory"),
    (dict(SPEC, outputs="/proc/self"), "system directory"),
    (dict(SPEC, args=["x" * 140_000]), "over the operating system's limit for one argument"),
])
def test_each_bad_input_the_probe_found_is_a_clear_400(submit, spec, words):
    client, store, _ = submit
    before = store.written()
    r = client.post("/", content=json.dumps({"spec": spec}).encode(),
                    headers={"content-type": "application/json", "ce-specversion": "1.0", "ce-type": events.JOB_SUBMIT,
                             "ce-source": "fuzz", "ce-id": str(uuid.uuid4())})
    assert r.status_code == 400 and words in r.json()["error"], r.text
    assert store.written() == before


@pytest.mark.parametrize("method, path, headers, body, status", [
    ("POST", "/", {"content-type": "application/cloudevents+json"}, nested(5000).encode(), 400),
    ("POST", "/", {"content-type": "application/cloudevents+json"},
     json.dumps({"specversion": "1.0", "type": events.JOB_SUBMIT, "source": "s", "id": "no-data"}).encode(), 400),
    ("POST", "/", {"content-type": "application/json", "ce-specversion": "1.0", "ce-type": events.JOB_SUBMIT,
                   "ce-source": "s", "ce-id": "huge"}, HUGE_NUMBER, 400),
    ("PUT", "/", {}, b"{}", 405),
    ("DELETE", "/", {}, b"", 405),
    ("POST", "/anything", {"content-type": "application/json"}, b"{}", 404),
    ("POST", "/", {"content-type": "text/plain", "ce-specversion": "1.0", "ce-type": events.JOB_SUBMIT,
                   "ce-source": "s", "ce-id": "plain"}, json.dumps({"spec": SPEC}).encode(), 415),
])
def test_wrong_shapes_methods_paths_and_content_types(submit, method, path, headers, body, status):
    client, store, _ = submit
    before = store.written()
    r = client.request(method, path, content=body, headers=headers)
    assert r.status_code == status and r.json()["error"], r.text
    assert store.written() == before
    if (method, path) == ("POST", "/"):  # the write's answers are in the OpenAPI document
        assert str(status) in DOCUMENT["paths"]["/"]["post"]["responses"]
