"""Secondary indexes of the job store on JetStream subjects, so listings never scan records.

Stream `SENTINELS_INDEX`, one subject per job and list (at most one message each):

    sentinels.index.active.<team>.<owner>.<id>   a live job (QUEUED, SCHEDULED, RUNNING); purged when it ends
    sentinels.index.sweep.<sweep>.<id>           a member of a sweep or array

Stream `SENTINELS_FINISHED`, one subject per owner, one message per ended job:

    sentinels.finished.<team>.<owner>            a finished job; expires with its record (Nats-TTL)

Finished jobs are many (a million is the design point) and only ever appended, so they
share their owner's subject: a filter over one subject per job made the server walk a
million subjects for every count (a quarter of a second per page at a million), while
per owner a filter matches a handful of subjects.

Listings are newest first and paged by stream sequence: the server counts how many
entries of a filter lie at or after a sequence (consumer `num_pending`), so a page is
found with a few counts and read with one fetch, whatever the store holds.
Entries are hints, records are the truth: readers drop entries whose record disagrees.
"""

import asyncio
import json
import re
import uuid

from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from ..domain.names import DUPLICATE_WINDOW, FINISHED_PREFIX, FINISHED_STREAM, INDEX_PREFIX as PREFIX, INDEX_STREAM
SAFE = re.compile(r"^[A-Za-z0-9_-]+$")
ANY = "*"


def token(name) -> str:
    """A subject token for a user, team or sweep name: itself when safe, else `~` + hex (None is `~`)."""
    if name is None:
        return "~"
    name = str(name)
    return name if SAFE.match(name) else "~" + name.encode().hex()


def subject(kind: str, record: dict) -> str:
    if kind == "sweep":
        return f"{PREFIX}.sweep.{token(record['sweep']['id'])}.{record['id']}"
    if kind == "done":
        return f"{FINISHED_PREFIX}.{token(record.get('team'))}.{token(record.get('owner'))}"
    return f"{PREFIX}.{kind}.{token(record.get('team'))}.{token(record.get('owner'))}.{record['id']}"


def filter_subject(kind: str, owner=None, team=None, sweep=None) -> str:
    if kind == "sweep":
        return f"{PREFIX}.sweep.{token(sweep)}.*"
    who = f"{ANY if team is None else token(team)}.{ANY if owner is None else token(owner)}"
    return f"{FINISHED_PREFIX}.{who}" if kind == "done" else f"{PREFIX}.{kind}.{who}.*"


def stream_of(subj: str) -> str:
    return FINISHED_STREAM if subj.startswith(FINISHED_PREFIX + ".") else INDEX_STREAM


def stream_configs(replicas: int) -> list[api.StreamConfig]:
    common: dict = dict(storage=api.StorageType.FILE, num_replicas=replicas, allow_direct=True,
                        retention=api.RetentionPolicy.LIMITS, allow_msg_ttl=True, duplicate_window=DUPLICATE_WINDOW)
    return [api.StreamConfig(name=INDEX_STREAM, subjects=[f"{PREFIX}.>"], max_msgs_per_subject=1, **common,
                             description="sentinels: live and sweep jobs by team and owner (listings)"),
            api.StreamConfig(name=FINISHED_STREAM, subjects=[f"{FINISHED_PREFIX}.>"], **common,
                             description="sentinels: finished jobs by team and owner, in order of ending (listings)")]


async def read_from(js, stream: str, subject: str, start: int, limit: int) -> list[tuple[int, dict]]:
    """Up to `limit` messages of `subject` from sequence `start` on, in one throw-away consumer."""
    policy = dict(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start) if start > 1 \
        else dict(deliver_policy=api.DeliverPolicy.ALL)
    cfg = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, inactive_threshold=5.0, mem_storage=True,
                             num_replicas=1, **policy)
    sub = await js.pull_subscribe(subject, stream=stream, config=cfg)
    out: list[tuple[int, dict]] = []
    try:
        while len(out) < limit:
            try:
                msgs = await sub.fetch(min(limit - len(out), 1024), timeout=0.3)
            except NatsTimeout:
                break
            out += [(m.metadata.sequence.stream, json.loads(m.data)) for m in msgs]
    finally:
        await sub.unsubscribe()
    return out


