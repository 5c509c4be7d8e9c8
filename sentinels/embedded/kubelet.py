"""The local executor's bookkeeping: a tiny kubelet plus Job controller for one machine.

It launches job attempts as processes, retries failed ones up to the spec's `retries`
(the Job's backoffLimit), enforces the timeout (activeDeadlineSeconds), stops jobs on
request, and turns every change into ApiServerSource-shaped CloudEvents.

Each job's directory `<jobs>/<id>/` holds `state.json` (rewritten atomically after every
change), `job.yaml`, `work/`, `outputs/`, `attempt-<n>.log` (+ `log`, a link to the
current one) and `attempt-<n>.exit` (written by the runner). Events wait in the state's
`outbox` until the sink took them, so an executor crash loses none (their ids are
deterministic, so JetStream drops a re-sent one). At start, `recover()` adopts attempts
still running and reports the ones that ended while nobody watched.
"""

import asyncio
import subprocess
import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Callable, Optional

import yaml

from .. import clock, logfiles
from ..domain import local_objects as objects
from ..domain.errors import Conflict, InvalidSpec, NotFound
from ..domain.job import is_job_id
from ..domain.placement import Node
from ..domain.spec import DNS1123_LABEL, ENV_NAME, config_of
from . import processes, run_state
from .machine import Capacity
from .runtimes import Launch, ProcessRuntime, Runtime

log = logging.getLogger("sentinels.executor")

BASIC_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "TMPDIR")
MAX_LOG_BYTES = 512 * 1024  # what one `logs` reply may carry (NATS max_payload is 1 MB)
POD_LOST_MESSAGE = "ended without leaving an exit code (killed with SIGKILL?)"
PULL_BACKOFF, PULL_BACKOFF_MAX = 10.0, 300.0
PREEMPTED_FILE = ".sentinels-preempted"  # in $SENTINELS_OUTPUTS: why this run is being stopped (a preemption)  # seconds between image pulls, as a kubelet backs off


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_states(jobs_dir: Path, name: str) -> list[dict]:
    """Every `<jobs>/<job id>/<name>` that can be read (the others are logged and left alone)."""
    out = []
    for path in sorted(jobs_dir.glob(f"*/{name}")):
        if not is_job_id(path.parent.name):
            continue
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            log.error("cannot read %s (%s); that job is not tracked", path, e)
    return out


async def send_outboxes(states, sink, save) -> None:
    """Hand every waiting event to the sink, in order per object; stop at the first failure."""
    for state in list(states):
        sent, error = 0, None
        try:
            for event in list(state["outbox"]):
                await sink.emit(event)
                sent += 1
        except Exception as e:  # NATS away: the outbox keeps them for the next pass
            error = e
        if sent:
            del state["outbox"][:sent]
            save(state)
        if error is not None:
            log.warning("could not publish the events of job %s yet: %s", state["job"], error)
            return


def _check_launch(record, extra_env) -> tuple[dict, dict]:
    if not isinstance(record, dict) or not is_job_id(record.get("id")):
        raise InvalidSpec("launch: record.id must be a job id (10 characters a-z, 2-7)", "record.id")
    if not isinstance(record.get("k8s_job"), str) or not DNS1123_LABEL.match(record["k8s_job"]) \
            or len(record["k8s_job"]) > 63:
        raise InvalidSpec("launch: record.k8s_job must be a DNS-1123 label", "record.k8s_job")
    spec = record.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("resources"), dict):
        raise InvalidSpec("launch: record.spec with resources is required", "record.spec")
    for key in ("command", "args"):
        if not isinstance(spec.get(key) or [], list) or not all(isinstance(a, str) for a in spec.get(key) or []):
            raise InvalidSpec(f"launch: spec.{key} must be a list of strings", f"spec.{key}")
    extra_env = extra_env or {}
    if not isinstance(extra_env, dict) or not all(isinstance(k, str) and ENV_NAME.match(k) and isinstance(v, str)
                                                  for k, v in extra_env.items()):
        raise InvalidSpec("launch: extra_env must map variable names to strings", "extra_env")
    return record, extra_env


