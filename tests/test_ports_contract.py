"""One contract for each store port, run against the in-memory twin and the real JetStream
adapter (a real nats-server), so the twins the function tests rely on cannot drift."""

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import pytest
from nats.js import api

from sentinels.adapters import jetstream
from sentinels.adapters.memory import MemoryBoard, MemoryHistory, MemoryJobs, MemoryQueue
from sentinels.domain import names
from sentinels.ports import Board, Conflict, History, JobQueue, JobStore

CLASSES = ["high", "normal", "low"]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Twin:
    jobs: JobStore
    queue: JobQueue
    history: History
    board: Board
    shorten_window: Callable[[float], Awaitable[None]]  # make message-id dedupe last this long
    wait: Callable[[float], Awaitable[None]]  # let this much (fake or real) time pass


@pytest.fixture(params=["memory", "jetstream"])
async def twin(request):
    if request.param == "memory":
        clock = FakeClock()
        queue, history = MemoryQueue(clock=clock), MemoryHistory(clock=clock)

        async def shorten(seconds: float) -> None:
            queue.seen.window = history.seen.window = seconds

        async def wait(seconds: float) -> None:
            clock.now += seconds

        yield Twin(MemoryJobs(), queue, history, MemoryBoard(), shorten, wait)
        return
    nc = await jetstream.connect(request.getfixturevalue("nats_url"))
    js = nc.jetstream(timeout=5)
    await jetstream.ensure(js)

    async def shorten_js(seconds: float) -> None:
        for stream in (names.QUEUE_STREAM, names.HISTORY_STREAM):
            info = await js.stream_info(stream)
            info.config.duplicate_window = seconds
            await js.update_stream(info.config)

    yield Twin(await jetstream.JetStreamJobs.open(js), jetstream.JetStreamQueue(js, nc), jetstream.JetStreamHistory(js),
               await jetstream.JetStreamBoard.open(js), shorten_js, asyncio.sleep)
    await nc.close()


def entry(job_id: str, klass: str) -> dict[str, Any]:
    return {"id": job_id, "class": klass, "submitted": "2026-12-01T00:00:00.000Z", "cpu_millis": 1000,
            "memory_bytes": 1, "gpu": 0}


# --- JobStore ---------------------------------------------------------------------------------
async def test_jobs_create_get_update_by_revision(twin):
    rev = await twin.jobs.create({"id": "aaaaaaaaaa", "state": "QUEUED"})
    assert await twin.jobs.get("aaaaaaaaaa") == ({"id": "aaaaaaaaaa", "state": "QUEUED"}, rev)
    assert await twin.jobs.get("bbbbbbbbbb") is None
    with pytest.raises(Conflict):
        await twin.jobs.create({"id": "aaaaaaaaaa", "state": "RUNNING"})
    rev2 = await twin.jobs.update({"id": "aaaaaaaaaa", "state": "SCHEDULED"}, rev)
    assert rev2 != rev
    with pytest.raises(Conflict):  # a stale revision loses
        await twin.jobs.update({"id": "aaaaaaaaaa", "state": "FAILED"}, rev)
    assert await twin.jobs.get("aaaaaaaaaa") == ({"id": "aaaaaaaaaa", "state": "SCHEDULED"}, rev2)


async def test_jobs_mutate_and_all(twin):
    await twin.jobs.create({"id": "aaaaaaaaaa", "attempts": 1})
    await twin.jobs.create({"id": "bbbbbbbbbb", "attempts": 2})
    assert await twin.jobs.mutate("aaaaaaaaaa", lambda r: dict(r, attempts=r["attempts"] + 10)) == (
        {"id": "aaaaaaaaaa", "attempts": 1}, {"id": "aaaaaaaaaa", "attempts": 11})
    assert await twin.jobs.mutate("aaaaaaaaaa", lambda r: None) is None  # no change chosen
    assert await twin.jobs.mutate("cccccccccc", lambda r: r) is None  # missing
    assert sorted((r["id"], r["attempts"]) for r in await twin.jobs.all()) == [("aaaaaaaaaa", 11), ("bbbbbbbbbb", 2)]


async def test_jobs_mutate_from_a_known_revision(twin):
    rev = await twin.jobs.create({"id": "aaaaaaaaaa", "attempts": 1})
    known = ({"id": "aaaaaaaaaa", "attempts": 1}, rev)
    bump = lambda r: dict(r, attempts=r["attempts"] + 1)  # noqa: E731
    assert await twin.jobs.mutate("aaaaaaaaaa", bump, known=known) == (known[0], {"id": "aaaaaaaaaa", "attempts": 2})
    # a known revision that someone wrote over since: read again, applied to the current record
    assert await twin.jobs.mutate("aaaaaaaaaa", bump, known=known) == (
        {"id": "aaaaaaaaaa", "attempts": 2}, {"id": "aaaaaaaaaa", "attempts": 3})
    assert (await twin.jobs.get("aaaaaaaaaa"))[0]["attempts"] == 3


