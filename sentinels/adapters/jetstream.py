"""JetStream adapters: the job store (KV), the queue and history streams, the board, the sink.

Names here are the public contract that the `nats` CLI must make sense of. `ensure()`
creates what is missing and never deletes or narrows what exists, so a second start, or
a start against resources made with other settings, keeps every message.
"""

import asyncio
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Optional

import nats
import nats.errors
from nats.errors import NoServersError, TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import BadRequestError, BucketNotFoundError, KeyWrongLastSequenceError, NotFoundError, KeyNotFoundError

from ..domain.errors import Unavailable
from ..domain.events import subject_token
from ..domain.names import (ALERTS_BUCKET, ALERTS_TTL, DUPLICATE_WINDOW, EVENTS_STREAM, EVENTS_SUBJECT,
                            EVENTS_SUBJECTS, HISTORY_STREAM, HISTORY_SUBJECT, HISTORY_SUBJECTS, JOBS_BUCKET,
                            QUEUE_STREAM, QUEUE_SUBJECT, QUEUE_SUBJECTS, REQUEUED_SUFFIX, STATE_BUCKET)
from ..domain.states import TERMINAL
from ..ports import Conflict
from . import jetstream_index
from .jetstream_index import JobIndex, filter_subject

log = logging.getLogger("sentinels.jetstream")

CAS_RETRIES = 20
RETENTION_SECONDS = 30 * 86400.0  # finished records leave the jobs bucket after this (Nats-TTL)
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed expected-last-sequence check


def _stream_configs(replicas: int) -> list[api.StreamConfig]:
    common: dict[str, Any] = dict(storage=api.StorageType.FILE, num_replicas=replicas, allow_direct=True,
                                  retention=api.RetentionPolicy.LIMITS, duplicate_window=DUPLICATE_WINDOW)
    return [
        api.StreamConfig(name=QUEUE_STREAM, subjects=[QUEUE_SUBJECTS],
                         description="sentinels: one message per waiting job, subject per priority class", **common),
        api.StreamConfig(name=HISTORY_STREAM, subjects=[HISTORY_SUBJECTS],
                         description="sentinels: every job state transition", **common),
        api.StreamConfig(name=EVENTS_STREAM, subjects=[EVENTS_SUBJECTS], max_age=7 * 86400.0,
                         description="sentinels: the embedded broker's CloudEvents", **common),
        *jetstream_index.stream_configs(replicas),
    ]


CREDENTIALS_ENV = "SENTINELS_NATS_CREDENTIALS"  # a JSON file {"user", "password"} (mode 0600)


def credentials(path: Optional[str]) -> dict:
    """nats.connect() keyword arguments from a credentials file: user, password and a
    reply inbox of that user's own (the server lets each user read only its inbox)."""
    if not path:
        return {}
    try:
        raw = json.loads(Path(path).read_text())
        return {"user": str(raw["user"]), "password": str(raw["password"]), "inbox_prefix": f"_INBOX_{raw['user']}"}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Unavailable(f"cannot read the NATS credentials in {path} ({type(e).__name__})") from None


async def connect(url: str, name: str = "sentinels", *, reconnect: bool = False, timeout: float = 3.0,
                  login: Optional[dict] = None) -> "nats.NATS":
    """Connect within `timeout` or raise Unavailable naming the address tried.

    With `reconnect`, a connection that later drops keeps retrying in the background
    (long-lived functions); the first connection attempt still fails fast. `login`
    (from `credentials()`) defaults to the file named by SENTINELS_NATS_CREDENTIALS.
    """
    async def quiet(e):  # nats-py prints tracebacks by default; we report our own message
        log.debug("nats: %s", e)

    if login is None:
        login = credentials(os.environ.get(CREDENTIALS_ENV))
    try:
        return await asyncio.wait_for(nats.connect(
            url, name=name, connect_timeout=2, allow_reconnect=reconnect, error_cb=quiet,
            max_reconnect_attempts=-1 if reconnect else 0, reconnect_time_wait=0.5, **login,
        ), timeout)
    except (NoServersError, OSError, NatsTimeout, asyncio.TimeoutError) as e:
        raise Unavailable(f"cannot reach NATS JetStream at {url} ({type(e).__name__}); "
                          "start the embedded default with `sentinels up` or set SENTINELS_NATS_URL") from None
    except nats.errors.Error as e:  # e.g. an authorization violation: wrong or missing credentials
        who = f"as {login['user']}" if login.get("user") else "without credentials"
        raise Unavailable(f"NATS JetStream at {url} refused the connection {who} ({str(e) or type(e).__name__})") from None


