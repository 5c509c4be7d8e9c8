"""Dockerfile builds in the embedded default: a build Job per job, run with Buildah or `podman build`.

The executor owns one Builder next to its kubelet. `start(record)` is idempotent; at most
`builds.concurrency` builds run, the rest wait. Each build runs `build_runner.py` under
`runner.py` in its own process group (downloads, size check, the tool), logs into
`<jobs>/<id>/build.log`, and is reported as a Kubernetes Job labelled
`sentinels.io/component: build`, as a BuildKit Job on a cluster would be: Complete with
the image it made in the annotation `sentinels.io/image`, or Failed with the build's last
lines, its deadline, or a stop. Its state (`build.json`) survives an executor restart:
a build still running is adopted, one that ended meanwhile is reported.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from .. import clock
from ..domain import build as builds
from ..domain import local_objects as objects
from ..domain.errors import InvalidSpec
from ..domain.job import is_job_id
from ..domain.observe import IMAGE_ANNOTATION, IMAGE_ID_ANNOTATION
from . import engine, processes
from .kubelet import load_states, send_outboxes, write_atomic

log = logging.getLogger("sentinels.builder")
RUNNER = Path(__file__).with_name("build_runner.py")
TAIL_LINES = 8  # of the build log, in a failed build's reason
STOP_GRACE = 5.0


def tool_command(tool: str) -> Optional[list[str]]:
    """The build command line without its file, tag and context; None when no tool is installed."""
    choices = ("buildah", "podman") if tool == "auto" else (tool,)
    for name in choices:
        exe = shutil.which(name)
        if exe and name == "buildah":
            return [exe, "bud", "--isolation", "chroot"]
        if exe:
            return [exe, *engine.default_options("podman"), "build", "--isolation", "chroot"]
    return None


def last_lines(path: Path, n: int = TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            lines = f.read().decode("utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "no build output"
    return " | ".join(line.strip() for line in lines[-n:] if line.strip()) or "no build output"


class Builder:
    def __init__(self, jobs_dir: Path, cfg: builds.BuildConfig, sink, *, now: Callable[[], str] = clock.now_iso,
                 wall: Callable[[], float] = time.time):
        self.dir = Path(jobs_dir).resolve()
        self.cfg = cfg
        self.sink = sink
        self.now, self.wall = now, wall
        self.tool = tool_command(cfg.tool)
        self.builds: dict[str, dict] = {}
        self.children: dict[str, Optional[subprocess.Popen]] = {}
        self._rv = 0

    def _save(self, b: dict) -> None:
        write_atomic(self.dir / b["job"] / "build.json", json.dumps(b))

    def _record(self, b: dict) -> dict:
        """The build as a Job of its own, for local_objects.job_object."""
        spec = {"image": "localhost/sentinels/builder", "command": ["build"], "labels": dict(builds.BUILD_LABEL),
                "resources": {}, "retries": 0, "timeout_seconds": self.cfg.deadline_seconds, "env": {}}
        return {"id": b["job"], "k8s_job": builds.build_job_name(b["job"]), "priority": b.get("priority"),
                "owner": b.get("owner"), "spec": spec}

    def _emit(self, b: dict) -> None:
        self._rv = max(self._rv + 1, int(self.wall() * 1000))
        info = {k: b.get(k) for k in ("created", "started", "finished", "outcome", "reason", "message")}
        info.update(generation=b["generation"], resource_version=self._rv, active=int(b["outcome"] is None and
                                                                                     b.get("pid") is not None),
                    succeeded=int(b["outcome"] == "Complete"), failed=int(b["outcome"] == "Failed"),
                    annotations={IMAGE_ANNOTATION: b["image"], IMAGE_ID_ANNOTATION: b["digest"]} if b.get("image") else {})
        obj = objects.job_object(self._record(b), info)
        b["outbox"].append(objects.apiserver_event("update" if b.get("announced") else "add", obj, self.now()))
        b["announced"] = True

    async def flush(self) -> None:
        await send_outboxes(self.builds.values(), self.sink, self._save)

    # --- the verbs ----------------------------------------------------------------------------
    def start(self, record: object) -> dict:  # checked here: it comes from a request
        if not isinstance(record, dict) or not is_job_id(record.get("id")) or not isinstance(record.get("build"), dict):
            raise InvalidSpec("build: record with id and build is required", "record")
        job_id = record["id"]
        if job_id in self.builds:
            return {"started": False, "job": job_id, "state": self._describe(self.builds[job_id])}
        (self.dir / job_id).mkdir(parents=True, exist_ok=True)
        b = {"job": job_id, "generation": int(record.get("attempts") or 1), "owner": record.get("owner"),
             "priority": record.get("priority"), "build": record["build"],
             "tag": builds.local_image(record["spec"]["name"], job_id), "created": self.now(), "started": None,
             "finished": None, "outcome": None, "reason": None, "message": None, "pid": None, "pgid": None,
             "proc_start": None, "deadline": None, "stopping": None, "image": None, "outbox": []}
        self.builds[job_id] = b
        self._emit(b)
        self._next()
        self._save(b)
        return {"started": True, "job": job_id, "state": self._describe(b)}

    def stop(self, job_id: object) -> bool:  # from a request: anything not a known id is a no-op
        b = self.builds.get(job_id) if isinstance(job_id, str) else None
        if b is None or b["outcome"] is not None:
            return False
        if b.get("pid") is None:  # still waiting for a slot
            self._end(b, "Failed", objects.STOPPED_REASON, "stopped before it began")
        elif not b.get("stopping"):
            b["stopping"] = {"reason": objects.STOPPED_REASON, "message": "stopped", "kill_at": self.wall() + STOP_GRACE}
            processes.signal_group(b["pgid"], signal.SIGTERM)
        self._save(b)
        return True

    def logs(self, job_id: str) -> Path:
        return self.dir / job_id / "build.log"

    # --- running ---------------------------------------------------------------------------------
    def _running(self) -> list[dict]:
        return [b for b in self.builds.values() if b["outcome"] is None and b.get("pid") is not None]

    def _next(self) -> None:
        """Start waiting builds while slots are free."""
        waiting = sorted((b for b in self.builds.values() if b["outcome"] is None and b.get("pid") is None),
                         key=lambda b: b["created"])
        for b in waiting[:max(0, self.cfg.concurrency - len(self._running()))]:
            self._launch(b)

    def _launch(self, b: dict) -> None:
        job_dir = self.dir / b["job"]
        if self.tool is None:
            self._end(b, "Failed", "BuildFailed", "no build tool: install buildah or podman")
            return
        plan = {"dockerfile": b["build"]["dockerfile"], "context": b["build"].get("context"),
                "workdir": str(job_dir / "build"), "tag": b["tag"], "iidfile": str(job_dir / "build.iid"),
                "max_context": self.cfg.max_context_bytes, "fetch_timeout": self.cfg.fetch_timeout_seconds,
                "tool": self.tool}
        write_atomic(job_dir / "build-plan.json", json.dumps(plan))
        (job_dir / "build.iid").unlink(missing_ok=True)
        try:
            started = processes.spawn([sys.executable, "-I", str(RUNNER), str(job_dir / "build-plan.json")],
                                      env={k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")},
                                      cwd=job_dir, log=job_dir / "build.log", result=job_dir / "build.exit")
        except OSError as e:
            self._end(b, "Failed", "BuildFailed", f"could not start the build: {e.strerror or e}")
            return
        self.children[b["job"]] = started.popen
        b.update(pid=started.pid, pgid=started.pgid, proc_start=started.proc_start, started=self.now(),
                 deadline=self.wall() + self.cfg.deadline_seconds)
        self._emit(b)

    def _end(self, b: dict, outcome: str, reason: Optional[str], message: Optional[str]) -> None:
        b.update(outcome=outcome, reason=reason, message=message, finished=self.now(), stopping=None)
        self.children.pop(b["job"], None)
        if b.get("pgid"):
            processes.signal_group(b["pgid"], signal.SIGKILL)  # nothing of the build outlives it
        self._emit(b)

    def _exit(self, b: dict) -> tuple[bool, Optional[int]]:
        result = self.dir / b["job"] / "build.exit"
        popen = self.children.get(b["job"])
        if popen is not None:
            code = processes.exit_code(popen)
            if code is None:
                return False, None
        elif processes.alive(b.get("pid") or 0, b.get("proc_start")):
            return False, None
        written = processes.read_result(result)
        return True, written["exit_code"] if written else None

    def _finished(self, b: dict, code: Optional[int]) -> None:
        job_dir = self.dir / b["job"]
        if b.get("stopping"):
            self._end(b, "Failed", b["stopping"]["reason"], b["stopping"]["message"])
            return
        iid = (job_dir / "build.iid").read_text().strip() if (job_dir / "build.iid").exists() else ""
        if code == 0 and iid:
            b["image"] = b["tag"]  # the local tag names exactly this build; the digest goes alongside
            b["digest"] = iid if iid.startswith("sha256:") else f"sha256:{iid}"
            self._end(b, "Complete", None, None)
        elif code is None:
            self._end(b, "Failed", objects.LOST_REASON, "the build ended without an exit code")
        else:
            self._end(b, "Failed", "BuildFailed", last_lines(job_dir / "build.log"))

    def poll(self) -> None:
        for b in self._running():
            ended, code = self._exit(b)
            if ended:
                self._finished(b, code)
            elif b.get("stopping") and self.wall() >= b["stopping"]["kill_at"]:
                processes.signal_group(b["pgid"], signal.SIGKILL)
            elif not b.get("stopping") and b.get("deadline") and self.wall() >= b["deadline"]:
                b["stopping"] = {"reason": objects.DEADLINE_REASON,
                                 "message": f"the build ran longer than its deadline ({self.cfg.deadline_seconds} s)",
                                 "kill_at": self.wall()}
                processes.signal_group(b["pgid"], signal.SIGKILL)
            else:
                continue
            self._save(b)
        before = len(self._running())
        self._next()
        if len(self._running()) != before:
            for b in self._running():
                self._save(b)

    def recover(self) -> None:
        for b in load_states(self.dir, "build.json"):
            self.builds[b["job"]] = b
        self._next()

    def _describe(self, b: dict) -> str:
        if b["outcome"] == "Complete":
            return f"built {b['image']}"
        if b["outcome"] == "Failed":
            return f"failed: {b['message']}"
        return "building" if b.get("pid") else "waiting for a build slot"
