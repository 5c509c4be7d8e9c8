"""The metrics exporter: one small always-on process that Prometheus scrapes at `/metrics`.

Functions scale to zero, so their in-process counters would vanish. Here:
* gauges are computed from JetStream on each scrape by a custom collector (queue depth and
  oldest wait per class from the server's per-subject counts, capacity from the cluster,
  JetStream storage), plus jobs per state and waiting demand from a live mirror of
  `sentinels_jobs` (a KV watch, so a scrape never scans the store);
* counters and histograms come from the event stream: record changes seen by the mirror
  (time in queue, submit to start, duration by end state) and the counts functions publish
  through the `Meter` port (handler errors, redeliveries, Slack sends, scheduling passes),
  and the router's dead letters.

`sentinels up` runs it on the submit port + 4; the chart runs it as a Deployment with a
ServiceMonitor. `python -m sentinels.exporter`.
"""

import asyncio
import json
import logging
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily

from . import clock
from .adapters import jetstream, meter
from .domain import demand, metrics, names
from .domain.states import ACTIVE, STATES
from .settings import Settings

log = logging.getLogger("sentinels.exporter")
NS = "sentinels"
DEAD_LETTERS = names.DEADLETTER_SUBJECTS


class Events:
    """Counters and histograms fed by the event stream; they start at zero with the exporter."""

    def __init__(self):
        r = self.registry = CollectorRegistry(auto_describe=False)
        self.queue_wait = Histogram("queue_wait_seconds", "Time a job waited in the queue before it was placed",
                                    ["class"], namespace=NS, buckets=metrics.WAIT_BUCKETS, registry=r)
        self.start_latency = Histogram("start_latency_seconds", "Time from submission to the job running",
                                       ["class"], namespace=NS, buckets=metrics.WAIT_BUCKETS, registry=r)
        self.duration = Histogram("job_duration_seconds", "Run time of finished jobs by end state",
                                  ["state"], namespace=NS, buckets=metrics.DURATION_BUCKETS, registry=r)
        self.submitted = Counter("jobs_submitted_total", "Jobs accepted into the queue", ["class"], namespace=NS,
                                 registry=r)
        self.finished = Counter("jobs_finished_total", "Jobs that reached an end state", ["state"], namespace=NS,
                                registry=r)
        self.pass_seconds = Histogram("schedule_pass_duration_seconds", "Duration of one scheduling pass",
                                      namespace=NS, buckets=metrics.PASS_BUCKETS, registry=r)
        self.placed = Histogram("schedule_placed_jobs", "Jobs placed per scheduling pass", namespace=NS,
                                buckets=metrics.PLACED_BUCKETS, registry=r)
        self.handler_errors = Counter("handler_errors_total", "Deliveries a function answered with an error",
                                      ["function"], namespace=NS, registry=r)
        self.redeliveries = Counter("broker_redeliveries_total", "Events the broker delivered again after an error",
                                    ["trigger"], namespace=NS, registry=r)
        self.dead_letters = Counter("dead_letters_total", "Events given up after the last retry", ["trigger"],
                                    namespace=NS, registry=r)
        self.slack_sent = Counter("slack_sends_total", "Slack messages sent", namespace=NS, registry=r)
        self.slack_failed = Counter("slack_send_failures_total", "Slack messages that could not be sent",
                                    namespace=NS, registry=r)
        for s in ("succeeded", "failed", "cancelled"):  # a series exists before the first end
            self.finished.labels(s)

    def record(self, old_state, record: dict) -> None:
        for o in metrics.observations(old_state, record):
            if o.metric == "queue_wait":
                self.queue_wait.labels(o.label).observe(o.seconds)
            elif o.metric == "start_latency":
                self.start_latency.labels(o.label).observe(o.seconds)
            elif o.metric == "duration":
                self.duration.labels(o.label).observe(o.seconds)
            elif o.metric == "submitted":
                self.submitted.labels(o.label).inc()
            elif o.metric == "finished":
                self.finished.labels(o.label).inc()

    def count(self, what: str, label: str, value: float) -> None:
        if what == "handler_error":
            self.handler_errors.labels(label).inc()
        elif what == "redelivery":
            self.redeliveries.labels(label).inc()
        elif what == "slack_sent":
            self.slack_sent.inc()
        elif what == "slack_failed":
            self.slack_failed.inc()
        elif what == "schedule_pass":
            self.pass_seconds.observe(value)
            self.placed.observe(float(label) if label.isdigit() else 0)


