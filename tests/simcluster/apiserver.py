"""A Kubernetes API server for the simulated cluster, on kmock's HTTP server.

kmock parses requests and serves discovery; its `KubernetesEmulator` keeps every version
of every object and scans all of them (and every past request) on each call, which is
fine for a handful of objects and far too slow for thousands. This server keeps one
indexed store instead and adds what clients of a real API server rely on:

* `metadata.uid`, `resourceVersion` (one counter for the whole store), `creationTimestamp`,
  `generateName`; 409 on creating an existing object, 404 on a missing one;
* label selectors (`=`, `!=`, `in`, `notin`, exists, `!key`) and field selectors
  (`metadata.name`, `spec.nodeName`, `status.phase`, ... with `=`/`!=`) on list and watch;
* `limit` / `continue` paging; watch from a `resourceVersion` (410 Gone when too old),
  with the DELETED a real server sends when an object stops matching a field selector;
* merge patches, deletion with finalizers, and the garbage collector (dependents named
  in `ownerReferences` go with their owner);
* `pods/<name>/log` (what the simulated kubelet recorded);
* faults for tests: answer a status or stall for a while (`fail`);
* a count of requests per client (`calls`), so benchmarks can say how many API calls
  sentinels made per job.

Controllers of the simulated control plane live in the same process and use the Python
methods (`create`, `patch`, `remove`, `get`, `items`) plus `subscribe()` for changes;
sentinels and the ApiServerSource stand-in use HTTP like against a real cluster.
"""

import asyncio
import base64
import bisect
import collections
import copy
import datetime
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

import aiohttp.web
import kmock
from kmock._internal import enums

HISTORY = 50_000
ATTEMPT = "sentinels.io/attempt"  # watch events kept for resuming from a resourceVersion
CORE = {"pods", "nodes", "configmaps", "events", "namespaces", "secrets"}


VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0-simcluster", "platform": "linux/amd64"}  # GET /version


def rkey(group: str, version: str, plural: str) -> str:
    """'batch/v1/jobs', 'v1/pods': how resources are named here."""
    return f"{group}/{version}/{plural}" if group else f"{version}/{plural}"