def _covers(pattern: str, subject: str) -> bool:
    """Does NATS subject `pattern` (with * and >) match every subject `subject` matches?"""
    p, t = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(t) > i
        if i >= len(t) or (tok != "*" and tok != t[i]) or (tok == "*" and t[i] == ">"):
            return False
    return len(p) == len(t)


async def ensure(js, replicas: int = 1, history_max_age: float | None = None) -> None:
    """Create the streams and the KV bucket if missing; extend subjects, never delete.

    `history_max_age` (seconds) applies when SENTINELS_HISTORY is created; an existing
    stream keeps its limits (narrowing them would delete history).
    """
    from . import deadletters

    for cfg in _stream_configs(replicas) + [deadletters.stream_config(replicas)]:
        if cfg.name == HISTORY_STREAM and history_max_age:
            cfg.max_age = history_max_age
        try:
            info = await js.stream_info(cfg.name)
        except NotFoundError:
            await js.add_stream(cfg)
            continue
        theirs = list(info.config.subjects or [])
        missing = [s for s in cfg.subjects or [] if s not in theirs]
        if missing:
            # keep their subjects unless ours cover them (the server refuses overlaps)
            info.config.subjects = missing + [t for t in theirs if not any(_covers(m, t) for m in missing)]
            await js.update_stream(info.config)
            log.warning("stream %s existed without subjects %s; added them", cfg.name, missing)
    for bucket, history, what in ((JOBS_BUCKET, 5, "job records by id"),
                                  (STATE_BUCKET, 1, "shared scheduler state")):
        try:
            await js.key_value(bucket)
        except BucketNotFoundError:
            await js.create_key_value(api.KeyValueConfig(
                bucket=bucket, history=history, storage=api.StorageType.FILE, replicas=replicas, direct=True,
                description=f"sentinels: {what}"))
    info = await js.stream_info(f"KV_{JOBS_BUCKET}")
    if not info.config.allow_msg_ttl:  # finished records expire by their own TTL (retention)
        info.config.allow_msg_ttl = True
        await js.update_stream(info.config)