class JobIndex:
    """Maintained by the job store on create and on the end of a job; read by the API."""

    def __init__(self, js, retention_seconds: float):
        self.js = js
        self.ttl = retention_seconds

    @staticmethod
    def entry(record: dict) -> dict:
        out = {"id": record["id"], "owner": record.get("owner"), "team": record.get("team"),
               "at": record.get("submitted_at")}
        if record.get("sweep"):
            out["sweep"] = record["sweep"]["id"]
        return out

    async def _once(self, subj: str, record: dict, ttl: float | None = None) -> None:
        """Publish the entry unless the subject already has one (create-once, any retry)."""
        headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
        if ttl:
            headers["Nats-TTL"] = f"{int(ttl)}s"
        try:
            await self.js.publish(subj, json.dumps(self.entry(record)).encode(), stream=INDEX_STREAM, headers=headers)
        except APIError as e:
            if getattr(e, "err_code", None) != 10071:  # wrong last sequence: already there
                raise

    async def added(self, record: dict) -> None:
        work = [self._once(subject("active", record), record)]
        if record.get("sweep"):
            work.append(self._once(subject("sweep", record), record, 2 * self.ttl))
        await asyncio.gather(*work)

    async def ended(self, record: dict) -> None:
        """Listed as finished, no longer as active. Once: a finished record written again
        (MLflow catching up) finds its active entry gone and changes nothing; a repeat after
        a crash between the two steps is dropped by its message id (readers drop a later one)."""
        active = subject("active", record)
        try:
            await self.js.get_msg(INDEX_STREAM, subject=active, direct=True)
        except NotFoundError:
            return
        headers = {"Nats-Msg-Id": f"{record['id']}:done", "Nats-TTL": f"{int(self.ttl)}s"}
        await self.js.publish(subject("done", record), json.dumps(self.entry(record)).encode(), stream=FINISHED_STREAM,
                              headers=headers)
        await self.js.purge_stream(INDEX_STREAM, subject=active)

    # --- reads ------------------------------------------------------------------------
    async def _pending(self, subj: str, seq: int) -> int:
        """How many entries of `subj` lie at or after sequence `seq`, counted by the server."""
        name = f"idx-{uuid.uuid4().hex[:12]}"
        cfg = api.ConsumerConfig(name=name, filter_subject=subj, deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                 opt_start_seq=max(1, seq), ack_policy=api.AckPolicy.NONE, inactive_threshold=5.0,
                                 mem_storage=True, num_replicas=1)
        info = await self.js.add_consumer(stream_of(subj), cfg)
        asyncio.ensure_future(self._drop(stream_of(subj), name))
        return info.num_pending

    async def _drop(self, stream: str, name: str) -> None:
        try:
            await self.js.delete_consumer(stream, name)
        except Exception:  # it expires by itself after inactive_threshold
            pass

    async def page(self, subj: str, before: int | None, limit: int) -> tuple[list[tuple[int, dict]], int | None, int]:
        """Up to `limit` entries of `subj` below sequence `before`, newest first.

        Returns (entries, cursor for the next page or None, how many lie below `before`).
        """
        stream = stream_of(subj)
        try:  # the first and last entries of this filter, straight from the server
            last = (await self.js.get_msg(stream, subject=subj, direct=True)).seq
            first = (await self.js.get_msg(stream, seq=1, subject=subj, next=True, direct=True)).seq
        except NotFoundError:
            return [], None, 0
        hi = min(before or last + 1, last + 1)
        if hi <= first or limit <= 0:
            return [], None, 0
        above = await self._pending(subj, hi) if hi <= last else 0
        total = await self._pending(subj, first) - above
        if total <= 0:
            return [], None, 0
        lo, n = first, total
        if total > limit:  # gallop back from `hi` until the window holds a page, then narrow it
            width, prev = max(4 * limit, 256), hi
            while True:
                lo = max(first, hi - width)
                n = await self._pending(subj, lo) - above
                if n >= limit or lo == first:
                    break
                prev, width = lo, width * 4
            while n > 4 * limit and prev - lo > 64:
                mid = (lo + prev) // 2
                m = await self._pending(subj, mid) - above
                if m >= limit:
                    lo, n = mid, m
                else:
                    prev = mid
        got = [(s, e) for s, e in await read_from(self.js, stream, subj, lo, n) if s < hi]
        page = list(reversed(got[-limit:]))
        cursor = page[-1][0] if page and total > len(page) else None
        return page, cursor, total
