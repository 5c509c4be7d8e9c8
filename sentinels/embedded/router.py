"""The embedded broker: CloudEvents from SENTINELS_EVENTS to the functions over HTTP.

One durable consumer per trigger (named after the Trigger), delivery in binary
content mode, Knative's rules: 2xx acks; 4xx other than 408/429 is final; 5xx, 408,
429 and connection errors are retried with the trigger's exponential back-off, capped
(`events.max_backoff`, default 1 min), for as long as the retry horizon
(`events.retry_horizon`, default 24 h) since the event was published: a Slack or
function outage of hours loses nothing. What is refused for good or outlives the
horizon goes to the dead-letter stream (`adapters.deadletters`), where it is counted,
listed and replayable. Also the timer: a `dev.knative.sources.ping` event every
`Settings.tick()` seconds (SENTINELS_TICK or
`scheduler.tick`, default 10).
"""

import asyncio
import datetime
import json
import logging
import uuid
from dataclasses import dataclass

from nats.js import api

from .. import clock
from ..adapters import deadletters, jetstream
from ..domain import duration, events
from ..domain.errors import ConfigError, InvalidSpec
from ..adapters.meter import NatsMeter
from ..settings import Settings
from . import localhttp, readiness, serve, triggers

log = logging.getLogger("sentinels.router")
IN_FLIGHT = 16


def delays(t: triggers.Trigger) -> list[float]:
    return [t.backoff_delay * (2 ** i if t.exponential else 1) for i in range(t.retry)]


@dataclass(frozen=True)
class Retry:
    horizon: float = 24 * 3600.0  # seconds an event is retried for, counted from its publication
    max_backoff: float = 60.0

    @classmethod
    def from_dict(cls, raw: dict) -> "Retry":
        if not isinstance(raw, dict):
            raise ConfigError("configuration: events must be a mapping (retry_horizon, max_backoff)")
        unknown = sorted(set(map(str, raw)) - {"retry_horizon", "max_backoff"})
        if unknown:
            raise ConfigError(f"configuration: unknown key(s) events.{', events.'.join(unknown)} "
                              "(known: retry_horizon, max_backoff)")
        try:
            horizon = duration.seconds(raw["retry_horizon"], "events.retry_horizon") if "retry_horizon" in raw \
                else cls.horizon
            cap = duration.seconds(raw["max_backoff"], "events.max_backoff") if "max_backoff" in raw else cls.max_backoff
        except InvalidSpec as e:
            raise ConfigError(f"configuration: {e.message}") from None
        return cls(float(horizon), float(cap))

    def delay(self, t: triggers.Trigger, attempt: int) -> float:
        """Back-off before delivery `attempt + 1`: the trigger's own, capped."""
        base = t.backoff_delay or 0.1
        return min(self.max_backoff, base * (2 ** min(attempt - 1, 30) if t.exponential else 1))


def retry_settings(settings: Settings, env=None) -> Retry:
    env = settings.env if env is None else env
    raw = dict(settings.section("events"))
    if env.get("SENTINELS_RETRY_HORIZON"):
        raw["retry_horizon"] = env["SENTINELS_RETRY_HORIZON"]
    return Retry.from_dict(raw)


def age_seconds(msg) -> float:
    published = msg.metadata.timestamp
    if published.tzinfo is None:
        published = published.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (datetime.datetime.now(datetime.timezone.utc) - published).total_seconds())



