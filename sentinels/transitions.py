"""Recording a job's state change after its compare-and-set: history entry + CloudEvent.

Both carry ids derived from the job, its new state and attempt, so a handler that runs
twice (at-least-once delivery) records and announces the change once. Beyond the
stream's 120 s dedupe window the history still holds each change once: a job's first
entry is appended only while its subject is empty (expected last subject sequence 0),
and a redelivery re-appends only what the history lacks.
"""

import asyncio

from .domain import events, states


async def announce(history, sink, source: str, before: dict | None, after: dict, event_type: str | None,
                   data: dict | None = None, tag: str | None = None, replay: bool = False) -> None:
    """`replay`: this change may have been recorded already, longer ago than the stream's
    dedupe window (a redelivery after a crash): append its history entry only if missing."""
    tag = tag or f"{after['state']}:{after.get('attempts', 0)}"
    entry = states.history_entry(before, after)
    work = []
    if not replay or not await _recorded(history, entry):
        first = {"first": True} if before is None and not replay else {}  # a job's first entry
        work.append(history.append(entry, msg_id=f"{after['id']}:{tag}", **first))
    if event_type:
        payload = data or {"job": after["id"], "class": after["priority"], "owner": after["owner"],
                           "state": after["state"], "reason": after.get("reason", "")}
        work.append(sink.emit(events.envelope(event_type, source, f"{after['id']}:{tag}", payload,
                                              after["updated_at"], subject=after["id"])))
    await asyncio.gather(*work)


async def _recorded(history, entry: dict) -> bool:
    same = ("to", "attempts", "at")
    return any(all(e.get(k) == entry[k] for k in same) for e in await history.of(entry["job"]))
