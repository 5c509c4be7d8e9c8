"""After each pass: feed what it saw to the capacity watch and announce episodes.

The watch's state lives in the KV bucket `sentinels_state` (key `capacity`), so several
scheduler replicas and restarts share one episode; events carry the episode id, so a
duplicate announcement is dropped by the sink.
"""

import json
import logging

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from sentinels import clock
from sentinels.adapters.jetstream import STATE_BUCKET
from sentinels.domain import capacity_watch, events

log = logging.getLogger("sentinels.schedule")
KEY = "capacity"


class CapacityAlerts:
    def __init__(self, kv, sink, cfg: capacity_watch.CapacityConfig):
        self.kv, self.sink, self.cfg = kv, sink, cfg

    @classmethod
    async def open(cls, js, sink, cfg):
        return cls(await js.key_value(STATE_BUCKET), sink, cfg)

    async def after_pass(self, decision, nodes, waiting, now: float) -> None:
        try:
            entry = await self.kv.get(KEY)
            state, rev = json.loads(entry.value), entry.revision
        except KeyNotFoundError:
            state, rev = None, None
        observation = capacity_watch.pass_observation(decision, nodes, waiting)
        new, out = capacity_watch.step(state, observation, now, self.cfg)
        if new != state:
            try:
                if rev is None:
                    await self.kv.create(KEY, json.dumps(new).encode())
                else:
                    await self.kv.update(KEY, json.dumps(new).encode(), last=rev)
            except KeyWrongLastSequenceError:
                return  # another pass moved the watch first; it also announced what was due
        for ev in out:
            log.info("capacity: %s", ev["data"].get("summary"))
            await self.sink.emit(events.envelope(ev["type"], capacity_watch.SOURCE, ev["id"], ev["data"], clock.now_iso()))