class Mirror:
    """A live copy of jobs per state and waiting demand, from a KV watch of `sentinels_jobs`."""

    def __init__(self, events: Events):
        self.tally = metrics.Tally()
        self.events = events
        self.ready = False

    def apply(self, key: str, value) -> None:
        record = None
        if value:
            try:
                record = json.loads(value)
            except ValueError:
                return
            if not isinstance(record, dict):
                return
        old = self.tally.apply(key, record)
        if self.ready and record is not None:  # the first load is history, not news
            self.events.record(old.state if old else None, record)

    async def run(self, js) -> None:
        """Follow the job records for ever: before the functions made the bucket it waits; a
        watch that fails starts again from a fresh load."""
        while True:
            try:
                await self._watch(js)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the functions create the bucket; the exporter only reads
                log.info("job watch: %s; starting again", getattr(e, "description", None) or type(e).__name__)
            self.tally, self.ready = metrics.Tally(), False
            await asyncio.sleep(2)

    async def _watch(self, js) -> None:
        kv = await js.key_value(names.JOBS_BUCKET)
        watcher = await kv.watchall()
        async for entry in watcher:
            if entry is None:
                self.ready = True
                continue
            self.apply(entry.key, entry.value if entry.operation is None else None)


class Families:
    """What one scrape renders: gauges computed now, then the event registry's metrics."""

    def __init__(self, gauges, registry):
        self.gauges, self.registry = gauges, registry

    def collect(self):
        yield from self.gauges
        yield from self.registry.collect()


def _gauge(name: str, doc: str, labels=None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NS}_{name}", doc, labels=labels)


class Exporter:
    def __init__(self, js, queue, cluster, classes: list[str], events: Events, mirror: Mirror, now=time.time):
        self.js, self.queue, self.cluster, self.classes = js, queue, cluster, classes
        self.events, self.mirror, self.now = events, mirror, now

    async def _queue(self, out: list) -> None:
        counts, oldest = await asyncio.gather(self.queue.counts(), self.queue.oldest())
        depth = _gauge("queue_jobs", "Jobs waiting in the queue per priority class", ["class"])
        wait = _gauge("queue_oldest_wait_seconds", "How long the longest-waiting job of each class has waited",
                      ["class"])
        now = self.now()
        for klass in dict.fromkeys(self.classes + sorted(counts)):
            depth.add_metric([klass], counts.get(klass, 0))
            wait.add_metric([klass], max(0.0, now - clock.parse_iso(oldest[klass])) if klass in oldest else 0.0)
        out += [depth, wait]

    async def _storage(self, out: list) -> None:
        info = await self.js.account_info()
        used = _gauge("jetstream_storage_bytes", "JetStream file storage used by this account")
        used.add_metric([], info.storage)
        out.append(used)
        limit = getattr(info.limits, "max_storage", -1) or -1
        if limit > 0:
            cap = _gauge("jetstream_storage_limit_bytes", "JetStream file storage this account may use")
            cap.add_metric([], limit)
            out.append(cap)

    async def _capacity(self, out: list) -> None:
        nodes = [n for n in await self.cluster.nodes() if n.ready and n.schedulable]
        active = sum(self.mirror.tally.by_state.get(s, 0) for s in ACTIVE)
        rows = (("cpu_cores", 1000, "cpu_millis", "free_cpu_millis"),
                ("memory_bytes", 1, "memory_bytes", "free_memory_bytes"),
                ("gpus", 1, "gpu", "free_gpu"))
        for unit, scale, total, free in rows:
            cap = _gauge(f"capacity_{unit}", f"Allocatable {unit.replace('_', ' ')} of ready, schedulable nodes")
            alloc = _gauge(f"allocated_{unit}", f"Requested {unit.replace('_', ' ')} on those nodes")
            cap.add_metric([], sum(getattr(n, total) for n in nodes) / scale)
            alloc.add_metric([], sum(getattr(n, total) - getattr(n, free) for n in nodes) / scale)
            out += [cap, alloc]
        if nodes and all(n.free_pods is not None for n in nodes):
            slots = _gauge("capacity_slots", "Jobs the nodes may run at once (pod capacity, local slots)")
            slots.add_metric([], active + sum(n.free_pods for n in nodes))
            used = _gauge("allocated_slots", "Jobs placed or running")
            used.add_metric([], active)
            out += [slots, used]

    def _mirror(self, out: list) -> None:
        t = self.mirror.tally
        by_state = _gauge("jobs", "Jobs per state", ["state"])
        for s in STATES:
            by_state.add_metric([s.lower()], t.by_state.get(s, 0))
        out.append(by_state)
        families = {name: GaugeMetricFamily(name, doc, labels=["class", "shape"])
                    for name, (doc, _) in demand.METRICS.items()}
        for name, labels, value in demand.samples(t.demand):  # what an autoscaler should act on
            families[name].add_metric([labels["class"], labels["shape"]], value)
        out += families.values()
        ready = _gauge("exporter_mirror_ready", "1 once the exporter has loaded every job record")
        ready.add_metric([], 1 if self.mirror.ready else 0)
        out.append(ready)

    async def render(self) -> bytes:
        out: list = []
        up = {}
        for name, part in (("jetstream", self._queue), ("jetstream_storage", self._storage),
                           ("cluster", self._capacity)):
            try:
                await asyncio.wait_for(part(out), 5.0)
                up[name] = 1
            except Exception as e:  # NATS or the cluster down: say so in a gauge, keep the rest
                log.warning("scrape: %s unavailable (%s)", name, getattr(e, "message", None) or type(e).__name__)
                up[name] = 0
        self._mirror(out)
        for name in ("jetstream", "cluster"):
            g = _gauge(f"{name}_up", f"1 when the exporter could read the {name} on this scrape")
            g.add_metric([], up[name])
            out.append(g)
        return generate_latest(Families(out, self.events.registry))


