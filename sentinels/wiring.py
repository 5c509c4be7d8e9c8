"""Builds the real adapters from settings, once per function process.

Functions ask here for their ports instead of constructing adapters themselves, so the
choice of backend (local executor or Kubernetes) and sink (router or broker) lives in
one place.
"""

from dataclasses import dataclass
from typing import Any

from .adapters import jetstream
from .ports import Board, EventSink, History, JobQueue, JobStore, LogSource, Meter, SentLog, UsageSource
from .settings import Settings


@dataclass
class Stores:
    """One function's connection to JetStream and the ports over it."""

    nc: object
    js: object
    jobs: JobStore
    queue: JobQueue
    history: History
    board: Board
    sink: EventSink
    replicas: int = 1

    async def sent_log(self) -> SentLog:
        """The alert function's record of what it already sent (its bucket is made on first use)."""
        return await jetstream.JetStreamSentLog.open(self.js, self.replicas)

    def meter(self) -> Meter:
        """Counts for the metrics exporter (Slack sends, scheduling passes), on core NATS."""
        from .adapters.meter import NatsMeter

        return NatsMeter(self.nc)


def sink_for(settings: Settings, js) -> EventSink:
    """Knative: the broker ingress named by K_SINK or SENTINELS_BROKER_URL; embedded: the events stream."""
    url = settings.broker_url()
    if url:
        from .adapters.http_sink import HttpSink

        return HttpSink(url)
    return jetstream.JetStreamSink(js)


async def open_stores(settings: Settings, name: str) -> Stores:
    nc = await jetstream.connect(settings.nats_url, name, reconnect=True)
    domain = settings.jetstream_domain()
    js = nc.jetstream(timeout=5, domain=domain)
    replicas = settings.nats_replicas()
    finished, history = settings.retention()
    await jetstream.ensure(js, replicas, history_max_age=history)
    return Stores(nc, js, await jetstream.JetStreamJobs.open(js, finished), jetstream.JetStreamQueue(js, nc, domain),
                  jetstream.JetStreamHistory(js), await jetstream.JetStreamBoard.open(js), sink_for(settings, js),
                  replicas)


def log_source_for(settings: Settings, nc) -> LogSource:
    """Where job output is read: Elasticsearch when configured, falling back to the pod log
    API on Kubernetes or the local log files (which alone answer without Elasticsearch)."""
    from .adapters.logs import FallbackLogs, LocalLogs, PodLogs

    base: Any = PodLogs(cluster_for(settings, nc)) if settings.backend() == "kubernetes" \
        else LocalLogs(settings.home / "jobs")
    es = settings.elasticsearch()
    if not es:
        return base
    from .adapters.elasticsearch_logs import ElasticsearchLogs

    return FallbackLogs(ElasticsearchLogs(es["url"], es["index"], es["api_key"]), base)


def usage_source_for(settings: Settings) -> UsageSource:
    """Where `sentinels top` numbers come from: Prometheus on Kubernetes, the executor's samples here."""
    if settings.backend() == "kubernetes":
        from .adapters.prometheus_usage import PrometheusUsage

        return PrometheusUsage(settings.prometheus_url())
    from .adapters.usage_files import UsageFiles

    return UsageFiles(settings.home / "jobs")


def cluster_for(settings: Settings, nc):
    if settings.backend() == "kubernetes":
        from .adapters.kubernetes import KubernetesCluster

        return KubernetesCluster(settings.kubernetes(), builds=settings.builds())
    from .adapters.local import LocalCluster

    return LocalCluster(nc)


def peak_usage_for(settings: Settings):
    """Where a finished job's peaks come from for MLflow (`ports.PeakUsage`): Prometheus on
    Kubernetes when `prometheus_url` is set; None otherwise (locally the sampler logs them)."""
    if settings.backend() != "kubernetes" or not settings.prometheus_url():
        return None
    from .adapters.prometheus_usage import PrometheusUsage

    return PrometheusUsage(settings.prometheus_url())


def placeholders_for(settings: Settings, cluster):
    """Where placeholder Deployments go (`ports.Placeholders`), or None: off, or not on Kubernetes."""
    if not settings.placeholders().enabled or settings.backend() != "kubernetes":
        return None
    from .adapters.kube_placeholders import KubePlaceholders

    return KubePlaceholders(cluster)


def warm(tracker, settings: Settings | None = None) -> None:
    """Import MLflow and open its store in the background, so the first job does not pay for it.

    The Kubernetes client is imported first, here, in the calling thread: both it and MLflow
    import `requests`, and two threads importing it at once can leave one of them with a
    half-initialised module (Python's import deadlock avoidance) that breaks the function.
    """
    import threading

    if settings is not None and settings.backend() == "kubernetes":
        from .adapters.kubernetes import preload

        preload()

    def go():
        try:
            tracker.warm()
        except Exception:  # MLflow down at start is fine: runs catch up later
            pass

    if tracker is not None:
        threading.Thread(target=go, daemon=True, name="mlflow-warm").start()


def tracker_for(settings: Settings):
    """The MLflow tracker, or None when tracking is switched off (`MLFLOW_TRACKING_URI=none`)."""
    uri = settings.mlflow_uri()
    if uri in ("none", "off", ""):
        return None
    from .adapters.mlflow_tracker import MlflowTracker, fail_fast_defaults

    fail_fast_defaults()  # once, as the process is wired (MLflow reads them from the environment)
    return MlflowTracker(uri)


class Lazy:
    """A function's service, built on first use and again after its NATS connection closed.

    Functions start without NATS (so a bad configuration fails at import, and NATS being
    down answers 503 instead of a crash loop); `build(stores)` wires the service.
    """

    def __init__(self, settings: Settings, name: str, build):
        import asyncio

        self.settings, self.name, self.build = settings, name, build
        self.service = None
        self.stores: Stores | None = None
        self._lock = asyncio.Lock()

    async def get(self):
        async with self._lock:
            if self.service is None or self.stores.nc.is_closed:
                self.stores = await open_stores(self.settings, self.name)
                self.service = await self.build(self.stores)
            return self.service


async def jetstream_health(lazy: "Lazy", timeout: float = 2.0) -> str:
    """"ok" when this function can reach JetStream now, else a few words why not (health checks).
    A connection still being made is not cancelled by a health check that gives up on it."""
    import asyncio

    try:
        await asyncio.wait_for(asyncio.shield(lazy.get()), timeout)
        js: Any = lazy.stores.js if lazy.stores is not None else None
        if js is None:
            return "unavailable (not connected)"
        await asyncio.wait_for(js.account_info(), timeout)
        return "ok"
    except Exception as e:  # anything in the way of JetStream makes the function unhealthy
        return f"unavailable ({getattr(e, 'message', None) or type(e).__name__})"
