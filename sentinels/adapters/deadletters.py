"""Dead letters: events the embedded router gave up on, kept in their own stream.

The router retries every delivery with a capped back-off for a long horizon (24 h by
default). Only what is refused for good (a 4xx) or outlives that horizon lands here, in
`SENTINELS_DEADLETTERS` (subject `sentinels.deadletter.<trigger>`): counted, listed by
`sentinels events --dead`, and replayed by `sentinels events --replay`, which puts the
event back on the broker (same CloudEvent id, so handlers that already acted on it do
nothing twice) and removes the letter.
"""

import json
from typing import Optional

from nats.js import api
from nats.js.errors import NotFoundError

from ..domain import events
from ..domain.names import DEADLETTER_STREAM as STREAM
from ..domain.names import DEADLETTER_SUBJECT as SUBJECT
from ..domain.names import DUPLICATE_WINDOW, EVENTS_STREAM, EVENTS_SUBJECT
MAX_BYTES = 1 << 30  # the oldest letters go first only beyond 1 GiB


def stream_config(replicas: int = 1) -> api.StreamConfig:
    return api.StreamConfig(name=STREAM, subjects=[SUBJECT.format(">")], storage=api.StorageType.FILE,
                            num_replicas=replicas, retention=api.RetentionPolicy.LIMITS, max_bytes=MAX_BYTES,
                            duplicate_window=DUPLICATE_WINDOW, allow_direct=True,
                            description="sentinels: events the router could not deliver (replayable)")


def letter(trigger: str, function: str, event: dict, reason: str, attempts: int, first_at: str, now: str) -> dict:
    return {"trigger": trigger, "function": function, "reason": reason, "attempts": attempts,
            "first_at": first_at, "dead_at": now, "event": event}


async def add(js, item: dict) -> None:
    event = item["event"]
    await js.publish(SUBJECT.format(item["trigger"]), json.dumps(item).encode(), stream=STREAM,
                     headers={"Nats-Msg-Id": f"dead:{item['trigger']}:{event.get('id')}:{item['attempts']}"})


async def count(js) -> int:
    try:
        return (await js.stream_info(STREAM)).state.messages
    except NotFoundError:
        return 0


async def listing(js, limit: int = 100) -> list[dict]:
    """The oldest `limit` letters, each with its `seq` (what `--replay` takes)."""
    out: list[dict] = []
    seq = 0
    while len(out) < limit:
        try:
            msg = await js.get_msg(STREAM, seq=seq + 1, next=True, subject=SUBJECT.format(">"), direct=True)
        except NotFoundError:
            break
        seq = msg.seq
        try:
            out.append({"seq": seq, **json.loads(msg.data)})
        except ValueError:
            out.append({"seq": seq, "reason": "unreadable letter", "event": {}})
    return out


async def replay(js, seq: int) -> Optional[str]:
    """Put letter `seq`'s event back on the broker and drop the letter; its event id, or None."""
    try:
        msg = await js.get_msg(STREAM, seq=seq, direct=True)
    except NotFoundError:
        return None
    item = json.loads(msg.data)
    event = item["event"]
    await js.publish(EVENTS_SUBJECT.format(events.subject_token(event["type"])), json.dumps(event).encode(),
                     stream=EVENTS_STREAM, headers={"Nats-Msg-Id": f"{event['id']}:replay:{seq}"})
    await js.delete_msg(STREAM, seq)
    return event["id"]