def asgi(exporter: Exporter):
    """The exporter's HTTP face: GET /metrics, GET / (health)."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] == "GET":
            status, ctype, body = 200, CONTENT_TYPE_LATEST, await exporter.render()
        elif scope["path"] == "/" and scope["method"] == "GET":
            status, ctype, body = 200, "text/plain", b"sentinels exporter: metrics at /metrics\n"
        else:
            status, ctype, body = 404, "text/plain", b"not found; metrics are at /metrics\n"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


async def listen_counts(nc, events: Events) -> None:
    async def on_count(msg):
        got = meter.parse(msg.subject, msg.data)
        if got:
            events.count(*got)

    async def on_dead_letter(msg):
        events.dead_letters.labels(msg.subject.split(".")[-1]).inc()

    await nc.subscribe(meter.WILDCARD, cb=on_count)
    await nc.subscribe(DEAD_LETTERS, cb=on_dead_letter)


def listen_address(settings: Settings) -> tuple[str, int]:
    """`SENTINELS_METRICS_LISTEN` (host:port; the chart sets 0.0.0.0:9464), else loopback on submit port + 4."""
    return settings.metrics_address()


async def serve(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from .wiring import cluster_for

    nc = await jetstream.connect(settings.nats_url, "sentinels-exporter", reconnect=True, timeout=30)
    domain = settings.jetstream_domain()
    js = nc.jetstream(timeout=5, domain=domain)  # read-only: the functions create the streams
    events = Events()
    mirror = Mirror(events)
    exporter = Exporter(js, jetstream.JetStreamQueue(js, nc, domain), cluster_for(settings, nc),
                        settings.priorities().ordered(), events, mirror)
    await listen_counts(nc, events)
    watch = asyncio.create_task(mirror.run(js))
    server = uvicorn.Server(uvicorn.Config(asgi(exporter), host=host, port=port, log_level="warning",
                                           access_log=False, lifespan="off"))
    log.info("metrics at http://%s:%d/metrics", host, port)
    try:
        await server.serve()
    finally:
        watch.cancel()
        await nc.close()


def main() -> None:
    from .domain.errors import SentinelsError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s exporter %(levelname)s %(message)s")
    try:
        settings = Settings.load()
        host, port = listen_address(settings)
        asyncio.run(serve(settings, host, port))
    except SentinelsError as e:
        print(f"sentinels exporter: {e.message}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
