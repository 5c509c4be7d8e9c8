"""What this machine offers to local jobs: CPU, memory, GPUs, job slots.

The `local:` block of the configuration sets them (`cpu`, `memory`, `gpu`, `slots`,
`labels`, `stop_grace`, `log_max`: the size at which a job's log rotates, and `run_as`:
the user jobs run as when the stack runs as root, `nobody` by default; the runtime keys
are read by `runtimes.py`); what it leaves out is detected from the machine (cpu count,
/proc/meminfo, `nvidia-smi`). A bad block stops the executor at start with a clear message.
"""

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..domain import duration, quantity
from ..domain.errors import ConfigError, InvalidSpec
from . import runtimes

KEYS = ("cpu", "memory", "gpu", "slots", "labels", "stop_grace", "run_as", "log_max") + runtimes.KEYS
DEFAULT_LOG_MAX = 256 * 2**20  # bytes per part of a job's log; one older part is kept
DEFAULT_JOB_USER = "nobody"  # jobs of a stack started as root run as this user
DEFAULT_STOP_GRACE = 10.0


@dataclass(frozen=True)
class Capacity:
    cpu_millis: int
    memory_bytes: int
    gpus: tuple[int, ...]  # device indices for CUDA_VISIBLE_DEVICES
    slots: Optional[int] = None  # most jobs at once; None: as many as fit
    labels: dict = field(default_factory=dict)
    stop_grace: float = DEFAULT_STOP_GRACE
    run_as: Optional[str] = None  # the user jobs run as; None: the executor's own
    log_max: int = DEFAULT_LOG_MAX  # a job's log rotates at this size


def memory_total(meminfo: Path = Path("/proc/meminfo")) -> int:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def gpu_indices() -> tuple[int, ...]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ()
    try:
        out = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if out.returncode != 0:
        return ()
    return tuple(int(line) for line in out.stdout.split() if line.strip().isdigit())


def capacity(config: Optional[dict], jobs_dir: Optional[Path] = None) -> Capacity:
    """Capacity from the `local:` configuration block, the rest detected. `jobs_dir`: where
    the jobs' directories are, which an unprivileged job user must be able to reach."""
    raw = config or {}
    if not isinstance(raw, dict):
        raise ConfigError("configuration: local must be a mapping (cpu, memory, gpu, slots, labels, stop_grace)")
    unknown = sorted(set(map(str, raw)) - set(KEYS))
    if unknown:
        raise ConfigError(f"configuration: unknown key(s) local.{', local.'.join(unknown)} (known: {', '.join(KEYS)})")
    try:
        cpu = quantity.cpu_millis(raw["cpu"], "local.cpu") if raw.get("cpu") is not None else (os.cpu_count() or 1) * 1000
        memory = quantity.memory_bytes(raw["memory"], "local.memory") if raw.get("memory") is not None else memory_total()
        gpus = gpu_indices()
        if raw.get("gpu") is not None:
            count = raw["gpu"]
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise InvalidSpec(f"local.gpu: expected a whole number of GPUs, got {count!r}")
            gpus = gpus[:count] if len(gpus) >= count else tuple(range(count))
        slots = raw.get("slots")
        if slots is not None and (isinstance(slots, bool) or not isinstance(slots, int) or slots < 1):
            raise InvalidSpec(f"local.slots: expected a whole number of at least 1, got {slots!r}")
        labels = raw.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise InvalidSpec("local.labels: expected a mapping of label names to strings")
        grace = float(duration.seconds(raw["stop_grace"], "local.stop_grace")) if raw.get("stop_grace") is not None \
            else DEFAULT_STOP_GRACE
        log_max = quantity.memory_bytes(raw["log_max"], "local.log_max") if raw.get("log_max") is not None \
            else DEFAULT_LOG_MAX
        if log_max < 4096:
            raise InvalidSpec(f"local.log_max: at least 4Ki, got {raw.get('log_max')!r}")
    except InvalidSpec as e:
        raise ConfigError(f"configuration: {e.message}") from None
    return Capacity(cpu_millis=cpu, memory_bytes=memory, gpus=gpus, slots=slots, labels=dict(labels), stop_grace=grace,
                    run_as=job_user(raw.get("run_as"), reach=jobs_dir), log_max=log_max)


def job_user(configured, env=os.environ, euid: Optional[int] = None, reach: Optional[Path] = None) -> Optional[str]:
    """Who runs the jobs: `local.run_as` or SENTINELS_RUN_AS ("" or the executor's own user:
    no change); by default `nobody` when the stack runs as root, else the stack's user.

    The job user must be able to reach `reach` (the jobs' directories): a configured user
    who cannot is a configuration error; the default user is then not used (a warning says
    why: a home under /root, for instance, is closed to everybody else)."""
    value = env.get("SENTINELS_RUN_AS", configured)
    euid = os.geteuid() if euid is None else euid
    default = value is None
    if value is None:
        value = DEFAULT_JOB_USER if euid == 0 else ""
    if not isinstance(value, str):
        raise ConfigError(f"configuration: local.run_as must be a user name, not {value!r}")
    if not value or (euid != 0) or value == "root":
        return None  # only root can run jobs as somebody else
    import pwd

    try:
        pw = pwd.getpwnam(value)
    except KeyError:
        raise ConfigError(f"configuration: local.run_as: no user {value!r} on this machine") from None
    closed = _closed_ancestor(reach, pw.pw_uid, pw.pw_gid) if reach is not None else None
    if closed is not None:
        why = f"{value} cannot reach the job directories ({closed} is closed to it)"
        if not default:
            raise ConfigError(f"configuration: local.run_as: {why}; move SENTINELS_HOME or open {closed}")
        import logging

        logging.getLogger("sentinels.executor").warning(
            "jobs run as root: %s; set local.run_as, or put SENTINELS_HOME where %s can reach it", why, value)
        return None
    return value


def _closed_ancestor(path: Path, uid: int, gid: int) -> Optional[Path]:
    """The first existing directory on the way to `path` that `uid` may not traverse."""
    for folder in reversed([Path(path).resolve(), *Path(path).resolve().parents]):
        try:
            st = folder.stat()
        except OSError:
            break  # not made yet: it will be made by the executor, traversable
        allowed = st.st_mode & 0o001 or (st.st_uid == uid and st.st_mode & 0o100) or \
            (st.st_gid == gid and st.st_mode & 0o010)
        if not allowed:
            return folder
    return None
