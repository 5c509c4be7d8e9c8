"""The `Cluster` port on Kubernetes, through the official client.

Jobs run as batch/v1 Jobs built by `kube_manifest`; free capacity is read from Nodes and
non-terminal Pods. Every call is idempotent (409 on create and 404 on delete are
successes), blocking client calls run in a worker thread, and an unreachable or failing
API server becomes `Unavailable` (retry later), never a stack trace. The client library
is imported on first use so the CLI stays fast.
"""

import asyncio
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Optional

from ..domain import quantity
from ..domain.build import BuildConfig
from ..domain.demand import PLACEHOLDER_LABELS
from ..domain.errors import ConfigError, InvalidSpec, LaunchRefused, QuotaExceeded, SentinelsError, Unavailable
from ..domain.job import is_job_id
from ..domain.names import JOB_NAME_LABEL, is_job_name
from ..domain.placement import GPU_TAINT, Node
from . import build_manifest
from . import kube_manifest as km

log = logging.getLogger("sentinels.kubernetes")
PREEMPTION_REASON = "PreemptionByScheduler"  # the DisruptionTarget reason the kube-scheduler gives its own victims
TERMINAL_PHASES = ("Succeeded", "Failed")
LIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"
PAGE = 500
# Blocking client calls at once (worker threads of the adapter's own pool): asyncio's shared
# default pool has cpu count + 4 threads, which capped a burst's launches at a few dozen per
# second while the threads waited on the API server, not on the CPU
CALLS_AT_ONCE = 32
_EXISTS = object()


# --- pure conversion of API objects -------------------------------------------------

def _amounts(values: Mapping) -> tuple[int, int, int]:
    """(cpu millis, memory bytes, gpus) from a requests/allocatable mapping; ValueError if malformed."""
    try:
        cpu = math.ceil(quantity.parse(values.get("cpu", 0), "cpu") * 1000)
        mem = math.ceil(quantity.parse(values.get("memory", 0), "memory"))
        gpu = math.floor(quantity.parse(values.get(GPU_TAINT, 0), GPU_TAINT))
    except InvalidSpec as e:
        raise ValueError(e.message) from None
    return cpu, mem, gpu


def _container_requests(container: Mapping) -> tuple[int, int, int]:
    res = container.get("resources") or {}
    limits, requests = res.get("limits") or {}, res.get("requests") or {}
    return _amounts({**limits, **requests})  # a limit without a request is also the request


def _add(a, b):
    return tuple(x + y for x, y in zip(a, b))


def is_placeholder(pod: Mapping) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in PLACEHOLDER_LABELS.items())


def pod_requests(pod: Mapping) -> tuple[int, int, int]:
    """A pod's effective requests as the scheduler counts them (init containers, sidecars, overhead).
    Placeholder pods count as nothing: they only stand in for queued jobs and are preempted
    by the first real pod (otherwise the room they hold would keep their job waiting)."""
    if is_placeholder(pod):
        return (0, 0, 0)
    spec = pod.get("spec") or {}
    total = (0, 0, 0)
    for c in spec.get("containers") or []:
        total = _add(total, _container_requests(c))
    sidecars, init_peak = (0, 0, 0), (0, 0, 0)
    for c in spec.get("initContainers") or []:
        if c.get("restartPolicy") == "Always":
            sidecars = _add(sidecars, _container_requests(c))
        else:
            init_peak = tuple(map(max, init_peak, _add(sidecars, _container_requests(c))))
    total = tuple(map(max, _add(total, sidecars), init_peak))
    return _add(total, _amounts(spec.get("overhead") or {}))


