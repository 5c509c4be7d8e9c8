"""The JetStream store against a real nats-server: idempotent set-up, queue order and
positions from server-side counts, compare-and-set updates, history."""

import asyncio
import json

import pytest
from nats.js import api

from sentinels.adapters import jetstream
from sentinels.ports import Conflict

CLASSES = ["critical", "high", "normal", "low"]


def entry(i, klass):
    return {"id": f"job{i:07d}"[:10], "class": klass, "submitted": "t", "cpu_millis": 1000, "memory_bytes": 1, "gpu": 0}


async def test_ensure_is_idempotent_and_keeps_data(js):
    q = jetstream.JetStreamQueue(js)
    jobs = await jetstream.JetStreamJobs.open(js)
    await q.enqueue(entry(1, "high"), "m1")
    await jobs.create({"id": "aaaaaaaaaa", "state": "QUEUED"})
    await jetstream.ensure(js)  # second start
    assert (await q.counts()) == {"high": 1}
    assert (await jobs.get("aaaaaaaaaa"))[0]["state"] == "QUEUED"


async def test_ensure_against_streams_made_with_other_settings(js):
    # someone made SENTINELS_HISTORY by hand with a narrower subject and other limits
    await js.delete_stream(jetstream.HISTORY_STREAM)
    await js.add_stream(api.StreamConfig(name=jetstream.HISTORY_STREAM, subjects=["sentinels.history.keep"],
                                         max_msgs=1000, storage=api.StorageType.MEMORY))
    await js.publish("sentinels.history.keep", b'{"job": "keep"}', stream=jetstream.HISTORY_STREAM)
    await jetstream.ensure(js)
    info = await js.stream_info(jetstream.HISTORY_STREAM)
    assert info.state.messages == 1 and "sentinels.history.*" in info.config.subjects
    assert info.config.max_msgs == 1000  # their settings kept, nothing recreated


async def test_queue_order_counts_and_positions(js):
    q = jetstream.JetStreamQueue(js)
    plan = ["low", "high", "normal", "high", "critical", "low", "normal", "high"]
    seqs = {}
    for i, klass in enumerate(plan):
        seqs[i] = await q.enqueue(entry(i, klass), f"m{i}")
    heads = await q.heads(CLASSES, 50)
    assert [e["class"] for _, e in heads] == ["critical", "high", "high", "high", "normal", "normal", "low", "low"]
    assert [e["id"] for _, e in heads][1:4] == [entry(i, "x")["id"] for i in (1, 3, 7)]  # submission order within class
    assert await q.counts() == {"low": 2, "high": 3, "normal": 2, "critical": 1}
    for pos, (seq, e) in enumerate(heads, start=1):
        assert await q.position(CLASSES, e["class"], seq) == pos
    # removing by sequence moves everyone behind up
    assert await q.remove(seqs[4])
    assert await q.position(CLASSES, "high", seqs[3]) == 2
    assert not await q.remove(seqs[4])  # already gone
    assert [e["id"] for _, e in await q.heads(CLASSES, 2)] == [entry(1, "x")["id"], entry(3, "x")["id"]]


async def test_enqueue_deduplicates_on_msg_id(js):
    q = jetstream.JetStreamQueue(js)
    a = await q.enqueue(entry(1, "high"), "same")
    b = await q.enqueue(entry(1, "high"), "same")
    assert a == b and await q.counts() == {"high": 1}


async def test_cas_update_and_mutate_retries_on_conflict(js):
    jobs = await jetstream.JetStreamJobs.open(js)
    await jobs.create({"id": "bbbbbbbbbb", "n": 0})
    with pytest.raises(Conflict):
        await jobs.create({"id": "bbbbbbbbbb", "n": 9})
    rec, rev = await jobs.get("bbbbbbbbbb")
    await jobs.update({**rec, "n": 1}, rev)
    with pytest.raises(Conflict):
        await jobs.update({**rec, "n": 2}, rev)  # stale revision

    async def bump():
        return await jobs.mutate("bbbbbbbbbb", lambda r: {**r, "n": r["n"] + 1})

    await asyncio.gather(*(bump() for _ in range(10)))  # racing writers, none lost
    assert (await jobs.get("bbbbbbbbbb"))[0]["n"] == 11
    assert await jobs.mutate("bbbbbbbbbb", lambda r: None) is None
    assert await jobs.mutate("nosuchjob0", lambda r: r) is None
    assert len(await jobs.all()) == 1


async def test_history_in_order(js):
    h = jetstream.JetStreamHistory(js)
    for to in ("QUEUED", "SCHEDULED", "RUNNING"):
        await h.append({"job": "cccccccccc", "to": to}, f"cccccccccc:{to}")
    await h.append({"job": "cccccccccc", "to": "RUNNING"}, "cccccccccc:RUNNING")  # duplicate dropped
    await h.append({"job": "dddddddddd", "to": "QUEUED"}, "dddddddddd:QUEUED")
    assert [e["to"] for e in await h.of("cccccccccc")] == ["QUEUED", "SCHEDULED", "RUNNING"]
    assert await h.of("eeeeeeeeee") == []


async def test_sink_publishes_cloudevents(js):
    sink = jetstream.JetStreamSink(js)
    await sink.emit({"type": "io.sentinels.job.queued", "id": "e1", "source": "t", "specversion": "1.0", "data": {}})
    msg = await js.get_msg(jetstream.EVENTS_STREAM, subject="sentinels.events.io_sentinels_job_queued")
    assert json.loads(msg.data)["id"] == "e1"


async def test_requeued_jobs_wait_ahead_of_their_class(js):
    q = jetstream.JetStreamQueue(js)
    a = await q.enqueue(entry(1, "high"), "a")
    b = await q.enqueue(entry(2, "high"), "b")
    c = await q.enqueue(entry(3, "high"), "c", front=True)  # put back after an eviction
    n = await q.enqueue(entry(4, "normal"), "n")
    assert [s for s, _ in await q.heads(CLASSES, 10)] == [c, a, b, n]
    assert await q.counts() == {"high": 3, "normal": 1}
    assert await q.position(CLASSES, "high", c, front=True) == 1
    assert await q.position(CLASSES, "high", a) == 2
    assert await q.position(CLASSES, "normal", n) == 4
