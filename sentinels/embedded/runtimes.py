"""Where a local job attempt runs: the runtime port of the local executor, and its choice.

The kubelet (`kubelet.py`) keeps the Job/Pod bookkeeping and the events; a runtime only
starts an attempt, signals it, and says how it ended. Two adapters implement it:
`ProcessRuntime` (the command runs on this host, the image is ignored and the job is
flagged) and `engine.EngineRuntime` (Podman or Docker runs the job's image).

`local.runtime: auto | podman | docker | process` picks one (the environment variable
SENTINELS_RUNTIME wins): `auto` takes the first engine that answers, else `process`;
naming an engine that does not answer is a start-up error, one line.
"""

import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Protocol

from ..domain.errors import ConfigError
from ..domain.registries import Registries
from ..domain.runtime import PROCESS, RUNTIMES
from . import processes

ENGINES = ("podman", "docker")
KEYS = ("runtime", "engine_options", "insecure_registries", "ulimits")


@dataclass(frozen=True)
class RuntimeConfig:
    """The runtime part of the `local:` block."""

    runtime: str = "auto"
    engine_options: Optional[tuple[str, ...]] = None  # global engine flags; None: chosen for this host
    insecure_registries: tuple[str, ...] = ()  # registries reached over plain HTTP (tests, a LAN mirror)
    ulimits: tuple[tuple[str, str], ...] = ()  # (name, "soft:hard") for containers
    registries: Registries = Registries()  # auth files by registry host (`Settings.registries`)

    @classmethod
    def from_dict(cls, raw: Optional[dict], env: Mapping[str, str],
                  registries: Optional[Registries] = None) -> "RuntimeConfig":
        """`env` is `Settings.env` (SENTINELS_RUNTIME wins over `local.runtime`); `registries`
        is `Settings.registries()`, already checked."""
        raw = raw or {}
        name = env.get("SENTINELS_RUNTIME") or raw.get("runtime") or "auto"
        if name not in RUNTIMES:
            raise ConfigError(f"configuration: local.runtime must be one of {', '.join(RUNTIMES)}, not {name!r}")
        opts = raw.get("engine_options")
        if opts is not None and (not isinstance(opts, list) or not all(isinstance(o, str) for o in opts)):
            raise ConfigError("configuration: local.engine_options must be a list of strings (engine flags)")
        regs = raw.get("insecure_registries") or []
        if not isinstance(regs, list) or not all(isinstance(r, str) and r for r in regs):
            raise ConfigError("configuration: local.insecure_registries must be a list of host[:port] strings")
        ulimits = raw.get("ulimits") or {}
        if not isinstance(ulimits, dict) or not all(isinstance(k, str) and isinstance(v, (str, int))
                                                    for k, v in ulimits.items()):
            raise ConfigError("configuration: local.ulimits must map a limit name to \"soft:hard\"")
        return cls(runtime=name, engine_options=tuple(opts) if opts is not None else None,
                   insecure_registries=tuple(regs), ulimits=tuple((k, str(v)) for k, v in sorted(ulimits.items())),
                   registries=registries or Registries())


@dataclass
class Launch:
    """Everything a runtime needs to start one attempt."""

    job_id: str
    generation: int  # the record's attempts: which run of the job
    attempt: int  # which pod of this run (1-based)
    spec: dict
    env: dict  # the job's variables (spec env + sentinels variables), values as strings
    host_env: dict  # what the runtime's own process needs (PATH, HOME, ...)
    gpus: list
    job_dir: Path
    log: Path
    result: Path
    run_as: Optional[str] = None  # the unprivileged user the command runs as (process runtime)
    log_max: Optional[int] = None  # the log rotates at this size (process runtime)
    team: Optional[str] = None  # the owner's team: registry credentials kept to teams


@dataclass
class Ending:
    """How an attempt ended, in Kubernetes words."""

    exit_code: Optional[int]
    reason: Optional[str] = None  # terminated reason: None (Completed/Error), OOMKilled, StartError
    message: Optional[str] = None


class Runtime(Protocol):
    name: str  # "process", "podman", "docker"
    runs_images: bool

    def needs_command(self) -> bool: ...

    def start(self, launch: Launch) -> tuple[processes.Started, dict]: ...

    def started(self, pod: dict, job_dir: Path) -> Optional[dict]: ...

    def signal(self, pod: dict, job_dir: Path, sig: int) -> None: ...

    def ending(self, pod: dict, job_dir: Path, code: Optional[int], stopping: bool) -> Ending: ...

    def pull_problem(self, pod: dict, job_dir: Path) -> Optional[tuple[str, str]]: ...

    def describe(self) -> str: ...


class ProcessRuntime:
    """The command runs on this host under `runner.py`; the spec's image is not used."""

    name = PROCESS
    runs_images = False

    def needs_command(self) -> bool:
        return True

    def start(self, launch: Launch) -> tuple[processes.Started, dict]:
        env = {**launch.host_env, **launch.env, "SENTINELS_CONFIG": str(launch.job_dir / "job.yaml"),
               "SENTINELS_OUTPUTS": str(launch.job_dir / "outputs")}
        return processes.spawn(list(launch.spec["command"]) + list(launch.spec.get("args") or []),
                               env=env, cwd=launch.job_dir / "work", log=launch.log, result=launch.result,
                               run_as=launch.run_as, log_max=launch.log_max), {}

    def started(self, pod: dict, job_dir: Path) -> Optional[dict]:
        return {}  # a process runs as soon as it is spawned

    def signal(self, pod: dict, job_dir: Path, sig: int) -> None:
        if pod.get("pgid"):  # the whole tree: what left the group with setsid too
            processes.signal_tree(pod.get("pid") or pod["pgid"], pod["pgid"], sig)

    def ending(self, pod: dict, job_dir: Path, code: Optional[int], stopping: bool) -> Ending:
        return Ending(code)

    def pull_problem(self, pod: dict, job_dir: Path) -> Optional[tuple[str, str]]:
        return None

    def describe(self) -> str:
        return "process (commands run on this host; job images are not used)"


def default_ulimits() -> dict:
    """Container ulimits no higher than the executor's own: an engine's defaults (nofile
    1048576) are refused where the engine may not raise limits (unprivileged sandboxes)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nsoft, nhard = resource.getrlimit(resource.RLIMIT_NPROC)
    cap = lambda v: 32768 if v == resource.RLIM_INFINITY or v > 32768 else v  # noqa: E731
    nofile = f"{soft}:{hard}" if hard != resource.RLIM_INFINITY else "1048576:1048576"
    return {"nofile": nofile, "nproc": f"{cap(nsoft)}:{cap(nhard)}"}


def select(cfg: RuntimeConfig) -> Runtime:
    """The runtime `cfg` asks for; raises ConfigError when a named engine does not answer."""
    from .engine import EngineRuntime, probe

    if cfg.runtime == PROCESS:
        return ProcessRuntime()
    wanted = ENGINES if cfg.runtime == "auto" else (cfg.runtime,)
    why = {}
    for name in wanted:
        problem = probe(name, cfg)
        if problem is None:
            return EngineRuntime(name, cfg)
        why[name] = problem
    if cfg.runtime != "auto":
        raise ConfigError(f"local.runtime: {cfg.runtime} does not answer ({why[cfg.runtime]})")
    return ProcessRuntime()

