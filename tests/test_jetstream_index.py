"""The job store's indexes and retention on a real nats-server: listings are newest first,
paged by the server's counts, and a finished record leaves the bucket after its retention."""

import asyncio

import pytest

from sentinels.adapters import jetstream
from sentinels.adapters.jetstream_index import FINISHED_STREAM, INDEX_STREAM, token
from sentinels.adapters.memory import MemoryJobs


def record(i, owner, team="t", state="QUEUED", sweep=None):
    r = {"id": f"job{i:07d}", "owner": owner, "team": team, "state": state, "submitted_at": f"{i:09d}"}
    if sweep:
        r["sweep"] = {"id": sweep, "index": i}
    return r


async def walk(jobs, kind, limit, **filters):
    out, cursor = [], None
    while True:
        ids, cursor, _ = await jobs.listing(kind, before=cursor, limit=limit, **filters)
        out += ids
        if cursor is None:
            return out


async def fill(jobs):
    owners = ["alice", "bob", "a.b c"]  # a name that is not a subject token
    made = [record(i, owners[i % 3], team="vision" if i % 3 == 0 else None, sweep="sw1" if i % 5 == 0 else None)
            for i in range(300)]
    for r in made:
        await jobs.create(r)
    for r in made[:120]:  # these end
        got, rev = await jobs.get(r["id"])
        await jobs.update({**got, "state": "SUCCEEDED"}, rev)
    return made


@pytest.mark.parametrize("store", ["jetstream", "memory"])
async def test_listings_newest_first_paged_and_filtered(js, store):
    jobs = await jetstream.JetStreamJobs.open(js) if store == "jetstream" else MemoryJobs()
    made = await fill(jobs)
    live = [r["id"] for r in made[120:]][::-1]
    done = [r["id"] for r in made[:120]][::-1]
    assert await walk(jobs, "active", 50) == live
    assert await walk(jobs, "active", 7, owner="bob") == [i for i in live if made[int(i[3:])]["owner"] == "bob"]
    assert await walk(jobs, "done", 13, owner="a.b c") == [i for i in done if int(i[3:]) % 3 == 2]
    assert await walk(jobs, "done", 1000, team="vision") == [i for i in done if int(i[3:]) % 3 == 0]
    assert await walk(jobs, "sweep", 9, sweep="sw1") == [r["id"] for r in made if r.get("sweep")][::-1]
    ids, cursor, total = await jobs.listing("active", limit=10)
    assert len(ids) == 10 and total == 180 and cursor
    assert [r["id"] for r in await jobs.active()] and len(await jobs.active()) == 180


async def test_an_ended_job_is_indexed_once_even_when_written_again(js):
    jobs = await jetstream.JetStreamJobs.open(js)
    await jobs.create(record(1, "alice"))
    await jobs.create(record(2, "alice"))
    for i in (1, 2, 1):  # job 1 written again after its end (e.g. MLflow catching up)
        got, rev = await jobs.get(f"job{i:07d}")
        await jobs.update({**got, "state": "FAILED", "n": rev}, rev)
    assert (await jobs.listing("done"))[0] == ["job0000002", "job0000001"]  # still in order of ending
    assert (await js.stream_info(FINISHED_STREAM)).state.messages == 2  # one entry each, on their owner's subject
    assert (await jobs.listing("active"))[0] == []


async def test_finished_records_expire_after_retention_but_history_stays(js):
    jobs = await jetstream.JetStreamJobs.open(js, retention_seconds=1)
    history = jetstream.JetStreamHistory(js)
    await jobs.create(record(1, "alice"))
    await jobs.create(record(2, "alice"))
    got, rev = await jobs.get("job0000001")
    await jobs.update({**got, "state": "RUNNING"}, rev)
    got, rev = await jobs.get("job0000001")
    await jobs.update({**got, "state": "SUCCEEDED"}, rev)
    await history.append({"job": "job0000001", "to": "SUCCEEDED"}, "h1")
    kv_info = await js.stream_info("KV_sentinels_jobs")
    assert kv_info.state.messages == 2  # the rollup dropped the finished record's older revisions
    await asyncio.sleep(2.5)
    assert await jobs.get("job0000001") is None and await jobs.get("job0000002") is not None
    assert (await jobs.listing("done"))[0] == []
    assert [e["to"] for e in await history.of("job0000001")] == ["SUCCEEDED"]
    assert (await js.stream_info(INDEX_STREAM)).config.allow_msg_ttl
    assert (await js.stream_info(FINISHED_STREAM)).config.allow_msg_ttl


def test_subject_tokens_are_safe_and_distinct():
    assert token("alice") == "alice" and token(None) == "~"
    assert token("a.b") != token("a*b") and "." not in token("a.b") and token("~") != token(None)
