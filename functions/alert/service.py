"""What the alert function does with one CloudEvent: read, route, render, send once.

Snapshot (the job record from KV) -> decide (pure `domain.notify`) -> apply (Slack).
Events arrive at least once, so each (event, channel) pair is claimed in the KV bucket
`sentinels_alerts` by an atomic create before sending and marked sent after: a
redelivered or concurrently delivered event sends nothing twice. A transient Slack
failure raises `Unavailable` (503, the broker redelivers); anything else is logged and acknowledged, so a bad event
or a Slack refusal never loops.
"""

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Callable, Optional

from sentinels.domain import events, job, notify, states
from sentinels.domain.errors import ConfigError, SendFailed
from sentinels.ports import JobStore, Meter, Notifier, SentLog

log = logging.getLogger("sentinels.alert")
JOB_TYPES = (events.JOB_SUCCEEDED, events.JOB_FAILED, events.JOB_CANCELLED)
CAPACITY_TYPES = (events.CAPACITY_EXHAUSTED, events.CAPACITY_RECOVERED)


def dedupe_key(ce: dict, channel: str) -> str:
    """A KV-safe key for one (CloudEvent, channel); CloudEvent ids may hold any character."""
    return hashlib.sha256(f"{ce['source']}\x00{ce['id']}\x00{channel}".encode()).hexdigest()[:40]


@dataclass
class AlertService:
    jobs: JobStore
    sent: SentLog
    notifier: Notifier
    cfg: notify.NotifyConfig
    clock: Callable[[], str]
    fallback: Callable[[str], Notifier]  # why -> where messages go once Slack rejected the credentials
    meter: Optional[Meter] = None  # Slack sends and failures, for the exporter

    async def handle(self, ce: dict) -> tuple[int, dict]:
        """(HTTP status, body) for one CloudEvent; raises Unavailable when Slack failed transiently."""
        kind = ce["type"]
        if kind in JOB_TYPES:
            planned = await self._job(ce)
        elif kind == events.JOB_REQUEUED:
            planned = await self._preempted(ce)
        elif kind in CAPACITY_TYPES:
            planned = self._capacity(ce)
        else:
            planned = f"event type {kind} is not one the alert function handles"
        if isinstance(planned, str):
            log.info("event %s (%s) ignored: %s", ce["id"], kind, planned)
            return 200, {"ignored": planned}
        channels, message = planned
        sent, skipped = await self._deliver(ce, channels, message)
        return 200, {"sent": sent, "already_sent": skipped}

    async def _job(self, ce: dict):
        data = ce.get("data")
        job_id = data.get("job") if isinstance(data, dict) else None
        if not job.is_job_id(job_id):
            return f"data has no job id (got {job_id!r})"
        got = await self.jobs.get(job_id)
        if got is None:
            return f"job {job_id} is unknown"
        record = got[0]
        if record.get("state") not in states.TERMINAL:
            return f"job {job_id} is {record.get('state')}, not finished"
        channels = notify.route(record, self.cfg)
        if not channels:
            return f"nobody asked to hear about job {job_id} {record['state'].lower()}"
        return channels, notify.job_message(record, self.clock(), self.cfg)

    async def _preempted(self, ce: dict):
        """A requeue that was a preemption: tell the victim's channels who took the room."""
        raw = ce.get("data")
        data: dict = raw if isinstance(raw, dict) else {}
        reason = data.get("reason")
        if not isinstance(reason, str) or not reason.startswith("preempted by "):
            return "a requeue that was not a preemption"
        job_id = data.get("job")
        got = await self.jobs.get(job_id) if job.is_job_id(job_id) else None
        if got is None:
            return f"job {job_id!r} is unknown"
        channels = notify.route(got[0], self.cfg, "preempted")
        if not channels:
            return f"nobody asked to hear about job {job_id} being preempted"
        return channels, notify.preempted_message(got[0], reason, self.cfg)

    async def _count(self, what: str) -> None:
        if self.meter is not None:
            await self.meter.count(what)

    def _capacity(self, ce: dict):
        data = ce.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("summary"), str) or not data.get("episode"):
            return "capacity event without episode and summary"
        status = "recovered" if ce["type"] == events.CAPACITY_RECOVERED else "exhausted"
        channel = self.cfg.capacity_channel or self.cfg.default_channel
        return [channel], notify.capacity_message(dict(data, status=status))

    async def _deliver(self, ce: dict, channels: list[str], message: dict) -> tuple[list[str], list[str]]:
        if not self.notifier.per_channel:
            channels = channels[:1]  # a webhook has one channel of its own
        sent, skipped = [], []
        for channel in channels:
            key = dedupe_key(ce, channel)
            if not await self.sent.claim(key):  # sent already, or another delivery is sending it
                skipped.append(channel)
                continue
            try:
                used = await asyncio.to_thread(self.notifier.send, channel, message)
            except ConfigError as e:  # credentials rejected: say so, keep the text in the log, do not loop
                log.error("%s; notifications go to this log until it is fixed", e.message)
                self.notifier = self.fallback("Slack rejected the configured credentials")
                used = self.notifier.send(channel, message)
            except SendFailed as e:
                log.error("event %s for %s not sent: %s", ce["id"], channel or "the default channel", e.message)
                await self.sent.done(key)  # refused for good: never retried
                await self._count("slack_failed")
                continue
            except BaseException:  # transient (Unavailable) or cancelled: a redelivery tries again
                await self.sent.release(key)
                raise
            await self.sent.done(key)
            await self._count("slack_sent")
            if used != channel:  # fell back to the default channel: it has this message now
                await self.sent.done(dedupe_key(ce, used))
            sent.append(used)
        return sent, skipped
