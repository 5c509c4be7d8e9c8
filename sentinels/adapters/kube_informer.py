"""Nodes and live pods kept up to date by list + watch (an informer), for the scheduler.

Listing every node and every live pod of the cluster on each scheduling pass costs the
API server a read that grows with the cluster. Here each is listed once, then watched
from that resourceVersion; every change updates the per-node sums in place, so a pass
reads nothing from the API however many pods the cluster runs. A broken watch resumes
from its last resourceVersion; 410 Gone (too old) lists again. `snapshot()` answers None
until both lists are done, or when a watch has been failing for `stale_after` seconds;
the caller then lists directly, as without a cache.

Each watch runs in a daemon thread with the official client (it blocks); the state is
shared under one lock.
"""

import dataclasses
import json
import logging
import threading
import time
from typing import Callable, Optional

from ..domain.placement import Node

log = logging.getLogger("sentinels.kubernetes")
WATCH_SECONDS = 300  # the server ends a watch after this; it is resumed at once


class Informer:
    def __init__(self, core, node_of: Callable, requests_of: Callable, live_selector: str,
                 request_timeout: float = 10.0, stale_after: float = 30.0):
        self.core = core  # a kubernetes CoreV1Api
        self.node_of = node_of  # raw Node -> placement.Node with nothing used (None if malformed)
        self.requests_of = requests_of  # raw Pod -> (cpu millis, memory bytes, gpus)
        self.live_selector = live_selector
        self.timeout = request_timeout
        self.stale_after = stale_after
        self.lock = threading.Lock()
        self.nodes: dict[str, Node] = {}
        self.pods: dict[tuple, tuple] = {}  # (namespace, name) -> (node, requests) of bound, live pods
        self.used: dict[str, list] = {}  # node -> [cpu, memory, gpu, pods]
        self.free: dict[str, Node] = {}  # node -> its free capacity as the last snapshot built it
        self.changed: set[str] = set()  # nodes whose free capacity must be built again
        self.synced = {"nodes": False, "pods": False}
        self.failing_since: dict[str, Optional[float]] = {"nodes": None, "pods": None}
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(kind,), name=f"informer-{kind}", daemon=True)
                        for kind in ("nodes", "pods")]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stopped.set()

    # --- what the scheduler reads ---------------------------------------------------
    def snapshot(self) -> Optional[list[Node]]:
        now = time.monotonic()
        with self.lock:
            if not all(self.synced.values()):
                return None
            if any(since is not None and now - since > self.stale_after for since in self.failing_since.values()):
                return None
            # only the nodes that changed since the last pass are built again (a pass used to
            # rebuild all 1,000 of a cluster, a seventh of the scheduler's CPU in a burst)
            for name in self.changed:
                base = self.nodes.get(name)
                if base is None:
                    self.free.pop(name, None)
                    continue
                cpu, mem, gpu, pods = self.used.get(name, (0, 0, 0, 0))
                self.free[name] = dataclasses.replace(
                    base, free_cpu_millis=max(0, base.cpu_millis - cpu), free_memory_bytes=max(0, base.memory_bytes - mem),
                    free_gpu=max(0, base.gpu - gpu),
                    free_pods=None if base.free_pods is None else max(0, base.free_pods - pods))
            self.changed.clear()
            return [self.free[name] for name in self.nodes]

    # --- keeping it up to date --------------------------------------------------------
    def _count(self, key: tuple, entry: Optional[tuple]) -> None:
        if entry is not None and self.pods.get(key) == entry:
            return  # a status update of a pod counted as it was (most of a pod's updates)
        old = self.pods.pop(key, None)
        if old is not None:
            self.changed.add(old[0])
            use = self.used.setdefault(old[0], [0, 0, 0, 0])
            for i, v in enumerate(old[1] + (1,)):
                use[i] -= v
        if entry is not None:
            self.changed.add(entry[0])
            self.pods[key] = entry
            use = self.used.setdefault(entry[0], [0, 0, 0, 0])
            for i, v in enumerate(entry[1] + (1,)):
                use[i] += v

    def _pod_entry(self, pod: dict) -> Optional[tuple]:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return None
        try:
            return node, tuple(self.requests_of(pod))
        except (ValueError, TypeError, AttributeError):
            return None

    def _apply(self, kind: str, change: str, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        if kind == "nodes":
            self.changed.add(str(meta.get("name")))
            parsed = self.node_of(obj) if change != "DELETED" else None
            if parsed is None:
                self.nodes.pop(str(meta.get("name")), None)
            else:
                self.nodes[parsed.name] = parsed
        else:
            key = (meta.get("namespace"), meta.get("name"))
            self._count(key, None if change == "DELETED" else self._pod_entry(obj))

    def _reset(self, kind: str, items: list) -> None:
        self.changed |= set(self.nodes) | set(self.free)  # everything is built again
        if kind == "nodes":
            self.nodes = {}
        else:
            self.pods, self.used = {}, {}
        for obj in items:
            self._apply(kind, "ADDED", obj)

    def _call(self, kind: str, **kw):
        opts = {"_preload_content": False, "_request_timeout": (self.timeout, WATCH_SECONDS + self.timeout)}
        if kind == "nodes":
            return self.core.list_node(**kw, **opts)
        return self.core.list_pod_for_all_namespaces(field_selector=self.live_selector, **kw, **opts)

    def _list(self, kind: str) -> str:
        items: list[dict] = []
        token, rv = None, ""
        while True:
            page = json.loads(self._call(kind, limit=500, _continue=token).data or b"{}")
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            rv = rv or (page.get("metadata") or {}).get("resourceVersion") or ""
            if not token:
                break
        with self.lock:
            self._reset(kind, items)
            self.synced[kind] = True
        return rv

    def _watch(self, kind: str, rv: str) -> str:
        """Follow one watch until the server ends it; return the last resourceVersion ("" = list again)."""
        from kubernetes.watch.watch import iter_resp_lines

        resp = self._call(kind, watch=True, resource_version=rv, allow_watch_bookmarks=True,
                          timeout_seconds=WATCH_SECONDS)
        try:
            with self.lock:
                self.failing_since[kind] = None
            for line in iter_resp_lines(resp):
                if self.stopped.is_set():
                    break
                change = json.loads(line)
                obj = change.get("object") or {}
                if change.get("type") == "ERROR":
                    return "" if obj.get("code") == 410 else rv
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                if change.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    with self.lock:
                        self._apply(kind, change["type"], obj)
            return rv
        finally:
            resp.release_conn()

    def _run(self, kind: str) -> None:
        from kubernetes.client.exceptions import ApiException

        rv, pause = "", 0.5
        while not self.stopped.is_set():
            try:
                if not rv:
                    rv = self._list(kind)
                rv = self._watch(kind, rv)
                pause = 0.5
            except Exception as e:  # API away, 410 on the watch call, a broken stream: retry
                if isinstance(e, ApiException) and e.status == 410:
                    rv = ""
                with self.lock:
                    self.failing_since[kind] = self.failing_since[kind] or time.monotonic()
                log.info("informer %s: %s; retrying in %.1f s", kind, type(e).__name__, pause)
                self.stopped.wait(pause)
                pause = min(pause * 2, 30.0)
