"""After a pass: keep placeholder Deployments for the demand the pass left waiting.

Queued jobs are not pods, so a cluster autoscaler cannot see them; with
`demand.placeholders.enabled` (Kubernetes only) the scheduler keeps one Deployment of
pause pods per node shape that waiting jobs need (`domain.demand`). It looks at most once
per `interval_seconds` and calls the API only when what it wants changed, or at least
every ten intervals (someone may have deleted them).
"""

import logging
from typing import Optional

from sentinels.domain import demand
from sentinels.domain.errors import SentinelsError
from sentinels.ports import Placeholders

log = logging.getLogger("sentinels.schedule")
REFRESH_INTERVALS = 10


class PlaceholderSync:
    def __init__(self, target: Placeholders, cfg: demand.PlaceholderConfig, namespace: str):
        self.target, self.cfg, self.namespace = target, cfg, namespace
        self._looked: Optional[float] = None
        self._applied: Optional[float] = None
        self._last: Optional[list[dict]] = None

    async def after_pass(self, decision, nodes, waiting, now: float) -> None:
        if self._looked is not None and now - self._looked < self.cfg.interval_seconds:
            return
        self._looked = now
        wanted = demand.placeholders(demand.of_pass(waiting, decision.waits), self.namespace, self.cfg.max_per_shape)
        stale = self._applied is None or now - self._applied >= REFRESH_INTERVALS * self.cfg.interval_seconds
        if wanted == self._last and not stale:
            return
        try:
            counts = await self.target.sync(wanted)
        except SentinelsError as e:  # the API is away or refuses: the next look tries again
            log.warning("placeholders not updated: %s", e.message)
            return
        self._last, self._applied = wanted, now
        if any(counts.values()):
            log.info("placeholders for queued demand: %s (%d shape(s))", counts, len(wanted))
