"""Recording a job's state change after its compare-and-set: history entry + CloudEvent.

Both carry ids derived from the job, its new state and attempt, so a handler that runs
twice (at-least-once delivery) records and announces the change once.
"""

import asyncio

from .domain import events, states


async def announce(history, sink, source: str, before: dict | None, after: dict, event_type: str | None,
                   data: dict | None = None, tag: str | None = None) -> None:
    tag = tag or f"{after['state']}:{after.get('attempts', 0)}"
    entry = states.history_entry(before, after)
    work = [history.append(entry, msg_id=f"{after['id']}:{tag}")]
    if event_type:
        payload = data or {"job": after["id"], "class": after["priority"], "owner": after["owner"],
                           "state": after["state"], "reason": after.get("reason", "")}
        work.append(sink.emit(events.envelope(event_type, source, f"{after['id']}:{tag}", payload,
                                              after["updated_at"], subject=after["id"])))
    await asyncio.gather(*work)