class Router:
    def __init__(self, settings: Settings, table: list[triggers.Trigger], retry: Retry | None = None):
        self.s = settings
        self.retry = retry or Retry()
        self.table = [t for t in table if t.function in serve.available()]
        self.urls = {name: f"http://127.0.0.1:{settings.function_port(spec[2])}" for name, spec in serve.FUNCTIONS.items()}
        self._tasks: set[asyncio.Task] = set()  # deliveries in flight: referenced until done
        secret = serve.internal_secret()
        self.internal = {"x-sentinels-internal": secret.decode()} if secret else {}

    async def run(self, tick: float) -> None:
        self.nc = await jetstream.connect(self.s.nats_url, "sentinels-router", reconnect=True)
        self.js = self.nc.jetstream(timeout=5)
        self.meter = NatsMeter(self.nc)
        await jetstream.ensure(self.js)
        self.http = localhttp.LocalHttp(timeout=30)
        for t in self.table:
            await self.consume(t)
        log.info("routing %d triggers: %s", len(self.table), ", ".join(t.name for t in self.table))
        readiness.mark(self.s.home, "router")
        await self.timer(tick)

    async def consume(self, t: triggers.Trigger) -> None:
        """A durable push consumer per trigger; at most IN_FLIGHT deliveries at once."""
        subject = jetstream.EVENTS_SUBJECT.format(events.subject_token(t.event_type))
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def on_message(msg):
            await slots.acquire()  # back-pressure: the client holds further messages
            task = asyncio.create_task(self._deliver(t, msg, slots))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        cfg = api.ConsumerConfig(durable_name=t.name, ack_policy=api.AckPolicy.EXPLICIT, max_deliver=-1,
                                 ack_wait=60.0, max_ack_pending=4 * IN_FLIGHT, deliver_policy=api.DeliverPolicy.ALL)
        try:  # a consumer made by an older version gave up after a few tries: lift that
            info = await self.js.consumer_info(jetstream.EVENTS_STREAM, t.name)
            if info.config.max_deliver not in (None, -1):
                info.config.max_deliver = -1
                await self.js.add_consumer(jetstream.EVENTS_STREAM, info.config)
        except Exception:  # not there yet: subscribe creates it
            pass
        await self.js.subscribe(subject, durable=t.name, stream=jetstream.EVENTS_STREAM, cb=on_message,
                                manual_ack=True, config=cfg)

    async def _deliver(self, t, msg, slots) -> None:
        try:
            event = json.loads(msg.data)
            attempt = msg.metadata.num_delivered
            outcome = await self.post(t.function, event)
            age = age_seconds(msg)
            if outcome == "ok":
                await msg.ack()
                return
            await self.meter.count("handler_error", t.function)
            if outcome == "final" or age >= self.retry.horizon:
                why = "refused" if outcome == "final" else f"still failing after {duration.human(age)}"
                await self.dead_letter(t, event, why, attempt, msg.metadata.timestamp)
                await msg.term()
            else:
                await self.meter.count("redelivery", t.name)
                await msg.nak(delay=self.retry.delay(t, attempt))
        except Exception:
            log.exception("%s: delivery crashed", t.name)
        finally:
            slots.release()

    async def post(self, function: str, event: dict) -> str:
        body = json.dumps(event.get("data")).encode() if event.get("data") is not None else b""
        try:
            r = await self.http.post(self.urls[function] + "/", body, {**events.binary_headers(event), **self.internal})
        except (OSError, asyncio.TimeoutError) as e:
            log.warning("%s unreachable for %s (%s)", function, event.get("type"), type(e).__name__)
            return "retry"
        if 200 <= r.status_code < 300:
            return "ok"
        if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
            log.warning("%s refused %s %s: %s", function, event.get("type"), event.get("id"), r.text[:200])
            return "final"
        return "retry"

    async def dead_letter(self, t, event: dict, why: str, attempts: int, first) -> None:
        log.error("dead letter: %s %s (%s, %d deliveries)", t.name, event.get("id"), why, attempts)
        first_at = first.isoformat() if hasattr(first, "isoformat") else str(first)
        await deadletters.add(self.js, deadletters.letter(t.name, t.function, event, why, attempts, first_at,
                                                          clock.now_iso()))

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
    settings = Settings.load()
    try:
        retry = retry_settings(settings)
        table = triggers.load(settings.knative_dir())
    except ConfigError as e:
        raise SystemExit(f"sentinels router: {e.message}") from None
    import uvloop  # every delivered event is a few loop turns: the faster loop the functions also run on

    uvloop.run(Router(settings, table, retry).run(settings.tick()))


if __name__ == "__main__":
    main()