def live_pods_by_node(pods: list) -> dict[str, int]:
    """How many bound, non-terminal pods each node runs (counted against its pod capacity)."""
    out: dict[str, int] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node and (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES:
            out[node] = out.get(node, 0) + 1
    return out


def requests_by_node(pods: list) -> dict[str, tuple[int, int, int]]:
    """Sum the requests of bound, non-terminal pods per node name."""
    out: dict[str, tuple[int, int, int]] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            continue
        try:
            out[node] = _add(out.get(node, (0, 0, 0)), pod_requests(pod))
        except (ValueError, TypeError, AttributeError) as e:
            log.warning("pod %s: requests not understood (%s); not counted",
                        (pod.get("metadata") or {}).get("name"), e)
    return out


def parse_node(node: Mapping, pod_requests: Mapping, pod_counts: Optional[Mapping] = None) -> Node:
    """Node object -> placement.Node; ValueError/TypeError/KeyError if it lacks capacity fields."""
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("no metadata.name")
    alloc = status.get("allocatable")
    if not isinstance(alloc, Mapping) or "cpu" not in alloc or "memory" not in alloc:
        raise ValueError("status.allocatable lacks cpu or memory")
    cpu, mem, gpu = _amounts(alloc)
    used = tuple(pod_requests.get(name, (0, 0, 0)))
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    taints = tuple((t["key"], t.get("value") or "", t["effect"]) for t in spec.get("taints") or [])
    pods = alloc.get("pods")
    free_pods = None
    if pods is not None and pod_counts is not None:
        free_pods = max(0, int(quantity.parse(pods, "pods")) - pod_counts.get(name, 0))
    return Node(name=name, cpu_millis=cpu, memory_bytes=mem, gpu=gpu,
                free_cpu_millis=max(0, cpu - used[0]), free_memory_bytes=max(0, mem - used[1]),
                free_gpu=max(0, gpu - used[2]), labels=dict(meta.get("labels") or {}), taints=taints,
                ready=ready, schedulable=not spec.get("unschedulable", False), free_pods=free_pods)


def node_from_object(node: dict, pod_requests: dict, pod_counts: Optional[dict] = None) -> Optional[Node]:
    """Like `parse_node`, but a malformed node is skipped (None) with a logged warning.

    `pod_requests` maps node name -> (cpu millis, memory bytes, gpus) requested by its live pods.
    """
    try:
        return parse_node(node, pod_requests, pod_counts)
    except (ValueError, TypeError, KeyError, AttributeError, InvalidSpec) as e:
        name = (node.get("metadata") or {}).get("name") if isinstance(node, Mapping) else None
        log.warning("node %s skipped: malformed capacity (%s)", name or "<unnamed>", e)
        return None


def job_finished(job: Mapping) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)


def _pod_age(pod: Mapping) -> tuple[str, int]:
    """Sorts pods oldest first: by creation, then by resource version."""
    meta = pod.get("metadata") or {}
    version = str(meta.get("resourceVersion") or "")
    return meta.get("creationTimestamp") or "", int(version) if version.isdigit() else 0


def _labelled(obj: Mapping, key: str, value: Optional[str] = None) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return key in labels and (value is None or labels[key] == value)


# --- the API client ------------------------------------------------------------------

def preload() -> None:
    """Import the client now (see `wiring.warm`: never at the same time as MLflow in a thread)."""
    import kubernetes.client  # noqa: F401


def api_client(cfg: km.KubeConfig):
    """An ApiClient: explicit host, else an explicit kubeconfig, else in-cluster, else ~/.kube/config."""
    from kubernetes import client, config

    conf = client.Configuration()
    conf.connection_pool_maxsize = CALLS_AT_ONCE  # one kept-alive connection per worker thread
    if cfg.host:
        conf.host = cfg.host.rstrip("/")
        return client.ApiClient(conf)
    errors = []
    loaders = [] if cfg.kubeconfig else [lambda: config.load_incluster_config(client_configuration=conf)]
    loaders.append(lambda: config.load_kube_config(config_file=cfg.kubeconfig, context=cfg.context,
                                                   client_configuration=conf, persist_config=False))
    for load in loaders:
        try:
            load()
            return client.ApiClient(conf)
        except (config.ConfigException, OSError, ValueError, TypeError) as e:
            errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
    raise ConfigError("kubernetes: no in-cluster service account, no usable kubeconfig and no "
                      f"kubernetes.host configured ({'; '.join(errors)})")


def _status_message(exc) -> str:
    try:
        body = json.loads(exc.body or "")
        return body.get("message") or exc.reason or ""
    except (ValueError, TypeError, AttributeError):
        return (exc.body or exc.reason or "").strip()[:300]


def _json(resp) -> dict:
    """Read the whole body (which also frees the connection) and parse it."""
    return json.loads(resp.data or b"{}")


