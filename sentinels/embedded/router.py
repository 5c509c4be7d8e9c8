"""The embedded broker: CloudEvents from SENTINELS_EVENTS to the functions over HTTP.

One durable pull consumer per trigger (named after the Trigger), delivery in binary
content mode, Knative's rules: 2xx acks; 4xx other than 408/429 is final; 5xx, 408,
429 and connection errors are retried with exponential back-off; after the last try
the event goes to `sentinels.events.deadletter.<trigger>`. Also the timer: a
`dev.knative.sources.ping` event every `Settings.tick()` seconds (SENTINELS_TICK or
`scheduler.tick`, default 10).
"""

import asyncio
import json
import logging
import uuid

from nats.js import api

from .. import clock
from ..adapters import jetstream
from ..domain import events, names
from ..settings import Settings
from . import serve, triggers

log = logging.getLogger("sentinels.router")
IN_FLIGHT = 16


def delays(t: triggers.Trigger) -> list[float]:
    return [t.backoff_delay * (2 ** i if t.exponential else 1) for i in range(t.retry)]


class Router:
    def __init__(self, settings: Settings, table: list[triggers.Trigger]):
        self.s = settings
        self.table = [t for t in table if t.function in serve.available()]
        self.urls = {name: f"http://127.0.0.1:{settings.function_port(spec[2])}" for name, spec in serve.FUNCTIONS.items()}
        self._tasks: set[asyncio.Task] = set()  # deliveries in flight: referenced until done

    async def run(self, tick: float) -> None:
        import httpx

        self.nc = await jetstream.connect(self.s.nats_url, "sentinels-router", reconnect=True)
        self.js = self.nc.jetstream(timeout=5)
        await jetstream.ensure(self.js)
        self.http = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64, max_keepalive_connections=32,
                                                                    keepalive_expiry=2.0))  # < uvicorn's 5 s
        for t in self.table:
            await self.consume(t)
        log.info("routing %d triggers: %s", len(self.table), ", ".join(t.name for t in self.table))
        await self.timer(tick)

    async def consume(self, t: triggers.Trigger) -> None:
        """A durable push consumer per trigger; at most IN_FLIGHT deliveries at once."""
        subject = jetstream.EVENTS_SUBJECT.format(events.subject_token(t.event_type))
        backoff = delays(t)
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def on_message(msg):
            await slots.acquire()  # back-pressure: the client holds further messages
            task = asyncio.create_task(self._deliver(t, msg, backoff, slots))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        cfg = api.ConsumerConfig(durable_name=t.name, ack_policy=api.AckPolicy.EXPLICIT, max_deliver=t.retry + 1,
                                 ack_wait=60.0, max_ack_pending=4 * IN_FLIGHT, deliver_policy=api.DeliverPolicy.ALL)
        await self.js.subscribe(subject, durable=t.name, stream=jetstream.EVENTS_STREAM, cb=on_message,
                                manual_ack=True, config=cfg)

    async def _deliver(self, t, msg, backoff, slots) -> None:
        try:
            event = json.loads(msg.data)
            attempt = msg.metadata.num_delivered
            outcome = await self.post(t.function, event)
            if outcome == "ok":
                await msg.ack()
            elif outcome == "final" or attempt > t.retry:
                await self.dead_letter(t, event, outcome)
                await msg.term()
            else:
                await msg.nak(delay=backoff[min(attempt - 1, len(backoff) - 1)] if backoff else 0.1)
        except Exception:
            log.exception("%s: delivery crashed", t.name)
        finally:
            slots.release()

    async def post(self, function: str, event: dict) -> str:
        import httpx

        body = json.dumps(event.get("data")).encode() if event.get("data") is not None else b""
        try:
            r = await self.http.post(self.urls[function] + "/", content=body, headers=events.binary_headers(event))
        except httpx.HTTPError as e:
            log.warning("%s unreachable for %s (%s)", function, event.get("type"), type(e).__name__)
            return "retry"
        if 200 <= r.status_code < 300:
            return "ok"
        if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
            log.warning("%s refused %s %s: %s", function, event.get("type"), event.get("id"), r.text[:200])
            return "final"
        return "retry"

    async def dead_letter(self, t, event: dict, outcome: str) -> None:
        log.error("dead letter: %s %s after %s", t.name, event.get("id"), outcome)
        await self.js.publish(names.DEADLETTER_SUBJECT.format(t.name), json.dumps(event).encode(),
                              stream=jetstream.EVENTS_STREAM)

    async def timer(self, tick: float) -> None:
        sink = jetstream.JetStreamSink(self.js)
        while True:
            await asyncio.sleep(tick)
            try:
                await sink.emit(events.envelope(events.PING, "sentinels/timer", str(uuid.uuid4()), {}, clock.now_iso()))
            except Exception as e:
                log.warning("timer: %s", type(e).__name__)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s router %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = Settings.load()
    asyncio.run(Router(settings, triggers.load(settings.knative_dir())).run(settings.tick()))


if __name__ == "__main__":
    main()
