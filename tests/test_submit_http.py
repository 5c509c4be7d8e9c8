"""The submit function over real HTTP (functions-framework + uvicorn) on a real nats-server."""

import asyncio
import json

import pytest
import yaml

from sentinels.adapters import jetstream
from sentinels.embedded import natsd
from tests.conftest import FunctionServer, post_ce

SUBMIT, CANCEL, REPRIO = "io.sentinels.job.submit", "io.sentinels.job.cancel", "io.sentinels.job.reprioritize"
TOKENS = {"alice": "tok-alice", "bob": "tok-bob", "root": "tok-root"}
SPEC = {"image": "python:3.11", "command": ["python", "-c", "print(1)"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    port = natsd.free_port()
    nats = natsd.start(home / "js", port)
    (home / "tokens.yaml").write_text(yaml.safe_dump({"users": [
        {"user": "alice", "team": "vision", "role": "user", "token": TOKENS["alice"]},
        {"user": "bob", "team": "nlp", "role": "user", "token": TOKENS["bob"]},
        {"user": "root", "role": "admin", "token": TOKENS["root"]},
    ]}))
    (home / "priorities.yaml").write_text(yaml.safe_dump({
        "classes": {"critical": 1000, "high": 100, "normal": 10, "low": 1},
        "rules": [{"team": "nlp", "class": "low"}], "roles": {"admin": "critical", "user": "high"}}))
    env = {"SENTINELS_HOME": str(home), "SENTINELS_NATS_URL": f"nats://127.0.0.1:{port}",
           "SENTINELS_TOKENS_FILE": str(home / "tokens.yaml"), "SENTINELS_PRIORITIES": str(home / "priorities.yaml")}
    fn = FunctionServer("submit", env, home)
    yield fn, env
    fn.stop()
    nats.terminate()
    nats.wait()


def read(env, coro_fn):
    async def go():
        nc = await jetstream.connect(env["SENTINELS_NATS_URL"])
        try:
            js = nc.jetstream()
            return await coro_fn(js, await jetstream.JetStreamJobs.open(js), jetstream.JetStreamQueue(js))
        finally:
            await nc.close()
    return asyncio.run(go())


def counts(env):
    return read(env, lambda js, jobs, q: q.counts())


def test_submit_binary_and_structured(stack):
    fn, env = stack
    status, rec = post_ce(fn.url, SUBMIT, {"spec": SPEC}, token=TOKENS["alice"])
    assert status == 201 and rec["state"] == "QUEUED" and rec["owner"] == "alice" and rec["team"] == "vision"
    assert rec["priority"] == "normal"
    status, rec2 = post_ce(fn.url, SUBMIT, {"spec": {**SPEC, "priority": "high"}}, token=TOKENS["alice"], structured=True)
    assert status == 201 and rec2["priority"] == "high"
    status, rec3 = post_ce(fn.url, SUBMIT, {"spec": SPEC}, token=TOKENS["bob"])
    assert rec3["priority"] == "low"  # team rule
    got = read(env, lambda js, jobs, q: jobs.get(rec["id"]))
    assert got[0]["id"] == rec["id"]
    history = read(env, lambda js, jobs, q: jetstream.JetStreamHistory(js).of(rec["id"]))
    assert [h["to"] for h in history] == ["QUEUED"]
    queued = read(env, lambda js, jobs, q: js.get_msg(jetstream.EVENTS_STREAM, subject="sentinels.events.io_sentinels_job_queued"))
    assert json.loads(queued.data)["type"] == "io.sentinels.job.queued"


def test_retried_submit_returns_the_same_job(stack):
    fn, env = stack
    before = counts(env)
    s1, a = post_ce(fn.url, SUBMIT, {"spec": SPEC}, token=TOKENS["alice"], event_id="retry-1")
    s2, b = post_ce(fn.url, SUBMIT, {"spec": SPEC}, token=TOKENS["alice"], event_id="retry-1")
    assert (s1, s2) == (201, 200) and a["id"] == b["id"] and a["queue_seq"] == b["queue_seq"]
    after = counts(env)
    assert sum(after.values()) == sum(before.values()) + 1


@pytest.mark.parametrize("kind,data,token,status,words", [
    (SUBMIT, {"spec": {**SPEC, "bogus": 1}}, "alice", 400, "unknown field"),
    (SUBMIT, {"spec": {"image": "python:3.11"}}, "alice", 400, "command: required here (the local process runtime"),
    (SUBMIT, {"spec": {**SPEC, "name": "Not_DNS"}}, "alice", 400, "DNS-1123"),
    (SUBMIT, {"spec": {**SPEC, "resources": {"memory": "10Zi"}}}, "alice", 400, "unknown unit"),
    (SUBMIT, {"spec": {**SPEC, "resources": {"gpu": 1.5}}}, "alice", 400, "whole number"),
    (SUBMIT, {"spec": {**SPEC, "resources": {"cpu": 1000}}}, "alice", 400, "per-job maximum"),
    (SUBMIT, {"spec": {**SPEC, "data": "/etc"}}, "alice", 400, "outside the data roots"),
    (SUBMIT, {"spec": {**SPEC, "priority": "urgent"}}, "alice", 400, "unknown class"),
    (SUBMIT, {"spec": {**SPEC, "priority": "critical"}}, "alice", 403, "at most 'high'"),
    (SUBMIT, {"spec": {**SPEC, "preemptible": False}}, "alice", 400, "may not declare preemptible: false"),
    (SUBMIT, {"spec": {**SPEC, "preemptible": "no"}}, "alice", 400, "preemptible: expected true or false"),
    (SUBMIT, {"spec": SPEC}, None, 401, "missing bearer token"),
    (SUBMIT, {"spec": SPEC}, "nope", 401, "unknown token"),
    ("io.sentinels.job.explode", {}, "alice", 400, "unknown CloudEvent type"),
    (CANCEL, {"job": "zzzzzzzzzz"}, "alice", 404, "not found"),
    (CANCEL, {"job": "../etc"}, "alice", 400, "not a job id"),
])
def test_bad_requests_write_nothing(stack, kind, data, token, status, words):
    fn, env = stack
    before = counts(env)
    got, body = post_ce(fn.url, kind, data, token=TOKENS.get(token, token))
    assert got == status and words in body["error"]
    assert counts(env) == before


def test_missing_cloudevent_attributes(stack):
    fn, env = stack
    for missing in ("ce-id", "ce-source", "ce-type"):
        headers = {"content-type": "application/json", "ce-specversion": "1.0", "ce-type": SUBMIT,
                   "ce-source": "t", "ce-id": "x", "authorization": f"Bearer {TOKENS['alice']}"}
        del headers[missing]
        import urllib.request
        req = urllib.request.Request(fn.url + "/", data=json.dumps({"spec": SPEC}).encode(), headers=headers, method="POST")
        try:
            urllib.request.urlopen(req)
            raise AssertionError("accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 400 and "CloudEvent" in json.loads(e.read())["error"]


def test_body_over_256k_is_413(stack):
    fn, env = stack
    before = counts(env)
    status, body = post_ce(fn.url, SUBMIT, {"spec": {**SPEC, "env": {"X": "y" * 300_000}}}, token=TOKENS["alice"])
    assert status == 413 and "256 KiB" in body["error"] and counts(env) == before


def test_cancel_rules(stack):
    fn, env = stack
    _, job = post_ce(fn.url, SUBMIT, {"spec": SPEC}, token=TOKENS["alice"])
    status, body = post_ce(fn.url, CANCEL, {"job": job["id"]}, token=TOKENS["bob"])
    assert status == 403 and "only its owner" in body["error"]
    before = counts(env)
    status, rec = post_ce(fn.url, CANCEL, {"job": job["id"]}, token=TOKENS["alice"])
    assert status == 200 and rec["state"] == "CANCELLED"
    assert sum(counts(env).values()) == sum(before.values()) - 1  # removed from the queue
    status, rec = post_ce(fn.url, CANCEL, {"job": job["id"]}, token=TOKENS["alice"])  # twice: harmless
    assert status == 200 and rec["state"] == "CANCELLED"
    _, other = post_ce(fn.url, SUBMIT, {"spec": SPEC}, token=TOKENS["bob"])
    status, rec = post_ce(fn.url, CANCEL, {"job": other["id"]}, token=TOKENS["root"])  # admin may
    assert status == 200 and rec["state"] == "CANCELLED"


def test_reprioritize(stack):
    fn, env = stack
    _, job = post_ce(fn.url, SUBMIT, {"spec": SPEC}, token=TOKENS["alice"])
    status, body = post_ce(fn.url, REPRIO, {"job": job["id"], "priority": "critical"}, token=TOKENS["alice"])
    assert status == 403
    status, rec = post_ce(fn.url, REPRIO, {"job": job["id"], "priority": "high"}, token=TOKENS["alice"])
    assert status == 200 and rec["priority"] == "high" and rec["queue_seq"] != job["queue_seq"]
    q = read(env, lambda js, jobs, q: q.heads(["critical", "high", "normal", "low"], 1000))
    mine = [(seq, e["class"]) for seq, e in q if e["id"] == job["id"]]
    assert mine == [(rec["queue_seq"], "high")]  # moved, not copied
    status, body = post_ce(fn.url, REPRIO, {"job": job["id"], "priority": "high"}, token=TOKENS["bob"])
    assert status == 403


@pytest.mark.slow  # real waits: kept out of `pytest -m fast`
def test_nats_down_is_503_then_a_retry_completes(tmp_path):
    port = natsd.free_port()
    env = {"SENTINELS_HOME": str(tmp_path), "SENTINELS_NATS_URL": f"nats://127.0.0.1:{port}"}
    fn = FunctionServer("submit", env, tmp_path)
    try:
        status, body = post_ce(fn.url, SUBMIT, {"spec": SPEC}, event_id="while-down")
        assert status == 503 and f"127.0.0.1:{port}" in body["error"]
        nats = natsd.start(tmp_path / "js", port)
        try:
            status, rec = post_ce(fn.url, SUBMIT, {"spec": SPEC}, event_id="while-down")
            assert status == 201
            status, again = post_ce(fn.url, SUBMIT, {"spec": SPEC}, event_id="while-down")
            assert status == 200 and again["id"] == rec["id"]
            assert counts(env) == {"normal": 1}
        finally:
            nats.terminate()
            nats.wait()
    finally:
        fn.stop()