# --- JobQueue ---------------------------------------------------------------------------------
async def test_queue_order_counts_positions(twin):
    q = twin.queue
    seqs = {}
    for job_id, klass, front in (("n1", "normal", False), ("h1", "high", False), ("n2", "normal", False),
                                 ("r1", "normal", True), ("l1", "low", False)):
        seqs[job_id] = await q.enqueue(entry(job_id, klass), msg_id=job_id, front=front)
    assert [e["id"] for _, e in await q.heads(CLASSES, 10)] == ["h1", "r1", "n1", "n2", "l1"]
    assert [e["id"] for _, e in await q.heads(CLASSES, 2)] == ["h1", "r1"]
    assert [e["id"] for _, e in await q.heads(["high", "normal"], 10)] == ["h1", "r1", "n1", "n2"]  # only those asked
    assert await q.counts() == {"high": 1, "normal": 3, "low": 1}
    assert await q.position(CLASSES, "normal", seqs["n2"]) == 4
    assert await q.position(CLASSES, "normal", seqs["r1"], True) == 2
    assert await q.position(CLASSES, "high", seqs["h1"]) == 1
    assert await q.remove(seqs["r1"]) is True
    assert await q.remove(seqs["r1"]) is False
    assert await q.position(CLASSES, "normal", seqs["n2"]) == 3
    assert await q.counts() == {"high": 1, "normal": 2, "low": 1}


async def test_queue_deduplicates_within_the_window_only(twin):
    await twin.shorten_window(1.0)
    first = await twin.queue.enqueue(entry("d1", "normal"), msg_id="same")
    assert await twin.queue.enqueue(entry("d1", "normal"), msg_id="same") == first
    assert await twin.queue.counts() == {"normal": 1}
    await twin.wait(2.5)  # past the window, the same id is a new message (as JetStream does)
    again = await twin.queue.enqueue(entry("d1", "normal"), msg_id="same")
    assert again != first
    assert await twin.queue.counts() == {"normal": 2}


async def test_queue_window_is_the_streams(twin):
    """The default window of the twin is the one the streams are made with."""
    if isinstance(twin.queue, MemoryQueue):
        assert twin.queue.seen.window == names.DUPLICATE_WINDOW
    else:
        info = await twin.queue.js.stream_info(names.QUEUE_STREAM)  # type: ignore[attr-defined]
        assert info.config.duplicate_window == names.DUPLICATE_WINDOW
        assert isinstance(info.config, api.StreamConfig)


# --- History ----------------------------------------------------------------------------------
async def test_history_of_one_job_in_time_order_deduplicated(twin):
    h = twin.history
    await h.append({"job": "aaaaaaaaaa", "to": "SCHEDULED", "at": "2026-12-01T00:00:02.000Z"}, msg_id="a:2")
    await h.append({"job": "aaaaaaaaaa", "to": "QUEUED", "at": "2026-12-01T00:00:01.000Z"}, msg_id="a:1")
    await h.append({"job": "aaaaaaaaaa", "to": "QUEUED", "at": "2026-12-01T00:00:01.000Z"}, msg_id="a:1")
    await h.append({"job": "bbbbbbbbbb", "to": "QUEUED", "at": "2026-12-01T00:00:00.000Z"}, msg_id="b:1")
    assert [e["to"] for e in await h.of("aaaaaaaaaa")] == ["QUEUED", "SCHEDULED"]
    assert await h.of("cccccccccc") == []


async def test_history_deduplicates_within_the_window_only(twin):
    await twin.shorten_window(1.0)
    await twin.history.append({"job": "aaaaaaaaaa", "to": "QUEUED", "at": "1"}, msg_id="x")
    await twin.history.append({"job": "aaaaaaaaaa", "to": "QUEUED", "at": "1"}, msg_id="x")
    assert len(await twin.history.of("aaaaaaaaaa")) == 1
    await twin.wait(2.5)
    await twin.history.append({"job": "aaaaaaaaaa", "to": "QUEUED", "at": "2"}, msg_id="x")
    assert len(await twin.history.of("aaaaaaaaaa")) == 2


# --- Board ------------------------------------------------------------------------------------
async def test_board_put_get(twin):
    assert await twin.board.get("waiting") is None
    await twin.board.put("waiting", {"reasons": {"a": "no room"}})
    assert await twin.board.get("waiting") == {"reasons": {"a": "no room"}}
    await twin.board.put("waiting", {"reasons": {}})
    assert await twin.board.get("waiting") == {"reasons": {}}


async def test_board_compare_and_set(twin):
    assert await twin.board.read("capacity") == (None, None)
    assert await twin.board.swap("capacity", {"episode": 1}, None) is True
    assert await twin.board.swap("capacity", {"episode": 2}, None) is False  # exists now
    doc, rev = await twin.board.read("capacity")
    assert doc == {"episode": 1} and rev is not None
    assert await twin.board.swap("capacity", {"episode": 3}, rev) is True
    assert await twin.board.swap("capacity", {"episode": 4}, rev) is False  # stale revision
    assert (await twin.board.read("capacity"))[0] == {"episode": 3}