PODS, NODES, JOBS, CONFIGMAPS = "v1/pods", "v1/nodes", "batch/v1/jobs", "v1/configmaps"
KINDS = {PODS: "Pod", NODES: "Node", JOBS: "Job", CONFIGMAPS: "ConfigMap"}
CLUSTER_SCOPED = {NODES}
GC_RESOURCES = (PODS, CONFIGMAPS)  # what the garbage collector deletes with its owner


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- selectors ---------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def label_matcher(selector: Optional[str]) -> Callable[[dict], bool]:
    """A predicate over a labels mapping; ValueError on a malformed selector."""
    if not selector:
        return lambda labels: True
    tests = []
    for term in _split(selector):
        m = _SET_RE.match(term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            tests.append((lambda k, vs: lambda l: l.get(k) in vs)(key, values) if op == "in"
                         else (lambda k, vs: lambda l: l.get(k) not in vs)(key, values))
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            tests.append((lambda k, v: lambda l: l.get(k) != v)(key, value))
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            tests.append((lambda k, v: lambda l: l.get(k) == v)(key, value))
        elif term.startswith("!"):
            tests.append((lambda k: lambda l: k not in l)(term[1:].strip()))
        elif re.match(r"^[A-Za-z0-9./_-]+$", term):
            tests.append((lambda k: lambda l: k in l)(term))
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    return lambda labels: all(t(labels) for t in tests)


def _field(obj: dict, path: str):
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def field_matcher(selector: Optional[str]) -> Callable[[dict], bool]:
    if not selector:
        return lambda obj: True
    tests = []
    for term in _split(selector):
        if "!=" in term:
            path, value = (s.strip() for s in term.split("!=", 1))
            tests.append((lambda p, v: lambda o: str(_field(o, p) or "") != v)(path, value))
        elif "=" in term:
            path, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            tests.append((lambda p, v: lambda o: str(_field(o, p) or "") == v)(path, value))
        else:
            raise ValueError(f"invalid field selector: {term!r}")
    return lambda obj: all(t(obj) for t in tests)


@dataclass
class Selection:
    namespace: Optional[str]
    labels: Callable[[dict], bool]
    fields: Callable[[dict], bool]

    def __call__(self, obj: Optional[dict]) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return self.labels(meta.get("labels") or {}) and self.fields(obj)


def merge(target: dict, patch: dict) -> dict:
    """JSON merge patch (RFC 7386): None deletes, dicts merge, the rest replaces.

    Returns a new object: what the patch changes is copied, the rest is shared with
    `target` (stored objects are never changed in place, so versions may share parts;
    copying whole pods on every status update was a tenth of the simulated cluster's CPU)."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = merge(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Gone(Exception):
    pass


@dataclass
class Fault:
    status: int  # HTTP status to answer; 0 = stall (no answer until `until`)
    until: float  # time.monotonic() deadline
    match: Callable  # kmock Request -> bool
    after: bool = False  # carry the request out, then answer `status` (a lost response)
    times: Optional[int] = None  # only this many requests


class ApiServer(kmock.KubernetesScaffold):
    """Enter it (`async with server, kmock.Server(server)`) so errors render as Status objects."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.store: dict[str, dict[tuple, dict]] = collections.defaultdict(dict)
        self.rv = 0
        self.history: collections.deque = collections.deque(maxlen=HISTORY)
        self.watchers: list[tuple[str, Selection, asyncio.Queue]] = []
        self.listeners: list[Callable] = []  # fn(resource, type, obj, old) for in-process controllers
        self.logs: dict[tuple, list[str]] = {}  # (namespace, pod) -> lines
        self.faults: list[Fault] = []
        self.calls: collections.Counter = collections.Counter()  # (client, verb) -> requests
        self.watch_events = 0  # events written to watch streams
        self.created_jobs: collections.Counter = collections.Counter()  # (Job name, attempt) -> creates over HTTP
        self.conflicts = 0  # creates answered 409
        self.dependents: dict[str, set] = collections.defaultdict(set)  # owner uid -> {(resource, ns, name)}
        for resource in (PODS, NODES, JOBS, CONFIGMAPS):
            self.store[resource]  # noqa: B018 - declare the resource (lists answer [] not 404)

    # --- in-process API (controllers) ---------------------------------------------
    def _bump(self, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def _emit(self, resource: str, kind: str, obj: dict, old: Optional[dict]) -> None:
        if resource in GC_RESOURCES:
            self._index_owners(resource, obj, old, kind == "DELETED")
        self.history.append((self.rv, resource, kind, obj, old))
        for res, selection, queue in self.watchers:
            if res != resource:
                continue
            now_in, was_in = selection(obj), selection(old)
            if kind == "DELETED":
                if was_in or now_in:
                    queue.put_nowait((self.rv, "DELETED", obj))
            elif now_in:
                queue.put_nowait((self.rv, "MODIFIED" if was_in and kind != "ADDED" else "ADDED", obj))
            elif was_in:  # no longer matches a field/label selector: gone for this watcher
                queue.put_nowait((self.rv, "DELETED", obj))
        for listener in list(self.listeners):
            listener(resource, kind, obj, old)

    async def __aexit__(self, *exc) -> None:
        self.end_watches()  # open watch streams would hold the server's shutdown
        await asyncio.sleep(0)
        await super().__aexit__(*exc)

    def end_watches(self) -> None:
        """End every open watch (as an API server restart or a load balancer would)."""
        for _, _, queue in self.watchers:
            queue.put_nowait(None)

    def subscribe(self, listener: Callable) -> None:
        self.listeners.append(listener)

    def get(self, resource: str, namespace: Optional[str], name: str) -> Optional[dict]:
        return self.store[resource].get((namespace if resource not in CLUSTER_SCOPED else None, name))

    def items(self, resource: str) -> list[dict]:
        return list(self.store[resource].values())

    def create(self, resource: str, obj: dict, namespace: Optional[str] = None) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if resource in CLUSTER_SCOPED:
            meta.pop("namespace", None)
            namespace = None
        else:
            namespace = namespace or meta.get("namespace") or "default"
            meta["namespace"] = namespace
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise kmock.KubernetesError(status=422, reason="Invalid", message="metadata.name: Required value")
        if (namespace, name) in self.store[resource]:
            plural = resource.rsplit("/", 1)[-1]
            raise kmock.KubernetesError(status=409, reason="AlreadyExists",
                                        message=f'{plural} "{name}" already exists')
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_iso(), generation=1)
        kind = KINDS.get(resource)
        if kind:
            obj.setdefault("kind", kind)
        self._bump(obj)
        self.store[resource][(namespace, name)] = obj
        self._emit(resource, "ADDED", obj, None)
        return obj

    def patch(self, resource: str, namespace: Optional[str], name: str, patch: dict) -> dict:
        current = self.get(resource, namespace, name)
        if current is None:
            raise kmock.KubernetesObjectNotFoundError()
        old = current
        new = merge(current, patch)
        new["metadata"] = dict(new["metadata"], uid=old["metadata"]["uid"])  # its own: _bump writes into it
        self._bump(new)
        self.store[resource][(old["metadata"].get("namespace"), name)] = new
        self._emit(resource, "MODIFIED", new, old)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._drop(resource, new)
        return new

    def delete(self, resource: str, namespace: Optional[str], name: str) -> dict:
        """Delete as the API does: finalizers first hold the object with a deletionTimestamp."""
        current = self.get(resource, namespace, name)
        if current is None:
            raise kmock.KubernetesObjectNotFoundError()
        meta = current["metadata"]
        if meta.get("deletionTimestamp"):
            return current
        if meta.get("finalizers"):
            return self.patch(resource, namespace, name, {"metadata": {"deletionTimestamp": now_iso()}})
        return self._drop(resource, current)

    def _drop(self, resource: str, obj: dict) -> dict:
        meta = obj["metadata"]
        self.store[resource].pop((meta.get("namespace"), meta["name"]), None)
        gone = dict(obj, metadata=dict(obj["metadata"]))  # the stored versions stay as they were
        self._bump(gone)
        self._emit(resource, "DELETED", gone, obj)
        self.collect_garbage(meta["uid"])
        return gone

    def _index_owners(self, resource: str, obj: dict, old: Optional[dict], gone: bool) -> None:
        """Keep `dependents` (owner uid -> objects naming it) as the real garbage collector's graph does."""
        meta = obj["metadata"]
        key = (resource, meta.get("namespace"), meta["name"])
        before = {r.get("uid") for r in ((old or {}).get("metadata") or {}).get("ownerReferences") or ()}
        now = set() if gone else {r.get("uid") for r in meta.get("ownerReferences") or ()}
        for uid in before - now:
            self.dependents[uid].discard(key)
            if not self.dependents[uid]:
                del self.dependents[uid]
        for uid in now - before:
            self.dependents[uid].add(key)

    def collect_garbage(self, owner_uid: str) -> None:
        """The garbage collector: delete objects owned by a deleted owner (background propagation)."""
        for resource, namespace, name in sorted(self.dependents.pop(owner_uid, ())):
            if self.get(resource, namespace, name) is not None:
                self.delete(resource, namespace, name)

    # --- faults (tests) -------------------------------------------------------------
    def fail(self, seconds: float, status: int = 500, match: Callable = lambda request: True, *,
             after: bool = False, times: Optional[int] = None) -> None:
        """For `seconds` (and at most `times` requests), answer matching requests with `status`.

        status 0 never answers until the period ends (the client times out first); `after`
        carries the request out and then answers `status`, like a response lost on the way.
        """
        self.faults.append(Fault(status, time.monotonic() + seconds, match, after, times))

    def _fault_for(self, request) -> Optional[Fault]:
        now = time.monotonic()
        self.faults = [f for f in self.faults if f.until > now and (f.times is None or f.times > 0)]
        for f in self.faults:
            if f.match(request):
                if f.times is not None:
                    f.times -= 1
                return f
        return None

    @staticmethod
    async def _answer_fault(f: Fault) -> None:
        if f.status == 0:
            await asyncio.sleep(max(0.0, f.until - time.monotonic()))
            raise kmock.KubernetesError(status=504, reason="Timeout", message="the server stalled")
        raise kmock.KubernetesError(status=f.status, reason="InternalError", message=f"injected fault: {f.status}")

    # --- HTTP -----------------------------------------------------------------------
    @staticmethod
    def client_of(request) -> str:
        agent = request.headers.get("User-Agent", "")
        return "python-kubernetes" if agent.startswith("OpenAPI-Generator") else agent.split("/")[0] or "unknown"

    async def _handle(self, request) -> aiohttp.web.StreamResponse:
        del self._requests[:-200]  # kmock keeps every request; the DSL scans them all
        action = request.action
        if request.resource is None and str(request.url).split("?")[0].rstrip("/").endswith("/version"):
            return self._json(VERSION)  # what `sentinels up` asks first: is this a Kubernetes API server?
        if request.resource is None or action is None or request.resource.plural is None:
            return await super()._handle(request)
        self.calls[(self.client_of(request), str(action.value))] += 1
        if self._errors and len(self._errors[-1]) > 100:
            del self._errors[-1][:-10]
        fault = self._fault_for(request)
        if fault is not None and not fault.after:
            await self._answer_fault(fault)
        response = await self._dispatch(request)
        if fault is not None:
            await self._answer_fault(fault)
        return response

    async def _dispatch(self, request) -> aiohttp.web.StreamResponse:
        action = request.action
        res = request.resource
        resource = rkey(res.group, res.version, res.plural)
        ns = None if resource in CLUSTER_SCOPED else request.namespace
        if action == enums.action.WATCH:
            return await self._watch(request, resource, ns)
        if action == enums.action.LIST:
            return self._json(self._list(request, resource, ns))
        if action == enums.action.CREATE:
            if not isinstance(request.data, dict):
                raise kmock.KubernetesError(status=400, reason="BadRequest", message="the body is not a JSON object")
            try:
                created = self.create(resource, request.data, ns)
            except kmock.KubernetesError as e:
                self.conflicts += e.status == 409
                raise
            if resource == JOBS:
                meta = created["metadata"]
                self.created_jobs[(meta["name"], (meta.get("annotations") or {}).get(ATTEMPT))] += 1
            return self._json(created, 201)
        if action == enums.action.FETCH:
            if request.subresource == "log" and resource == PODS:
                return self._log(request, ns)
            obj = self.get(resource, ns, request.name)
            if obj is None:
                raise kmock.KubernetesError(status=404, reason="NotFound",
                                            message=f'{res.plural} "{request.name}" not found')
            return self._json(obj)
        if action == enums.action.UPDATE:
            if not isinstance(request.data, dict):
                raise kmock.KubernetesError(status=400, reason="BadRequest", message="only merge patches are served")
            return self._json(self.patch(resource, ns, request.name, request.data))
        if action == enums.action.DELETE:
            try:
                return self._json(self.delete(resource, ns, request.name))
            except kmock.KubernetesObjectNotFoundError:
                raise kmock.KubernetesError(status=404, reason="NotFound",
                                            message=f'{res.plural} "{request.name}" not found') from None
        return await super()._handle(request)

    @staticmethod
    def _json(body, status: int = 200) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json")

    def _selection(self, request, ns) -> Selection:
        try:
            return Selection(ns, label_matcher(request.params.get("labelSelector")),
                             field_matcher(request.params.get("fieldSelector")))
        except ValueError as e:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=str(e)) from None

    def _list(self, request, resource: str, ns) -> dict:
        selection = self._selection(request, ns)
        keys = sorted(self.store[resource], key=lambda k: (k[0] or "", k[1]))
        start = 0
        token = request.params.get("continue")
        if token:
            try:
                last = tuple(json.loads(base64.urlsafe_b64decode(token)))
            except ValueError:
                raise kmock.KubernetesError(status=400, reason="BadRequest", message="invalid continue token") from None
            start = bisect.bisect_right([(k[0] or "", k[1]) for k in keys], (last[0] or "", last[1]))
        limit = int(request.params.get("limit") or 0)
        items, more = [], None
        for i in range(start, len(keys)):
            obj = self.store[resource][keys[i]]
            if not selection(obj):
                continue
            if limit and len(items) >= limit:
                prev = items[-1]["metadata"]
                more = base64.urlsafe_b64encode(json.dumps([prev.get("namespace"), prev["name"]]).encode()).decode()
                break
            items.append(obj)
        kind = KINDS.get(resource, "Object")
        meta = {"resourceVersion": str(self.rv)}
        if more:
            meta["continue"] = more
        return {"apiVersion": resource.rsplit("/", 1)[0], "kind": f"{kind}List", "metadata": meta, "items": items}

    def _log(self, request, ns) -> aiohttp.web.Response:
        pod = self.get(PODS, ns, request.name)
        if pod is None:
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f'pods "{request.name}" not found')
        lines = self.logs.get((ns, request.name))
        if lines is None:
            raise kmock.KubernetesError(status=400, reason="BadRequest",
                                        message=f'container "main" in pod "{request.name}" is waiting to start')
        tail = request.params.get("tailLines")
        if tail and tail.isdigit():
            lines = lines[-int(tail):] if int(tail) else []
        return aiohttp.web.Response(body="".join(f"{line}\n" for line in lines).encode(), content_type="text/plain")

    async def _watch(self, request, resource: str, ns) -> aiohttp.web.StreamResponse:
        selection = self._selection(request, ns)
        since = request.params.get("resourceVersion")
        timeout = float(request.params.get("timeoutSeconds") or 1800)
        queue: asyncio.Queue = asyncio.Queue()
        if since and since != "0":
            oldest = self.history[0][0] if self.history else self.rv + 1
            if int(since) < self.rv and int(since) + 1 < oldest:
                raise Gone()
            for rv, res, kind, obj, old in self.history:
                if rv > int(since) and res == resource and (selection(obj) or selection(old)):
                    kind = "DELETED" if kind == "DELETED" or not selection(obj) else \
                        ("MODIFIED" if selection(old) else "ADDED")
                    queue.put_nowait((rv, kind, obj))
        else:  # "get state and start at most recent": every current object as ADDED
            for obj in list(self.store[resource].values()):
                if selection(obj):
                    queue.put_nowait((self.rv, "ADDED", obj))
        watcher = (resource, selection, queue)
        self.watchers.append(watcher)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), min(left, 5.0))
                except asyncio.TimeoutError:
                    continue
                if item is None:
                    break
                chunk = [json.dumps({"type": item[1], "object": item[2]})]
                while not queue.empty() and len(chunk) < 500:
                    item = queue.get_nowait()
                    if item is None:
                        deadline = 0
                        break
                    chunk.append(json.dumps({"type": item[1], "object": item[2]}))
                self.watch_events += len(chunk)
                await response.write(("\n".join(chunk) + "\n").encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers.remove(watcher)
        try:
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return response

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, Gone):
            return self._json({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 410,
                               "reason": "Expired", "message": "too old resource version"}, 410)
        if isinstance(exc, kmock.KubernetesError):
            return self._json({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                               "code": exc.status, "reason": exc.reason, "message": exc.message}, exc.status)
        return await super()._render_error(exc)

    def api_calls(self, client: str = "python-kubernetes") -> int:
        return sum(n for (who, _), n in self.calls.items() if who == client)