class JetStreamJobs:
    """`JobStore` over the KV bucket; every update is a compare-and-set on revision.

    The store keeps its own indexes (`jetstream_index`): a created job is listed as
    active, a job that ends moves to the finished list. A finished record is written with
    a rollup (older revisions dropped) and a TTL, so it leaves the bucket after the
    retention period by itself; its history stays in SENTINELS_HISTORY.
    """

    def __init__(self, kv, js=None, retention_seconds: float = RETENTION_SECONDS):
        self.kv = kv
        self.js = js
        self.retention = retention_seconds
        self.index = JobIndex(js, retention_seconds) if js is not None else None

    @classmethod
    async def open(cls, js, retention_seconds: float = RETENTION_SECONDS) -> "JetStreamJobs":
        return cls(await js.key_value(JOBS_BUCKET), js, retention_seconds)

    async def get(self, job_id: str) -> Optional[tuple[dict, int]]:
        try:
            entry = await self.kv.get(job_id)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return json.loads(entry.value), entry.revision

    async def create(self, record: dict) -> int:
        async def put():
            try:
                return await self.kv.create(record["id"], json.dumps(record).encode())
            except KeyWrongLastSequenceError:
                raise Conflict(record["id"]) from None

        if self.index is None:
            return await put()
        rev, _ = await asyncio.gather(put(), self.index.added(record))
        return rev

    async def update(self, record: dict, revision: int) -> int:
        if record.get("state") not in TERMINAL or self.js is None:
            try:
                return await self.kv.update(record["id"], json.dumps(record).encode(), last=revision)
            except KeyWrongLastSequenceError:
                raise Conflict(record["id"]) from None
        headers = {"Nats-Expected-Last-Subject-Sequence": str(revision), "Nats-Rollup": "sub",
                   "Nats-TTL": f"{int(self.retention)}s"}
        try:
            ack = await self.js.publish(f"$KV.{JOBS_BUCKET}.{record['id']}", json.dumps(record).encode(), headers=headers)
        except BadRequestError as e:
            if getattr(e, "err_code", None) == 10071:  # wrong last sequence
                raise Conflict(record["id"]) from None
            raise
        assert self.index is not None  # set whenever js is
        await self.index.ended(record)
        return ack.seq

    async def listing(self, kind: str, owner=None, team=None, sweep=None, before: int | None = None,
                      limit: int = 50) -> tuple[list[str], int | None, int]:
        """Job ids of one list (`active`, `done`, `sweep`), newest first: (ids, next cursor, total)."""
        if self.index is None:
            raise TypeError("listings need the store opened with JetStreamJobs.open(js)")
        page, cursor, total = await self.index.page(filter_subject(kind, owner, team, sweep), before, limit)
        return list(dict.fromkeys(e["id"] for _, e in page)), cursor, total  # (a repeated entry once)

    async def active(self) -> list[dict]:
        """Every live record (from the active index, checked against the records)."""
        ids, cursor = [], None
        while True:
            page, cursor, _ = await self.listing("active", before=cursor, limit=1000)
            ids += page
            if cursor is None:
                break
        got = await asyncio.gather(*(self.get(i) for i in ids))
        return [g[0] for g in got if g and g[0].get("state") not in TERMINAL]

    async def mutate(self, job_id: str, fn, known: Optional[tuple[dict, int]] = None):
        """Apply fn(record) -> new record (or None: no change) with CAS, retrying on conflict.

        `known` (a record and revision the caller has just read) is tried first: one read
        fewer when nobody wrote meanwhile. Returns (before, after) when something was
        written, None when the job is missing or fn chose no change.
        """
        for _ in range(CAS_RETRIES):
            got = known if known is not None else await self.get(job_id)
            known = None
            if got is None:
                return None
            before, rev = got
            after = fn(before)
            if after is None:
                return None
            try:
                await self.update(after, rev)
                return before, after
            except Conflict:
                continue
        raise Unavailable(f"job {job_id}: too many concurrent updates, try again")

    async def all(self) -> list[dict]:
        out: list[dict] = []
        try:
            watcher = await self.kv.watchall(ignore_deletes=True)
        except NotFoundError:
            return out
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if entry.value:
                    out.append(json.loads(entry.value))
        finally:
            await watcher.stop()
        return out


