"""The simulated control plane: kube-scheduler, kubelets and the Job controller (kwok-style).

No containers run. Each pod follows a *script* (`Script`): how long it is Pending, how
long it runs, how it ends (exit code, OOMKilled, image pull failure, eviction). A job
chooses its script with the container variable `SIMCLUSTER_SCRIPT` (a JSON object, or a
list of them: one per successive pod of the same sentinels job, the last one repeating),
else the cluster's default script. Everything is written through the API server's store,
so every change reaches watchers (the ApiServerSource stand-in) like on a real cluster.

What each part does, as its real counterpart would:
* scheduler: binds pending pods to Ready, schedulable nodes with room for the pod's
  requests (cpu, memory, nvidia.com/gpu, pod count), matching `nodeSelector` and
  tolerating the node's NoSchedule/NoExecute taints; otherwise PodScheduled=False
  (Unschedulable) with the usual "0/N nodes are available" message;
* kubelet: Pending -> Running -> Succeeded/Failed, container states and conditions,
  the container's log lines (served at pods/<name>/log), the files it writes to a
  writable PersistentVolumeClaim mount (`claims`: claim name -> a host directory standing
  for the volume, subPath honoured), a pull refused as unauthorized when the image's registry
  is private (`registries`: host -> the pull Secret it needs) and the pod lacks that
  Secret, eviction with a
  DisruptionTarget condition; it terminates pods that get a deletionTimestamp;
* Job controller: one pod at a time (completions 1, parallelism 1), a new pod after a
  failure until `backoffLimit`, pods failed with DisruptionTarget ignored (the
  podFailurePolicy sentinels writes), `activeDeadlineSeconds`, status counters and the
  FailureTarget/Failed, SuccessCriteriaMet/Complete conditions, the job-tracking
  finalizer, and the TTL-after-finished controller;
* node lifecycle: add, delete (PodGC fails and deletes its pods with DisruptionTarget
  DeletionByPodGC), cordon/uncordon, drain (cordon + evict), NotReady.
"""

import asyncio
import heapq
import itertools
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

from sentinels.adapters.kubernetes import _amounts, pod_requests
from sentinels.domain.errors import ConfigError
from sentinels.domain.registries import registry_host

from .apiserver import JOBS, NODES, PODS, ApiServer, now_iso

SCRIPT_ENV = "SIMCLUSTER_SCRIPT"
JOB_ID_LABEL = "sentinels.io/job-id"
TRACKING = "batch.kubernetes.io/job-tracking"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"


