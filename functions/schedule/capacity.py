"""After each pass: feed what it saw to the capacity watch and announce episodes.

The watch's state lives on the Board (KV `sentinels_state`, key `capacity`), written by
compare-and-set, so several scheduler replicas and restarts share one episode; events
carry the episode id, so a duplicate announcement is dropped by the sink.
"""

import logging
from typing import Callable

from sentinels.domain import capacity_watch, events
from sentinels.domain.names import CAPACITY_KEY
from sentinels.ports import Board, EventSink

log = logging.getLogger("sentinels.schedule")


class CapacityAlerts:
    def __init__(self, board: Board, sink: EventSink, cfg: capacity_watch.CapacityConfig, clock: Callable[[], str]):
        self.board, self.sink, self.cfg, self.clock = board, sink, cfg, clock

    async def after_pass(self, decision, nodes, waiting, now: float) -> None:
        state, rev = await self.board.read(CAPACITY_KEY)
        observation = capacity_watch.pass_observation(decision, nodes, waiting)
        new, out = capacity_watch.step(state, observation, now, self.cfg)
        if new != state and not await self.board.swap(CAPACITY_KEY, new, rev):
            return  # another pass moved the watch first; it also announced what was due
        for ev in out:
            log.info("capacity: %s", ev["data"].get("summary"))
            await self.sink.emit(events.envelope(ev["type"], capacity_watch.SOURCE, ev["id"], ev["data"], self.clock()))