class JetStreamBoard:
    """`Board` over KV `sentinels_state`: whole documents written by one writer at a time."""

    def __init__(self, kv):
        self.kv = kv

    @classmethod
    async def open(cls, js) -> "JetStreamBoard":
        return cls(await js.key_value(STATE_BUCKET))

    async def get(self, key: str) -> Optional[dict]:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        return json.loads(entry.value) if entry.value else None

    async def put(self, key: str, value: dict) -> None:
        await self.kv.put(key, json.dumps(value).encode())

    async def read(self, key: str) -> tuple[Optional[dict], Optional[int]]:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None, None
        return (json.loads(entry.value) if entry.value else None), entry.revision

    async def swap(self, key: str, value: dict, revision: Optional[int]) -> bool:
        """Write `value` if the key is still at `revision` (None: still absent)."""
        try:
            if revision is None:
                await self.kv.create(key, json.dumps(value).encode())
            else:
                await self.kv.update(key, json.dumps(value).encode(), last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True


class JetStreamSentLog:
    """`SentLog` over the KV bucket `sentinels_alerts` (created if missing, entries expire).

    The claim is a KV create, atomic on the server: of five concurrent deliveries one
    wins. A claim left by a delivery that crashed mid-send expires after CLAIM_SECONDS
    and is taken over by compare-and-set.
    """

    CLAIM_SECONDS = 120.0

    def __init__(self, kv, now=None):
        import time

        self.kv = kv
        self.now = now or time.time

    @classmethod
    async def open(cls, js, replicas: int = 1) -> "JetStreamSentLog":
        try:
            kv = await js.key_value(ALERTS_BUCKET)
        except BucketNotFoundError:
            kv = await js.create_key_value(api.KeyValueConfig(
                bucket=ALERTS_BUCKET, history=1, ttl=ALERTS_TTL, storage=api.StorageType.FILE, replicas=replicas,
                description="sentinels: alert events already sent to Slack (dedupe)"))
        return cls(kv)

    def _sending(self) -> bytes:
        return json.dumps({"state": "sending", "at": self.now()}).encode()

    async def claim(self, key: str) -> bool:
        try:
            await self.kv.create(key, self._sending())
            return True
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:  # released meanwhile: the next redelivery claims it
            return False
        try:
            held = json.loads(entry.value or b"{}")
        except ValueError:
            held = {"state": "sent"}  # an old plain mark
        if not isinstance(held, dict) or held.get("state") != "sending" or \
                self.now() - held.get("at", 0) < self.CLAIM_SECONDS:
            return False
        try:
            await self.kv.update(key, self._sending(), last=entry.revision)
            return True
        except KeyWrongLastSequenceError:
            return False

    async def done(self, key: str) -> None:
        await self.kv.put(key, json.dumps({"state": "sent", "at": self.now()}).encode())

    async def release(self, key: str) -> None:
        await self.kv.delete(key)


class JetStreamQueue:
    """`JobQueue` over SENTINELS_QUEUE: order is class value, then submission order.

    Subject `sentinels.queue.<class>` holds new submissions in stream order;
    `sentinels.queue.<class>.requeued` holds jobs put back after an eviction or a lost
    node, which wait ahead of their class (they had already reached its front once).
    """

    def __init__(self, js, nc=None, domain: Optional[str] = None):
        """`nc` and `domain` (the JetStream domain `js` was made for, if any) let `remove`
        send its request itself; without `nc` it falls back to nats-py's erasing delete."""
        self.js, self.nc = js, nc
        self.api_prefix = f"$JS.{domain}.API" if domain else "$JS.API"
        self._tasks: set[asyncio.Task] = set()  # consumer clean-ups in flight (kept so none is collected)

    @staticmethod
    def subject(klass: str, front: bool = False) -> str:
        return QUEUE_SUBJECT.format(klass) + (REQUEUED_SUFFIX if front else "")

    async def enqueue(self, entry: dict, msg_id: str, front: bool = False) -> int:
        ack = await self.js.publish(self.subject(entry["class"], front), json.dumps(entry).encode(),
                                    stream=QUEUE_STREAM, headers={"Nats-Msg-Id": msg_id})
        return ack.seq

    async def remove(self, seq: int) -> bool:
        """Delete one entry by sequence; False when it was already gone.

        `no_erase`: the entry is dropped, not overwritten on disk first (nats-py's
        delete_msg erases, which costs about 12 ms per entry in a 100,000-entry stream).
        """
        if self.nc is None:
            try:
                return await self.js.delete_msg(QUEUE_STREAM, seq)
            except (NotFoundError, BadRequestError):
                return False
        msg = await self.nc.request(f"{self.api_prefix}.STREAM.MSG.DELETE.{QUEUE_STREAM}",
                                    json.dumps({"seq": seq, "no_erase": True}).encode(), timeout=5)
        resp = json.loads(msg.data)
        return bool(resp.get("success")) and "error" not in resp

    async def subject_counts(self) -> dict[str, int]:
        info = await self.js.stream_info(QUEUE_STREAM, subjects_filter=QUEUE_SUBJECTS)
        return dict(info.state.subjects or {})

    async def counts(self) -> dict[str, int]:
        """Waiting jobs per class, from the server's per-subject counts."""
        out: dict[str, int] = {}
        for subj, n in (await self.subject_counts()).items():
            klass = subj.split(".")[2]
            out[klass] = out.get(klass, 0) + n
        return out

    async def oldest(self) -> dict[str, str]:
        """Per class, the submission time of the longest-waiting entry (one direct get per subject)."""
        out: dict[str, str] = {}
        for subj in await self.subject_counts():
            try:
                msg = await self.js.get_msg(QUEUE_STREAM, seq=1, subject=subj, next=True, direct=True)
            except NotFoundError:  # removed since the count
                continue
            klass, submitted = subj.split(".")[2], json.loads(msg.data).get("submitted")
            if isinstance(submitted, str) and (klass not in out or submitted < out[klass]):
                out[klass] = submitted
        return out

    async def read(self, subject: str, limit: int) -> list[tuple[int, dict]]:
        """The first `limit` entries of one subject, in one batch through a throw-away consumer."""
        return await jetstream_index.read_from(self.js, QUEUE_STREAM, subject, 1, limit)

    async def heads(self, classes: list[str], limit: int) -> list[tuple[int, dict]]:
        """The first `limit` waiting entries in queue order (classes given highest first)."""
        counts = await self.subject_counts()
        out: list[tuple[int, dict]] = []
        for klass in classes:
            for subject in (self.subject(klass, True), self.subject(klass)):
                want = min(limit - len(out), counts.get(subject, 0))
                if want > 0:
                    out += await self.read(subject, want)
        return out

    async def ahead_in_subject(self, subject: str, seq: int, total: int) -> int:
        """How many of the `total` entries of `subject` precede `seq`, counted by the server."""
        name = f"pos-{uuid.uuid4().hex[:12]}"
        cfg = api.ConsumerConfig(name=name, filter_subject=subject, deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                 opt_start_seq=seq, ack_policy=api.AckPolicy.NONE, inactive_threshold=5.0,
                                 mem_storage=True, num_replicas=1)
        info = await self.js.add_consumer(QUEUE_STREAM, cfg)
        task = asyncio.create_task(self._drop(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return total - info.num_pending

    async def _drop(self, name: str) -> None:
        try:
            await self.js.delete_consumer(QUEUE_STREAM, name)
        except Exception:  # it expires by itself after inactive_threshold
            pass

    async def position(self, classes: list[str], klass: str, seq: int, front: bool = False) -> int:
        """1-based place in the whole queue, from server-side counts (no scan)."""
        counts = await self.subject_counts()
        higher = classes[: classes.index(klass)] if klass in classes else []
        before = sum(counts.get(self.subject(k, f), 0) for k in higher for f in (True, False))
        subject = self.subject(klass, front)
        if not front:
            before += counts.get(self.subject(klass, True), 0)
        return before + await self.ahead_in_subject(subject, seq, counts.get(subject, 0)) + 1


class JetStreamHistory:
    """`History` over SENTINELS_HISTORY, one subject per job."""

    def __init__(self, js):
        self.js = js

    async def append(self, entry: dict, msg_id: str, first: bool = False) -> None:
        """Append; with `first`, only if the job has no history yet (atomic on the server, so
        a submit retried after the dedupe window does not record QUEUED twice)."""
        headers = {"Nats-Msg-Id": msg_id}
        if first:
            headers["Nats-Expected-Last-Subject-Sequence"] = "0"
        try:
            await self.js.publish(HISTORY_SUBJECT.format(entry["job"]), json.dumps(entry).encode(),
                                  stream=HISTORY_STREAM, headers=headers)
        except BadRequestError as e:
            if not first or e.err_code != WRONG_LAST_SEQUENCE:
                raise

    async def of(self, job_id: str) -> list[dict]:
        out: list[dict] = []
        seq, subject = 0, HISTORY_SUBJECT.format(job_id)
        while True:
            try:
                msg = await self.js.get_msg(HISTORY_STREAM, seq=seq + 1, subject=subject, next=True, direct=True)
            except NotFoundError:
                # functions append concurrently; the transition time is the true order
                return sorted(out, key=lambda e: e.get("at") or "")
            seq = msg.seq
            out.append(json.loads(msg.data))


class JetStreamSink:
    """`EventSink` for the embedded default: CloudEvents into SENTINELS_EVENTS for the router."""

    def __init__(self, js):
        self.js = js

    async def emit(self, event: dict) -> None:
        await self.js.publish(EVENTS_SUBJECT.format(subject_token(event["type"])), json.dumps(event).encode(),
                              stream=EVENTS_STREAM, headers={"Nats-Msg-Id": event["id"]})