def give_to(path: Path, user: Optional[str]) -> None:
    """Let the unprivileged job user write its own directory (nothing else of the job's)."""
    if not user:
        return
    import pwd

    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)


class Kubelet:
    def __init__(self, jobs_dir: Path, capacity: Capacity, sink, *, now: Callable[[], str] = clock.now_iso,
                 wall: Callable[[], float] = time.time, runtime: Optional[Runtime] = None):
        self.dir = Path(jobs_dir).resolve()  # jobs run in their own work dir: every path absolute
        self.cap = capacity
        self.runtime: Runtime = runtime or ProcessRuntime()
        self.pull_backoff = PULL_BACKOFF
        self.sink = sink
        self.now = now
        self.wall = wall
        self.runs: dict[str, dict] = {}  # job id -> state (state.json)
        self.children: dict[str, Optional[subprocess.Popen]] = {}  # job id -> Popen of the attempt this executor started
        self._rv = 0
        self._flushing: Optional[asyncio.Lock] = None

    # --- persistence --------------------------------------------------------------------
    def _job_dir(self, job_id: str) -> Path:
        return self.dir / job_id

    def _save(self, state: dict) -> None:
        bad = run_state.undeclared(state)
        if bad:  # a programming error: declare the field in run_state.py
            raise TypeError(f"executor state field(s) {', '.join(bad)} not declared in embedded.run_state")
        write_atomic(self._job_dir(state["job"]) / "state.json", json.dumps(state))

    def _next_rv(self) -> int:
        self._rv = max(self._rv + 1, int(self.wall() * 1000))
        return self._rv

    # --- objects and events ---------------------------------------------------------------
    def _job_info(self, state: dict) -> dict:
        running = state["outcome"] is None and (state.get("pod") or {}).get("phase") == "Running"
        return {**{k: state.get(k) for k in ("generation", "created", "started", "finished", "outcome", "reason",
                                             "message", "succeeded", "failed")},
                "active": int(state["outcome"] is None and bool(state.get("pod"))), "ready": int(running),
                "resource_version": state["job_rv"]}

    def _emit_job(self, state: dict, kind: str) -> None:
        state["job_rv"] = self._next_rv()
        obj = objects.job_object(state["record"], self._job_info(state))
        state["outbox"].append(objects.apiserver_event(kind, obj, self.now()))

    def _emit_pod(self, state: dict, kind: str) -> None:
        pod = state["pod"]
        pod["rv"] = self._next_rv()
        info = {**pod, "generation": state["generation"], "resource_version": pod["rv"]}
        obj = objects.pod_object(state["record"], pod["attempt"], info)
        state["outbox"].append(objects.apiserver_event(kind, obj, self.now()))

    async def flush(self) -> None:
        """Hand every waiting event to the sink, in order per job; stop at the first failure."""
        if self._flushing is None:
            self._flushing = asyncio.Lock()
        async with self._flushing:
            await send_outboxes(self.runs.values(), self.sink, self._save)

    # --- capacity -------------------------------------------------------------------------
    def _live(self) -> list[dict]:
        return [s for s in self.runs.values() if s["outcome"] is None]

    def node(self) -> dict:
        """This machine as a placement Node: allocatable, and free = allocatable - live requests."""
        live = self._live()
        used = [sum((s["record"]["spec"]["resources"].get(k) or 0) for s in live)
                for k in ("cpu_millis", "memory_bytes", "gpu")]
        alloc = (self.cap.cpu_millis, self.cap.memory_bytes, len(self.cap.gpus))
        free = [a - u for a, u in zip(alloc, used)]
        labels = {"kubernetes.io/hostname": objects.NODE_NAME, "kubernetes.io/os": "linux", **self.cap.labels}
        node = Node(name=objects.NODE_NAME, cpu_millis=alloc[0], memory_bytes=alloc[1], gpu=alloc[2],
                    free_cpu_millis=free[0], free_memory_bytes=free[1], free_gpu=free[2], labels=labels,
                    free_pods=None if self.cap.slots is None else max(0, self.cap.slots - len(live)))
        return {**dataclasses.asdict(node), "taints": []}

    def active(self) -> dict[str, str]:
        return {s["job"]: s["record"]["k8s_job"] for s in self._live()}

    def jobs(self, job_ids) -> dict[str, dict]:
        """The current Job object of each of these jobs this executor knows (for reconciling)."""
        if not isinstance(job_ids, list) or not all(isinstance(j, str) for j in job_ids):
            raise InvalidSpec("jobs: ids must be a list of job ids", "ids")
        return {j: objects.job_object(self.runs[j]["record"], self._job_info(self.runs[j]))
                for j in job_ids if j in self.runs}

    def _free_gpus(self) -> list[int]:
        taken = {g for s in self._live() for g in (s.get("pod") or {}).get("gpus") or ()}
        return [g for g in self.cap.gpus if g not in taken]

    # --- launching --------------------------------------------------------------------------
    def _launch(self, state: dict, job_dir: Path, attempt: int, gpus: list[int]) -> Launch:
        spec = state["record"]["spec"]
        env = {k: str(v) for k, v in (spec.get("env") or {}).items()}
        env.update(state["extra_env"])
        env["SENTINELS_JOB_ID"] = state["job"]
        if self.cap.run_as:  # not the stack user's home: nothing of the platform's is found there
            env.update(HOME=str(job_dir / "work"), USER=self.cap.run_as)
        if self.cap.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))  # "" hides every GPU from CPU jobs
        return Launch(job_id=state["job"], generation=state["generation"], attempt=attempt, spec=spec, env=env,
                      host_env={k: os.environ[k] for k in BASIC_ENV if k in os.environ}, gpus=gpus,
                      job_dir=job_dir, log=job_dir / f"attempt-{attempt}.log",
                      result=job_dir / f"attempt-{attempt}.exit", run_as=self.cap.run_as, log_max=self.cap.log_max,
                      team=state["record"].get("team"))

    def _start_attempt(self, state: dict, gpus: list[int]) -> None:
        """Start the next attempt (a new pod) of a live run and record it."""
        attempt = state["attempt"] = state["attempt"] + 1
        state["pod"] = {"attempt": attempt, "created": self.now(), "started": None, "finished": None,
                        "phase": "Pending", "exit_code": None, "terminated_reason": None, "message": None,
                        "pid": None, "pgid": None, "proc_start": None, "gpus": gpus, "runtime": self.runtime.name}
        self._spawn(state, "add")

    def _spawn(self, state: dict, kind: str) -> None:
        """Run the current pod's attempt (again, after a failed image pull) and emit the pod."""
        job_dir, pod = self._job_dir(state["job"]), state["pod"]
        pod.update(retry_at=None)
        self._save(state)  # a crash from here on finds a Pending pod without pid: reported lost
        launch = self._launch(state, job_dir, pod["attempt"], pod["gpus"])
        try:
            started, info = self.runtime.start(launch)
        except (OSError, ValueError) as e:  # the runner could not start (no fork, a NUL byte): a failed attempt
            now, why = self.now(), getattr(e, "strerror", None) or e
            pod.update(started=now, finished=now, phase="Failed", exit_code=None, message=f"could not start: {why}")
            self._emit_pod(state, kind)
            self._finish(state, objects.BACKOFF_REASON, f"could not start the process: {why}")
            return
        link = job_dir / "log.tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(launch.log.name)
        os.replace(link, job_dir / "log")
        self.children[state["job"]] = started.popen
        pod.update(pid=started.pid, pgid=started.pgid, proc_start=started.proc_start, **info)
        running = self.runtime.started(pod, job_dir)
        if running is not None:
            pod.update(phase="Running", started=self.now(), waiting_reason=None, waiting_message=None, **running)
        if kind == "add" or running is not None:  # a pull tried again changes nothing others can see
            self._emit_pod(state, kind)

    def launch(self, record: object, extra_env: object = None) -> dict:  # checked here: from a request
        """Start a job unless this run (id, attempts) was launched already: idempotent."""
        record, extra_env = _check_launch(record, extra_env)
        job_id, generation = record["id"], int(record.get("attempts") or 0)
        old = self.runs.get(job_id)
        if old is not None and (old["outcome"] is None or old["generation"] >= generation):
            return {"launched": False, "job": job_id, "state": self._describe(old)}
        spec = record["spec"]
        need = int(spec["resources"].get("gpu") or 0)
        free = self._free_gpus()
        if need > len(free):
            raise Conflict(f"job {job_id} needs {need} GPU{'s' if need != 1 else ''}; {len(free)} free on this machine")
        job_dir = self._job_dir(job_id)
        for sub in ("work", "outputs"):
            (job_dir / sub).mkdir(parents=True, exist_ok=True)
            give_to(job_dir / sub, self.cap.run_as)
        (job_dir / "outputs" / PREEMPTED_FILE).unlink(missing_ok=True)  # an earlier attempt's, read by now
        write_atomic(job_dir / "job.yaml", yaml.safe_dump(config_of(record), sort_keys=False))
        now = self.now()
        timeout = spec.get("timeout_seconds")
        state = {"job": job_id, "record": record, "extra_env": extra_env, "generation": generation, "created": now,
                 "started": None, "finished": None, "deadline": self.wall() + timeout if timeout else None,
                 "outcome": None, "reason": None, "message": None, "succeeded": 0, "failed": 0,
                 "attempt": old["attempt"] if old else 0, "pod": None, "stopping": None, "job_rv": 0,
                 "outbox": old["outbox"] if old else []}  # a requeued run keeps what was not sent yet
        self.runs[job_id] = state
        if not spec.get("command") and self.runtime.needs_command():
            state.update(outcome="Failed", reason=objects.NO_COMMAND_REASON, message=objects.NO_COMMAND_MESSAGE,
                         finished=now)
            self._emit_job(state, "add")
            self._save(state)
            return {"launched": False, "job": job_id, "state": self._describe(state)}
        state["started"] = now
        mark = len(state["outbox"])
        self._start_attempt(state, free[:need])
        if state["outcome"] is None:  # the Job's add goes out before its pod's
            self._emit_job(state, "add")
            state["outbox"].insert(mark, state["outbox"].pop())
        self._save(state)
        return {"launched": True, "job": job_id, "state": self._describe(state)}

    # --- ending -------------------------------------------------------------------------------
    def _finish(self, state: dict, reason: Optional[str], message: Optional[str]) -> None:
        """Mark the run Complete (reason None) or Failed, and emit the Job's change."""
        state.update(outcome="Failed" if reason else "Complete", reason=reason, message=message,
                     finished=self.now(), stopping=None)
        self.children.pop(state["job"], None)
        self._emit_job(state, "update" if state["job_rv"] else "add")

    def _ended(self, state: dict, code: Optional[int], finished: Optional[str] = None,
               lost_message: str = POD_LOST_MESSAGE, seen_now: bool = True) -> None:
        """The current attempt's process ended with `code` (None: nobody knows how).

        `seen_now`: the end was noticed at once, so the process group id cannot have been
        reused yet and leftovers of the job may be killed (they die with it, as in a pod).
        """
        pod = state["pod"]
        if pod.get("pgid") and seen_now:
            processes.signal_group(pod["pgid"], signal.SIGKILL)
        stopping = state.get("stopping")
        end = self.runtime.ending(pod, self._job_dir(state["job"]), code, bool(stopping))
        code = end.exit_code
        pod.update(finished=finished or self.now(), exit_code=code, started=pod.get("started") or pod["created"],
                   phase="Succeeded" if code == 0 and not stopping else "Failed", waiting_reason=None,
                   terminated_reason=end.reason, message=end.message or pod.get("message"))
        if stopping and stopping["reason"] == objects.DEADLINE_REASON:  # as the kubelet marks it
            pod.update(pod_reason=objects.DEADLINE_REASON, pod_message=objects.POD_DEADLINE_MESSAGE)
        self._emit_pod(state, "update")
        if pod["phase"] == "Succeeded":
            state["succeeded"] = 1
            self._finish(state, None, None)
            return
        state["failed"] += 1
        if stopping:
            self._finish(state, stopping["reason"], stopping["message"])
        elif code is None:
            self._finish(state, objects.LOST_REASON, lost_message)
        elif state["failed"] > int(state["record"]["spec"].get("retries") or 0):
            self._finish(state, objects.BACKOFF_REASON, objects.BACKOFF_MESSAGE)
        else:  # the Job controller's retry: a new pod
            self._start_attempt(state, pod.get("gpus") or [])
            if state["outcome"] is None:
                self._emit_job(state, "update")

    def _begin_stop(self, state: dict, reason: str, message: str) -> None:
        state["stopping"] = {"reason": reason, "message": message, "kill_at": self.wall() + self.cap.stop_grace}
        if state.get("pod"):
            self.runtime.signal(state["pod"], self._job_dir(state["job"]), signal.SIGTERM)

    def stop(self, job_id: object, why: object = None) -> dict:  # checked here: it comes from a request
        """SIGTERM now, SIGKILL after the grace period; the run then ends Failed "stopped". Idempotent.

        `why` (a preemption: who took the room) is written to `PREEMPTED_FILE` in the job's
        outputs before the signal, so a job that checkpoints on SIGTERM can read why."""
        if not is_job_id(job_id):
            raise InvalidSpec("stop: job must be a job id", "job")
        if why is not None and (not isinstance(why, str) or len(why) > 1000):
            raise InvalidSpec("stop: why must be a short text", "why")
        state = self.runs.get(job_id)
        if state is not None and state["outcome"] is None:
            self._settle(state)  # it may have ended already (exit 0 included): that stands, not the stop
        if state is None or state["outcome"] is not None:
            return {"stopping": False, "job": job_id, "state": self._describe(state) if state else "unknown"}
        if not state.get("stopping"):
            if why:
                write_atomic(self._job_dir(job_id) / "outputs" / PREEMPTED_FILE, why + "\n")
            self._begin_stop(state, objects.STOPPED_REASON, objects.STOPPED_MESSAGE)
            self._save(state)
        return {"stopping": True, "job": job_id, "state": self._describe(state)}

    def _result(self, state: dict) -> Path:
        """Where the current attempt's runner writes how it ended."""
        return self._job_dir(state["job"]) / f"attempt-{state['pod']['attempt']}.exit"

    def _exit_of(self, state: dict) -> tuple[bool, Optional[int], Optional[str]]:
        """(ended, exit code, finished time) of the current attempt."""
        pod, result = state["pod"], self._result(state)
        popen = self.children.get(state["job"])
        if popen is not None:
            code = processes.exit_code(popen)
            if code is None:
                return False, None, None
            written = processes.read_result(result)
            return True, written["exit_code"] if written else code, None
        if processes.alive(pod.get("pid"), pod.get("proc_start")):
            return False, None, None
        written = processes.read_result(result)
        return (True, written["exit_code"], written.get("finished")) if written else (True, None, None)

    def _pending(self, state: dict) -> bool:
        """A pod waiting for its container (pull, create): True when it is still waiting."""
        pod, job_dir = state["pod"], self._job_dir(state["job"])
        if pod.get("pid") is None:  # backing off after a failed pull
            if state.get("stopping"):
                self._ended(state, None, lost_message=state["stopping"]["message"])
            elif pod.get("retry_at") and self.wall() >= pod["retry_at"]:
                self._spawn(state, "update")
            else:
                return True
            self._save(state)
            return True
        running = self.runtime.started(pod, job_dir)
        if running is not None:
            pod.update(phase="Running", started=self.now(), waiting_reason=None, waiting_message=None, **running)
            self._emit_pod(state, "update")
            self._save(state)
            return False
        ended, _, _ = self._exit_of(state)
        if not ended:
            return True
        problem = self.runtime.pull_problem(pod, job_dir)
        if problem is None or state.get("stopping"):
            return False  # it started and ended between two looks, or it was stopped: an end
        reason, message = problem
        tries = pod["pulls"] = pod.get("pulls", 0) + 1
        if reason == "ErrImagePull" and tries > 1:
            reason, message = "ImagePullBackOff", f'Back-off pulling image "{state["record"]["spec"]["image"]}": {message}'
        self.children.pop(state["job"], None)
        pod.update(pid=None, pgid=None, proc_start=None, waiting_reason=reason, waiting_message=message,
                   retry_at=self.wall() + min(PULL_BACKOFF_MAX, self.pull_backoff * 2 ** (tries - 1)))
        self._emit_pod(state, "update")
        self._save(state)
        return True

    def _settle(self, state: dict) -> bool:
        """Record the end of the current attempt now if its process has already exited."""
        pod = state.get("pod") or {}
        if state["outcome"] is not None or pod.get("pid") is None:
            return False
        ended, code, finished = self._exit_of(state)
        if ended:
            self._ended(state, code, finished)
            self._save(state)
        return ended

    def poll(self) -> None:
        """One pass over live runs: ended attempts, deadlines, grace periods that ran out."""
        for state in self._live():
            if state.get("pod") is None or state["pod"]["phase"] not in ("Running", "Pending"):
                continue
            if state["pod"]["phase"] == "Pending" and self._pending(state):
                self._deadline(state)
                continue
            if self._settle(state):
                continue
            self._deadline(state)

    def _deadline(self, state: dict) -> None:
        if state["outcome"] is None:
            stopping = state.get("stopping")
            if stopping is None and state.get("deadline") and self.wall() >= state["deadline"]:
                self._begin_stop(state, objects.DEADLINE_REASON, objects.DEADLINE_MESSAGE)
                self._save(state)
            elif stopping and self.wall() >= stopping["kill_at"] and not stopping.get("killed"):
                self.runtime.signal(state["pod"], self._job_dir(state["job"]), signal.SIGKILL)
                stopping["killed"] = True
                self._save(state)

    # --- restart ----------------------------------------------------------------------------------
    def recover(self) -> None:
        """Load every job directory; adopt live attempts, report the ones that ended meanwhile."""
        if not self.dir.is_dir():
            self.dir.mkdir(parents=True, exist_ok=True)
        for state in load_states(self.dir, "state.json"):
            self.runs[state["job"]] = state
            self._rv = max(self._rv, state.get("job_rv") or 0, (state.get("pod") or {}).get("rv") or 0)
        for state in self._live():
            pod = state.get("pod")
            if pod is None:
                continue
            if pod["phase"] == "Pending" and (pod.get("retry_at") or (
                    pod.get("pid") and processes.alive(pod["pid"], pod.get("proc_start")))):
                log.info("adopted job %s (waiting for its container)", state["job"])
                continue  # still pulling, or backing off: the next poll goes on with it
            if pod.get("pid") is None and self._find_runner(state):
                log.info("adopted job %s (pid %s, started before its pid was saved)", state["job"], pod["pid"])
            else:  # its runner's result file tells how it ended, also when its pid was never saved
                ended, code, finished = self._exit_of(state)
                if not ended:
                    log.info("adopted job %s (pid %s)", state["job"], pod["pid"])
                    continue
                self._ended(state, code, finished, lost_message=objects.LOST_MESSAGE, seen_now=False)
            self._save(state)

    def _find_runner(self, state: dict) -> bool:
        """A runner this attempt started whose pid was never saved, found by its result file
        argument; adopted (True) when it still runs."""
        pod = state["pod"]
        pid = processes.find_by_argument(str(self._result(state)))
        if pid is None:
            return False
        pod.update(pid=pid, pgid=pid, proc_start=processes.proc_start(pid))  # the runner leads its own session
        return True

    # --- reading ----------------------------------------------------------------------------------
    def _describe(self, state: dict) -> str:
        if state["outcome"] == "Complete":
            return "succeeded"
        if state["outcome"] == "Failed":
            return f"failed: {state['message']}"
        return "stopping" if state.get("stopping") else "running"

    def logs(self, job_id: object, tail: object = None) -> list[str]:  # checked here: from a request
        if not is_job_id(job_id):
            raise InvalidSpec("logs: job must be a job id", "job")
        if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int) or tail < 0):
            raise InvalidSpec("logs: tail must be a whole number", "tail")
        path = self._job_dir(job_id) / "log"
        if not path.exists():
            if job_id in self.runs:
                return []
            raise NotFound(f"no local job {job_id}")
        return logfiles.tail(path, tail, MAX_LOG_BYTES)[0]