@dataclass(frozen=True)
class Script:
    """What one pod does. Times are seconds of the simulation's wall clock."""

    duration: float = 0.2  # Running for this long
    exit_code: int = 0
    oom: bool = False  # ends OOMKilled (exit 137)
    pull_failure: bool = False  # ErrImagePull, then ImagePullBackOff; never starts
    evict_after: Optional[float] = None  # evicted (Eviction API) this long after it started
    start_delay: float = 0.0  # Pending (ContainerCreating) after binding
    logs: tuple = ()  # lines the container prints
    outputs: Optional[dict] = None  # {relative path: text} the container writes under its outputs mount

    @classmethod
    def parse(cls, raw) -> "Script":
        if not isinstance(raw, dict):
            raise ConfigError(f"{SCRIPT_ENV}: expected a JSON object, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{SCRIPT_ENV}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**{k: tuple(v) if k == "logs" else v for k, v in raw.items()})

    @classmethod
    def for_pod(cls, pod: dict, index: int, default: "Script") -> "Script":
        """The script of the `index`-th pod (0-based) of a job, from the container's environment."""
        for container in (pod.get("spec") or {}).get("containers") or []:
            for env in container.get("env") or []:
                if env.get("name") == SCRIPT_ENV:
                    raw = json.loads(env.get("value") or "{}")
                    steps = raw if isinstance(raw, list) else [raw]
                    return cls.parse(steps[min(index, len(steps) - 1)]) if steps else default
        return default


@dataclass(frozen=True)
class NodeShape:
    """One simulated node (the `nodes:` entries of a simulated cluster's configuration)."""

    name: str
    cpu: str = "8"
    memory: str = "32Gi"
    gpu: int = 0
    pods: int = 110
    labels: dict = field(default_factory=dict)
    taints: tuple = ()  # ({"key", "value", "effect"}, ...)

    def to_object(self) -> dict:
        alloc = {"cpu": str(self.cpu), "memory": str(self.memory), "pods": str(self.pods),
                 "ephemeral-storage": "100Gi"}
        if self.gpu:
            alloc["nvidia.com/gpu"] = str(self.gpu)
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "type": "kwok", **self.labels}
        spec = {"taints": [dict(t) for t in self.taints]} if self.taints else {}
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": labels},
                "spec": spec,
                "status": {"capacity": dict(alloc), "allocatable": dict(alloc), "phase": "Running",
                           "conditions": [_cond("Ready", True, "KubeletReady", "kubelet is posting ready status")],
                           "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                                        "kubeletVersion": "v1.34.0-sim", "containerRuntimeVersion": "sim://0"},
                           "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}


def nodes_from_config(raw) -> list[NodeShape]:
    """`[{count, name, cpu, memory, gpu, pods, labels, taints}]` -> shapes; ConfigError naming the entry."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError("nodes: expected a non-empty list of node shapes")
    out, keys = [], {"count", "name", "cpu", "memory", "gpu", "pods", "labels", "taints"}
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or set(entry) - keys:
            raise ConfigError(f"nodes[{i}]: expected a mapping with keys among {', '.join(sorted(keys))}")
        count = entry.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"nodes[{i}].count: expected a whole number >= 1")
        base = entry.get("name", f"node{i}")
        for n in range(count):
            shape = NodeShape(name=base if count == 1 else f"{base}-{n}", cpu=str(entry.get("cpu", "8")),
                              memory=str(entry.get("memory", "32Gi")), gpu=int(entry.get("gpu", 0)),
                              pods=int(entry.get("pods", 110)), labels=dict(entry.get("labels") or {}),
                              taints=tuple(entry.get("taints") or ()))
            try:
                _amounts(shape.to_object()["status"]["allocatable"])
            except ValueError as e:
                raise ConfigError(f"nodes[{i}]: {e}") from None
            out.append(shape)
    return out


def _cond(kind: str, status: bool, reason: Optional[str] = None, message: Optional[str] = None) -> dict:
    c = {"type": kind, "status": "True" if status else "False", "lastTransitionTime": now_iso()}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def _meta(obj: dict) -> dict:
    return obj["metadata"]


def _key(obj: dict) -> tuple:
    return (_meta(obj).get("namespace"), _meta(obj)["name"])


def _terminal(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _has(obj: dict, kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in (obj.get("status") or {}).get("conditions") or [])


def _tolerates(pod: dict, taint: dict) -> bool:
    if taint.get("effect") not in ("NoSchedule", "NoExecute"):
        return True
    for t in (pod.get("spec") or {}).get("tolerations") or []:
        if t.get("effect") and t["effect"] != taint["effect"]:
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t["key"] == taint["key"]):
            return True
        if t.get("key") == taint["key"] and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _ignored(job: dict, pod: dict) -> bool:
    """A failed pod the Job's podFailurePolicy says not to count (action Ignore on a pod condition)."""
    for rule in ((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or ():
        if rule.get("action") == "Ignore" and any(_has(pod, c.get("type")) for c in rule.get("onPodConditions") or ()):
            return True
    return False


class SimCluster:
    """The control plane over an `ApiServer`; `await run()` drives it (or `start()` a task)."""

    def __init__(self, api: ApiServer, default: Script = Script(), tick: float = 0.02,
                 claims: Optional[dict] = None, registries: Optional[dict] = None):
        self.api, self.default, self.tick = api, default, tick
        self.registries = dict(registries or {})  # private registry host -> the pull Secret it needs
        self.claims: dict[str, Path] = {k: Path(v) for k, v in (claims or {}).items()}  # PVC name -> its storage
        self.timers: list = []
        self._seq = itertools.count()
        self.dirty_jobs: set = set()
        self.schedule_dirty = True
        self.used: dict[str, list] = {}  # node -> [cpu, mem, gpu, pods] of bound, live pods
        self.counted: dict[tuple, tuple] = {}  # pod key -> (node, requests) counted in `used`
        self.pods_of_job: dict[str, int] = {}  # sentinels job id (or Job name) -> pods created so far
        self.pods_by_owner: dict[str, set] = {}  # Job uid -> pod keys
        self.started_pods = 0
        self.pending: set = set()  # keys of pods waiting for a node (what the scheduler looks at)
        self._capacity: dict[str, tuple] = {}  # node name -> (resourceVersion, allocatable amounts + pods)
        self.task: Optional[asyncio.Task] = None
        self._rotate = 0
        self._starts: dict = {}
        self.created: dict = {}  # pod uid -> creation order  # Job uid -> when the controller first saw it (activeDeadlineSeconds)
        api.subscribe(self._changed)

    # --- bookkeeping from every change ------------------------------------------------
    def _changed(self, resource: str, kind: str, obj: dict, old: Optional[dict]) -> None:
        if resource == JOBS:
            self.dirty_jobs.add(_key(obj))
        elif resource == NODES:
            self.schedule_dirty = True
        elif resource == PODS:
            key = _key(obj)
            if kind == "ADDED":
                self.created[_meta(obj)["uid"]] = len(self.created)
            for ref in _meta(obj).get("ownerReferences") or ():
                if ref.get("kind") == "Job":
                    owned = self.pods_by_owner.setdefault(ref["uid"], set())
                    if kind == "DELETED":
                        owned.discard(key)
                    else:
                        owned.add(key)
                    self.dirty_jobs.add((_meta(obj).get("namespace"), ref["name"]))
            node = (obj.get("spec") or {}).get("nodeName")
            live = kind != "DELETED" and node and not _terminal(obj)
            if key in self.counted and not live:
                was_node, req = self.counted.pop(key)
                use = self.used.get(was_node)
                if use:
                    for i, v in enumerate(req + (1,)):
                        use[i] -= v
                self.schedule_dirty = True
            elif live and key not in self.counted:
                req = pod_requests(obj)
                self.counted[key] = (node, req)
                use = self.used.setdefault(node, [0, 0, 0, 0])
                for i, v in enumerate(req + (1,)):
                    use[i] += v
            if kind != "DELETED" and not node and not _terminal(obj) and not _meta(obj).get("deletionTimestamp"):
                if key not in self.pending:
                    self.pending.add(key)
                    self.schedule_dirty = True
            else:
                self.pending.discard(key)
            if kind != "DELETED" and _meta(obj).get("deletionTimestamp") and not (old or {}).get("metadata", {}).get(
                    "deletionTimestamp"):
                self.at(0, lambda k=key: self._terminate(k))

    def at(self, delay: float, fn) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self._seq), fn))

    # --- the loop ------------------------------------------------------------------------
    def start(self) -> asyncio.Task:
        self.task = asyncio.get_running_loop().create_task(self.run())
        return self.task

    async def run(self) -> None:
        while True:
            try:
                self.step()
            except Exception:  # a simulator bug must be loud but must not stop the cluster
                import logging
                logging.getLogger("simcluster").exception("control plane step failed")
            await asyncio.sleep(self.tick)

    def step(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, fn = heapq.heappop(self.timers)
            fn()
        while self.dirty_jobs:
            key = self.dirty_jobs.pop()
            self._sync_job(key)
        if self.schedule_dirty:
            self.schedule_dirty = False
            self._schedule()

    # --- nodes ---------------------------------------------------------------------------
    def add_node(self, shape: NodeShape) -> dict:
        return self.api.create(NODES, shape.to_object())

    def cordon(self, name: str, on: bool = True) -> None:
        node = self.api.get(NODES, None, name)
        taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("key") != UNSCHEDULABLE_TAINT]
        if on:
            taints.append({"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule", "timeAdded": now_iso()})
        self.api.patch(NODES, None, name, {"spec": {"unschedulable": True if on else None, "taints": taints or None}})

    def set_ready(self, name: str, ready: bool) -> None:
        cond = _cond("Ready", ready, "KubeletReady" if ready else "NodeStatusUnknown",
                     "kubelet is posting ready status" if ready else "Kubelet stopped posting node status.")
        self.api.patch(NODES, None, name, {"status": {"conditions": [cond]}})

    def pods_on(self, name: str) -> list[dict]:
        return [p for p in self.api.items(PODS) if (p.get("spec") or {}).get("nodeName") == name and not _terminal(p)]

    def pods_on_job(self, job_id: str) -> list[dict]:
        """The pods of a sentinels job that still exist, newest first."""
        pods = [p for p in self.api.items(PODS) if (_meta(p).get("labels") or {}).get(JOB_ID_LABEL) == job_id]
        return sorted(pods, key=lambda p: self.created.get(_meta(p)["uid"], 0), reverse=True)

    def drain(self, name: str) -> None:
        """`kubectl drain`: cordon, then evict every pod through the Eviction API."""
        self.cordon(name)
        for pod in self.pods_on(name):
            self.evict(pod)

    def delete_node(self, name: str) -> None:
        """The Node object goes; PodGC fails its pods with DisruptionTarget and deletes them."""
        pods = self.pods_on(name)
        self.api.delete(NODES, None, name)
        self.used.pop(name, None)
        for pod in pods:
            self._disrupt(pod, "DeletionByPodGC", "PodGC: node no longer exists", delete=True)

    # --- kubelet -----------------------------------------------------------------------
    def evict(self, pod: dict) -> None:
        self._disrupt(pod, "EvictionByEvictionAPI", "Eviction API: evicting", delete=True)

    def _disrupt(self, pod: dict, reason: str, message: str, delete: bool) -> None:
        ns, name = _key(pod)
        current = self.api.get(PODS, ns, name)
        if current is None or _terminal(current):
            return
        conds = [c for c in current["status"].get("conditions") or [] if c["type"] != "DisruptionTarget"]
        conds.append(_cond("DisruptionTarget", True, reason, message))
        self.api.patch(PODS, ns, name, {"status": {"conditions": conds}})
        if delete:
            self.api.delete(PODS, ns, name)  # finalizer: held with a deletionTimestamp; _terminate ends it

    def _terminate(self, key: tuple) -> None:
        """A pod with a deletionTimestamp: the kubelet kills its container (SIGTERM: exit 143)."""
        pod = self.api.get(PODS, *key)
        if pod is None:
            return
        patch: dict = {"metadata": {"finalizers": None}}
        if not _terminal(pod):
            started = ((pod["status"].get("containerStatuses") or [{}])[0].get("state") or {}).get("running")
            patch["status"] = self._ended(pod, 143, "Error", started is not None)
        self.api.patch(PODS, *key, patch)

    def _ended(self, pod: dict, code: int, reason: str, ran: bool) -> dict:
        phase = "Succeeded" if code == 0 else "Failed"
        state = {"terminated": {"exitCode": code, "reason": reason, "startedAt": pod["status"].get("startTime"),
                                "finishedAt": now_iso(), "containerID": f"sim://{_meta(pod)['uid']}"}}
        if not ran:
            state = {"terminated": {"exitCode": code, "reason": reason, "finishedAt": now_iso()}}
        conds = [c for c in pod["status"].get("conditions") or [] if c["type"] not in ("Ready", "ContainersReady")]
        conds += [_cond("Ready", False, "PodCompleted" if code == 0 else "PodFailed"),
                  _cond("ContainersReady", False, "PodCompleted" if code == 0 else "PodFailed")]
        return {"phase": phase, "conditions": conds,
                "containerStatuses": [self._cstatus(pod, state, ready=False)]}

    @staticmethod
    def _cstatus(pod: dict, state: dict, ready: bool) -> dict:
        image = pod["spec"]["containers"][0].get("image", "")
        return {"name": pod["spec"]["containers"][0]["name"], "image": image, "imageID": "", "ready": ready,
                "restartCount": 0, "started": "running" in state, "state": state, "lastState": {}}

    def _bound(self, key: tuple) -> None:
        pod = self.api.get(PODS, *key)
        if pod is None or _terminal(pod) or _meta(pod).get("deletionTimestamp"):
            return
        job_id = (_meta(pod).get("labels") or {}).get(JOB_ID_LABEL) or (_meta(pod).get("labels") or {}).get("job-name")
        index = self.pods_of_job.get(job_id, 0)
        self.pods_of_job[job_id] = index + 1
        try:
            script = Script.for_pod(pod, index, self.default)
        except (ValueError, ConfigError, TypeError) as e:  # a broken script fails the pod, loudly
            script = Script(exit_code=2, duration=0, logs=(f"simcluster: bad {SCRIPT_ENV}: {e}",))
        if script.pull_failure or self._unauthorized(pod):
            self.at(script.start_delay, lambda: self._pull_failed(key, "ErrImagePull", 0.5))
            return
        self.at(script.start_delay, lambda: self._run(key, script))

    def _pull_failed(self, key: tuple, reason: str, backoff: float) -> None:
        """Pulls keep failing: ErrImagePull, then ImagePullBackOff, retried with a doubling back-off
        (10 s to 5 min on a real kubelet; 0.5 s to 4 s here), each retry a status update."""
        pod = self.api.get(PODS, *key)
        if pod is None or _terminal(pod) or _meta(pod).get("deletionTimestamp"):
            return
        following = "ImagePullBackOff" if reason == "ErrImagePull" else "ErrImagePull"
        self.at(backoff, lambda: self._pull_failed(key, following, min(backoff * 2, 4.0)))
        image = pod["spec"]["containers"][0].get("image", "")
        message = (f'Back-off pulling image "{image}"' if reason == "ImagePullBackOff" else
                   f'rpc error: code = Unknown desc = failed to pull and unpack image "{image}": failed to resolve '
                   f'reference "{image}": failed to authorize: failed to fetch anonymous token: unexpected status: '
                   '401 Unauthorized' if self._unauthorized(pod) else
                   f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": not found')
        self.api.patch(PODS, *key, {"status": {"containerStatuses": [
            self._cstatus(pod, {"waiting": {"reason": reason, "message": message}}, ready=False)]}})

    def _run(self, key: tuple, script: Script) -> None:
        pod = self.api.get(PODS, *key)
        if pod is None or _terminal(pod) or _meta(pod).get("deletionTimestamp"):
            return
        self.started_pods += 1
        started = now_iso()
        self.api.logs[key] = list(script.logs)
        if script.outputs:
            self._write_outputs(pod, script.outputs)
        conds = [c for c in pod["status"].get("conditions") or [] if c["type"] not in ("Ready", "ContainersReady")]
        conds += [_cond("Ready", True), _cond("ContainersReady", True), _cond("PodReadyToStartContainers", True)]
        self.api.patch(PODS, *key, {"status": {
            "phase": "Running", "startTime": started, "conditions": conds, "podIP": "10.244.0.10",
            "containerStatuses": [self._cstatus(pod, {"running": {"startedAt": started}}, ready=True)]}})
        if script.evict_after is not None and script.evict_after < script.duration:
            self.at(script.evict_after, lambda: self._evict_key(key))
            return
        code, reason = (137, "OOMKilled") if script.oom else (script.exit_code, "Completed" if script.exit_code == 0 else "Error")
        self.at(script.duration, lambda: self._finish(key, code, reason))

    def _unauthorized(self, pod: dict) -> bool:
        """A private registry's image, and the pod does not name that registry's pull Secret."""
        host = registry_host(pod["spec"]["containers"][0].get("image", ""))
        return host in self.registries and {"name": self.registries[host]} not in \
            (pod["spec"].get("imagePullSecrets") or [])

    def _write_outputs(self, pod: dict, files: dict) -> None:
        """Write the script's files where the container's writable claim mounts land in storage."""
        claims = {v["name"]: (v.get("persistentVolumeClaim") or {}).get("claimName")
                  for v in pod["spec"].get("volumes") or []}
        for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
            claim = claims.get(mount["name"])
            if mount.get("readOnly") or claim not in self.claims:
                continue
            base = self.claims[claim] / mount.get("subPath", "")
            for rel, text in files.items():
                target = base / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)

    def _evict_key(self, key: tuple) -> None:
        pod = self.api.get(PODS, *key)
        if pod is not None:
            self.evict(pod)

    def _finish(self, key: tuple, code: int, reason: str) -> None:
        pod = self.api.get(PODS, *key)
        if pod is None or _terminal(pod) or _meta(pod).get("deletionTimestamp"):
            return
        self.api.patch(PODS, *key, {"status": self._ended(pod, code, reason, True)})

    # --- scheduler ----------------------------------------------------------------------
    def _schedule(self) -> None:
        pending = [p for p in (self.api.get(PODS, *k) for k in self.pending) if p is not None]
        if not pending:
            return
        pending.sort(key=lambda p: _meta(p)["creationTimestamp"])
        nodes = self.api.items(NODES)
        failed: list[tuple] = []
        for pod in pending:
            req = pod_requests(pod)
            sel = tuple(sorted(((pod.get("spec") or {}).get("nodeSelector") or {}).items()))
            if any(sel == s and all(a >= b for a, b in zip(req, r)) for s, r in failed):
                continue
            node = self._fit(pod, req, nodes)
            if node is None:
                failed.append((sel, req))
                self._unschedulable(pod, len(nodes))
                continue
            key = _key(pod)
            conds = [c for c in (pod.get("status") or {}).get("conditions") or [] if c["type"] != "PodScheduled"]
            self.api.patch(PODS, *key, {"spec": {"nodeName": node}, "status": {
                "phase": "Pending", "hostIP": "10.0.0.1", "conditions": conds + [_cond("PodScheduled", True)],
                "containerStatuses": [self._cstatus(pod, {"waiting": {"reason": "ContainerCreating"}}, ready=False)]}})
            self._bound(key)

    def _fit(self, pod: dict, req: tuple, nodes: list[dict]) -> Optional[str]:
        selector = (pod.get("spec") or {}).get("nodeSelector") or {}
        n = len(nodes)
        for i in range(n):
            node = nodes[(self._rotate + i) % n]
            meta, spec = node["metadata"], node.get("spec") or {}
            if spec.get("unschedulable") or not _has(node, "Ready"):
                continue
            labels = meta.get("labels") or {}
            if any(labels.get(k) != v for k, v in selector.items()):
                continue
            if not all(_tolerates(pod, t) for t in spec.get("taints") or ()):
                continue
            cap = self._capacity_of(node)
            use = self.used.get(meta["name"], [0, 0, 0, 0])
            if all(u + r <= c for u, r, c in zip(use, req + (1,), cap)):
                self._rotate = (self._rotate + i + 1) % n
                return meta["name"]
        return None

    def _capacity_of(self, node: dict) -> tuple:
        """(cpu millis, memory bytes, gpus, pods) the node offers, parsed once per version of it."""
        meta = node["metadata"]
        known = self._capacity.get(meta["name"])
        if known is None or known[0] != meta.get("resourceVersion"):
            alloc = (node.get("status") or {}).get("allocatable") or {}
            known = (meta.get("resourceVersion"), _amounts(alloc) + (int(alloc.get("pods", 110)),))
            self._capacity[meta["name"]] = known
        return known[1]

    def _unschedulable(self, pod: dict, n: int) -> None:
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c["type"] == "PodScheduled" and c.get("status") == "False":
                return
        message = (f"0/{n} nodes are available: {n} Insufficient resources or no matching node. "
                   f"preemption: 0/{n} nodes are available: {n} No preemption victims found for incoming pod.")
        self.api.patch(PODS, *_key(pod), {"status": {"phase": "Pending", "conditions": [
            _cond("PodScheduled", False, "Unschedulable", message)]}})

    # --- Job controller -----------------------------------------------------------------
    def _sync_job(self, key: tuple) -> None:
        job = self.api.get(JOBS, *key)
        if job is None or _meta(job).get("deletionTimestamp"):
            return
        status = job.get("status") or {}
        spec = job.get("spec") or {}
        ttl = spec.get("ttlSecondsAfterFinished")
        if _has(job, "Complete") or _has(job, "Failed"):
            return
        uid = _meta(job)["uid"]
        pods = [p for p in (self.api.get(PODS, *k) for k in self.pods_by_owner.get(uid, ())) if p is not None]
        for p in pods:  # account terminal pods: drop the tracking finalizer
            if _terminal(p) and TRACKING in (_meta(p).get("finalizers") or ()):
                self.api.patch(PODS, *_key(p), {"metadata": {"finalizers": None}})
        active = [p for p in pods if not _terminal(p) and not _meta(p).get("deletionTimestamp")]
        ignored = [p for p in pods if _terminal(p) and _ignored(job, p)]
        failed = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Failed" and p not in ignored)
        failed = max(failed, status.get("failed", 0))
        succeeded = max(sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Succeeded"),
                        status.get("succeeded", 0))
        new: dict = {"active": len(active), "failed": failed or None, "succeeded": succeeded or None,
                     "ready": sum(1 for p in active if (p.get("status") or {}).get("phase") == "Running"),
                     "terminating": sum(1 for p in pods if _meta(p).get("deletionTimestamp") and not _terminal(p)),
                     "uncountedTerminatedPods": {}}
        start = status.get("startTime") or now_iso()
        new["startTime"] = start
        deadline = spec.get("activeDeadlineSeconds")
        verdict = None
        if succeeded >= int(spec.get("completions") or 1):
            verdict = ("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
        elif failed > int(spec.get("backoffLimit") or 0):
            verdict = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif deadline is not None and self._started_at(job) + float(deadline) <= time.monotonic():
            verdict = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        if verdict:
            kind, reason, message = verdict
            first = "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget"
            new["conditions"] = [_cond(first, True, reason, message), _cond(kind, True, reason, message)]
            if kind == "Complete":
                new["completionTime"] = now_iso()
            for p in active:  # what is still running is stopped
                self.api.delete(PODS, *_key(p))
            new["active"], new["ready"] = 0, 0
            self.api.patch(JOBS, *key, {"status": new})
            if ttl is not None:
                self.at(float(ttl), lambda: self._expire(key, uid))
            return
        if not active and not any(_meta(p).get("deletionTimestamp") and not _terminal(p) for p in pods):
            self._create_pod(job)
            new["active"] = 1
        if deadline is not None:
            self.at(float(deadline) - (time.monotonic() - self._started_at(job)) + 0.01,
                    lambda: self.dirty_jobs.add(key))
        if any(status.get(k) != v for k, v in new.items()):
            self.api.patch(JOBS, *key, {"status": new})

    def _started_at(self, job: dict) -> float:
        return self._starts.setdefault(_meta(job)["uid"], time.monotonic())

    def _create_pod(self, job: dict) -> None:
        meta, template = _meta(job), job["spec"]["template"]
        uid, name = meta["uid"], meta["name"]
        labels = {**(template.get("metadata") or {}).get("labels", {}), "batch.kubernetes.io/controller-uid": uid,
                  "batch.kubernetes.io/job-name": name, "controller-uid": uid, "job-name": name}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"generateName": f"{name}-", "namespace": meta["namespace"], "labels": labels,
                            "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                            "finalizers": [TRACKING],
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                                                 "controller": True, "blockOwnerDeletion": True}]},
               "spec": {**template["spec"], "schedulerName": "default-scheduler"},
               "status": {"phase": "Pending", "qosClass": "Guaranteed"}}
        self.api.create(PODS, pod)

    def _expire(self, key: tuple, uid: str) -> None:
        """The TTL-after-finished controller: delete the Job (its pods and ConfigMap follow)."""
        job = self.api.get(JOBS, *key)
        if job is not None and _meta(job)["uid"] == uid:
            self.api.delete(JOBS, *key)