class KubernetesCluster:
    """Runs jobs as Kubernetes Jobs in `cfg.namespace`; implements `sentinels.ports.Cluster`."""

    def __init__(self, cfg: km.KubeConfig, client=None, builds: BuildConfig = BuildConfig(), informer: bool = True):
        self.cfg = cfg
        self.builds = builds
        self._client = client  # an ApiClient; built from cfg on first use when None
        self._use_informer = informer  # keep nodes and live pods by watch (see kube_informer)
        self._informer: Optional[Any] = None  # kube_informer.Informer, started by the first nodes()
        self._apis: dict[str, Any] = {}  # CoreV1Api, BatchV1Api, ... made once
        self._pool: Optional[ThreadPoolExecutor] = None  # where blocking calls run (CALLS_AT_ONCE threads)

    def __del__(self):
        informer = getattr(self, "_informer", None)
        if informer is not None:
            informer.close()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    # plumbing ---------------------------------------------------------------------
    def _api(self, kind: str):
        api = self._apis.get(kind)
        if api is None:
            from kubernetes import client

            if self._client is None:
                self._client = api_client(self.cfg)
            api = self._apis[kind] = getattr(client, kind)(self._client)
        return api

    async def _run(self, what: str, fn: Callable, *, missing_ok=False, exists_ok=False, bad_request_ok=False):
        """Run one blocking call in a thread; map failures to sentinels errors."""

        def call():
            from kubernetes.client.exceptions import ApiException
            from urllib3.exceptions import HTTPError

            try:
                return fn()
            except ApiException as e:
                if (e.status == 404 and missing_ok) or (e.status == 400 and bad_request_ok):
                    return None
                if e.status == 409 and exists_ok:
                    return _EXISTS
                message = _status_message(e)
                if e.status in (400, 422):
                    raise InvalidSpec(f"Kubernetes rejected {what}: {message}") from None
                if e.status == 403 and "exceeded quota" in message:
                    raise QuotaExceeded(f"Kubernetes refused {what}: {message}") from None
                if e.status == 403 and "admission webhook" in message:
                    raise LaunchRefused(f"Kubernetes refused {what}: {message}") from None
                raise Unavailable(f"Kubernetes API error {e.status} while {what}: {message}") from None
            except (HTTPError, OSError) as e:
                host = getattr(getattr(self._client, "configuration", None), "host", "the API server")
                cause = type(getattr(e, "reason", None) or e).__name__  # e.g. NewConnectionError, ReadTimeoutError
                raise Unavailable(f"Kubernetes API unreachable while {what} ({host}): {cause}") from None
            except ValueError as e:  # a body that is not JSON
                raise Unavailable(f"Kubernetes API answered nonsense while {what}: {e}") from None

        if self._pool is None:
            self._pool = ThreadPoolExecutor(CALLS_AT_ONCE, thread_name_prefix="kubernetes")
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def _opts(self) -> dict:
        return {"_preload_content": False, "_request_timeout": self.cfg.request_timeout}

    async def _list(self, what: str, method: Callable, *args, **selectors) -> list:
        items: list = []
        token = None
        while True:
            page = await self._run(what, lambda: _json(method(*args, limit=PAGE, _continue=token, **selectors,
                                                               **self._opts())))
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    async def check_reachable(self) -> None:
        """Ask the API server its version: Unavailable (naming the host) when it does not
        answer, ConfigError when there is no configuration to reach it with."""
        version = self._api("VersionApi")
        await self._run("asking the API server its version", lambda: _json(version.get_code(**self._opts())))

    # the port -----------------------------------------------------------------------
    async def nodes(self) -> list[Node]:
        """Free capacity per node: from the watch-fed cache, else (not synced yet, watch
        failing) by listing nodes and live pods."""
        core = self._api("CoreV1Api")
        if self._use_informer:
            if self._informer is None:
                from .kube_informer import Informer

                self._informer = Informer(core, lambda o: node_from_object(o, {}, {}), pod_requests, LIVE_PODS,
                                          self.cfg.request_timeout)
            cached = self._informer.snapshot()
            if cached is not None:
                return cached
        raw_nodes, pods = await asyncio.gather(
            self._list("listing nodes", core.list_node),
            self._list("listing pods", core.list_pod_for_all_namespaces, field_selector=LIVE_PODS))
        used, counts = requests_by_node(pods), live_pods_by_node(pods)
        return [n for n in (node_from_object(o, used, counts) for o in raw_nodes) if n is not None]

    async def launch(self, record: dict, extra_env: dict) -> None:
        config_map, job = km.job_objects(record, extra_env, self.cfg)
        batch, core = self._api("BatchV1Api"), self._api("CoreV1Api")
        ns, name = self.cfg.namespace, job["metadata"]["name"]
        created = await self._create_job(batch, job)
        if config_map is None:  # the job's YAML rides on its pod (one call per launch)
            return
        if created.get("metadata", {}).get("uid"):  # the ConfigMap goes away with its Job (TTL)
            config_map = km.owned_by(config_map, {"apiVersion": "batch/v1", "kind": "Job", **created})
        await self._run(f"creating ConfigMap {name}",
                        lambda: _json(core.create_namespaced_config_map(ns, config_map, **self._opts())),
                        exists_ok=True)

    async def _create_job(self, batch, job: dict) -> dict:
        """Create the Job; an existing one of the same attempt is success, one of an older attempt is replaced."""
        ns, name = self.cfg.namespace, job["metadata"]["name"]
        attempt = job["metadata"]["annotations"][km.ATTEMPT_ANNOTATION]
        for _ in range(2):
            created = await self._run(f"creating Job {name}",
                                      lambda: _json(batch.create_namespaced_job(ns, job, **self._opts())),
                                      exists_ok=True)
            if created is not _EXISTS:
                return created
            existing = await self._run(f"reading Job {name}",
                                       lambda: _json(batch.read_namespaced_job(name, ns, **self._opts())),
                                       missing_ok=True)
            if existing is None:
                continue  # deleted in between: create again
            meta = existing.get("metadata") or {}
            if meta.get("deletionTimestamp"):
                raise Unavailable(f"Job {name} of an earlier attempt is still being deleted; try again shortly")
            if (meta.get("annotations") or {}).get(km.ATTEMPT_ANNOTATION) == attempt:
                return existing  # launched before: nothing to do
            log.info("Job %s belongs to an earlier attempt; replacing it", name)
            await self._delete_job(batch, name)
        raise Unavailable(f"Job {name} of an earlier attempt is still there; try again shortly")

    async def _delete_job(self, batch, name: str) -> None:
        await self._run(f"deleting Job {name}",
                        lambda: _json(batch.delete_namespaced_job(name, self.cfg.namespace,
                                                                  propagation_policy="Background", **self._opts())),
                        missing_ok=True)

    async def build(self, record: dict) -> None:
        """Create the rootless BuildKit Job of a Dockerfile submit (created twice: harmless)."""
        manifest = build_manifest.build_job(record, self.builds, self.cfg)
        batch, name = self._api("BatchV1Api"), manifest["metadata"]["name"]
        await self._run(f"creating build Job {name}",
                        lambda: _json(batch.create_namespaced_job(self.cfg.namespace, manifest, **self._opts())),
                        exists_ok=True)

    async def stop(self, record: dict, why: Optional[str] = None) -> None:
        name = record.get("k8s_job") or km.job_name(record["id"], int(record.get("attempts") or 1))
        if why:  # as the kube-scheduler does before it preempts: the pod says why it goes
            await self._disruption_target(name, why)
        await self._delete_job(self._api("BatchV1Api"), name)
        if km.config_inline(km.config_text(record)):
            return  # no ConfigMap was made for it
        core = self._api("CoreV1Api")
        await self._run(f"deleting ConfigMap {name}",
                        lambda: _json(core.delete_namespaced_config_map(name, self.cfg.namespace, **self._opts())),
                        missing_ok=True)

    async def _disruption_target(self, job: str, why: str) -> None:
        """Mark the Job's live pods DisruptionTarget (reason PreemptionByScheduler, message `why`):
        `kubectl describe pod` and the lifecycle then read a preemption, and the Job's
        podFailurePolicy ignores the failure. Best effort: the deletion goes ahead regardless."""
        import time

        from ..domain.times import iso

        core = self._api("CoreV1Api")
        try:
            pods = await self._list(f"listing pods of Job {job}", core.list_namespaced_pod, self.cfg.namespace,
                                    label_selector=f"{JOB_NAME_LABEL}={job}")
            at = iso(time.time(), "seconds")
            for pod in pods:
                meta, status = pod.get("metadata") or {}, pod.get("status") or {}
                if (meta.get("labels") or {}).get(JOB_NAME_LABEL) != job or status.get("phase") in ("Succeeded", "Failed"):
                    continue
                body = {"status": {"conditions": [{"type": "DisruptionTarget", "status": "True", "lastTransitionTime": at,
                                                   "reason": PREEMPTION_REASON, "message": why}]}}
                await self._run(f"marking pod {meta.get('name')} for preemption",
                                lambda n=meta.get("name"), b=body: _json(core.patch_namespaced_pod_status(
                                    n, self.cfg.namespace, b, **self._opts())), missing_ok=True)
        except SentinelsError as e:
            log.warning("Job %s: its pods were not told why they stop (%s); deleting it anyway", job, e.message)

    async def active(self) -> dict[str, str]:
        """Job id -> Job name for every sentinels Job that has not finished and is not being deleted."""
        batch = self._api("BatchV1Api")
        jobs = await self._list("listing Jobs", batch.list_namespaced_job, self.cfg.namespace,
                                label_selector=f"{km.MANAGED_BY_LABEL}={km.MANAGED_BY}")
        out = {}
        for job in jobs:
            meta = job.get("metadata") or {}
            job_id = (meta.get("labels") or {}).get(km.JOB_ID_LABEL)
            if (_labelled(job, km.MANAGED_BY_LABEL, km.MANAGED_BY) and is_job_id(job_id)
                    and not _labelled(job, "sentinels.io/component", "build")  # a build runs no job
                    and not meta.get("deletionTimestamp") and not job_finished(job)):
                out[job_id] = str(meta.get("name"))
        return out

    async def jobs(self, job_ids: list[str]) -> dict[str, dict]:
        """The newest sentinels Job of each of these jobs, as the API server shows it now."""
        wanted = set(job_ids)
        if not wanted:
            return {}
        batch = self._api("BatchV1Api")
        found = await self._list("listing Jobs", batch.list_namespaced_job, self.cfg.namespace,
                                 label_selector=f"{km.MANAGED_BY_LABEL}={km.MANAGED_BY}")
        out: dict[str, dict] = {}
        for job in found:
            meta = job.get("metadata") or {}
            job_id = (meta.get("labels") or {}).get(km.JOB_ID_LABEL)
            if job_id in wanted and _labelled(job, km.MANAGED_BY_LABEL, km.MANAGED_BY):
                newer = (meta.get("creationTimestamp") or "") >= \
                    ((out.get(job_id) or {}).get("metadata") or {}).get("creationTimestamp", "")
                if job_id not in out or newer:
                    out[job_id] = {"apiVersion": "batch/v1", "kind": "Job", **job}
        return out

    async def _newest_pod(self, record: dict) -> Optional[dict]:
        name = record.get("k8s_job") or km.job_name(record["id"], int(record.get("attempts") or 1))
        core = self._api("CoreV1Api")
        pods = await self._list(f"listing pods of {name}", core.list_namespaced_pod, self.cfg.namespace,
                                label_selector=f"{km.JOB_NAME_LABEL}={name}")
        pods = [p for p in pods if _labelled(p, km.JOB_NAME_LABEL, name)]
        return max(pods, key=_pod_age) if pods else None

    async def _pod_of_attempt(self, record: dict, attempt: int) -> Optional[dict]:
        """The pod of the job's attempt `attempt` (1-based): its pods over every Job it had
        (one per requeue), oldest first; None when that pod is gone."""
        core = self._api("CoreV1Api")
        pods = await self._list(f"listing pods of job {record['id']}", core.list_namespaced_pod, self.cfg.namespace,
                                label_selector=f"{km.JOB_ID_LABEL}={record['id']}")
        pods = sorted((p for p in pods if is_job_name(record["id"], ((p.get("metadata") or {}).get("labels") or {})
                                                      .get(km.JOB_NAME_LABEL))), key=_pod_age)
        return pods[attempt - 1] if attempt <= len(pods) else None

    async def last_end(self, record: dict) -> Optional[dict]:
        """How the job's newest pod failed ({"reason", "exit_code"}), or None.

        A Job's own verdict (BackoffLimitExceeded) does not say why its last pod failed, and
        the pod's event may come after the Job's: this reads it from the pod itself.
        """
        from ..domain import events, observe

        pod = await self._newest_pod(record)
        seen = observe.observe(events.APISERVER_UPDATE, pod) if pod else None
        if seen is None or seen.what != observe.FAILED:
            return None
        return {"reason": seen.reason, "exit_code": seen.exit_code}

    async def logs(self, record: dict, tail: Optional[int] = None) -> list[str]:
        """The output of the job's newest pod (empty when it has none or has not started)."""
        core = self._api("CoreV1Api")
        attempt = record.get("log_attempt")  # `logs --attempt N`: that run's pod, if it is still there
        newest = await (self._pod_of_attempt(record, int(attempt)) if attempt else self._newest_pod(record))
        if newest is None:
            return []
        pod_name = newest["metadata"]["name"]
        kwargs = {"container": km.CONTAINER, **self._opts()}
        if tail:
            kwargs["tail_lines"] = int(tail)
        resp = await self._run(f"reading the log of {pod_name}",
                               lambda: core.read_namespaced_pod_log(pod_name, self.cfg.namespace, **kwargs).data,
                               missing_ok=True, bad_request_ok=True)  # 400: the container has not started
        if not resp:
            return []
        return resp.decode("utf-8", errors="replace").splitlines()


__all__ = ["KubernetesCluster", "node_from_object", "parse_node", "pod_requests", "requests_by_node",
           "job_finished", "api_client"]
