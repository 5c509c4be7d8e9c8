"""The container adapter of the local executor's runtime port: Podman or Docker, by their CLI.

An attempt is `<engine> run` of the job's image, attached, under `runner.py` like a
process job: the container's output goes into the attempt log, the engine's exit code is
the container's, and the runner survives an executor restart. The `--cidfile` appears
when the container exists (the image is there, nothing left to pull), which is when the
pod turns Running. A run that ends without a cidfile could not pull or create its
container: the pod stays Pending with `ErrImagePull` (then `ImagePullBackOff`) and the
engine's own words, and is tried again with a back-off, as a kubelet does; the lifecycle
fails the job after its image-pull grace.

Containers carry the labels `sentinels.io/job-id`, `sentinels.io/attempt` (the run) and
`sentinels.io/pod` (the try within it), run with host networking (so a job reaches the
stack's MLflow server on 127.0.0.1), the spec file read-only at SENTINELS_CONFIG, the
data path read-only, the outputs directory read-write, CPU and memory limits, and GPUs by
index (CDI for Podman, `--gpus` for Docker).

Registry credentials: `pull_options()` is the one place that adds flags for reaching a
registry. The auth file of the image's registry host (`registries:` or
SENTINELS_REGISTRY_AUTH) goes to Podman as `--authfile`, to Docker as DOCKER_CONFIG (the
directory of a `config.json`); only its path is ever on a command line or in a record.
"""

import functools
import json
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Optional

from ..domain.errors import ConfigError
from ..domain.quantity import format_cpu
from ..domain.registries import registry_host
from .runtimes import Ending, Launch, RuntimeConfig, default_ulimits
from . import processes

CONFIG_PATH = "/etc/sentinels/job.yaml"
START_ERROR_CODE = 128  # what Kubernetes reports for a container whose command could not start
PROBE_SECONDS = 20
PULL_WORDS = ("pull", "initializing source", "manifest unknown", "reading manifest", "pinging container registry",
              "name unknown", "unauthorized", "not found: manifest", "repository does not exist", "no such host",
              "requested access to the resource is denied", "image not known")


def default_options(name: str) -> tuple[str, ...]:
    """Global flags this host needs: Podman with runc and cgroupfs (crun fails on hybrid cgroups)."""
    if name == "podman" and shutil.which("runc"):
        return ("--runtime", "runc", "--cgroup-manager", "cgroupfs")
    return ()


def _options(name: str, cfg: RuntimeConfig) -> tuple[str, ...]:
    return cfg.engine_options if cfg.engine_options is not None else default_options(name)


@functools.lru_cache(maxsize=None)
def probe(name: str, cfg: RuntimeConfig) -> Optional[str]:
    """None when the engine answers, else why not (one line)."""
    exe = shutil.which(name)
    if not exe:
        return f"{name} is not installed"
    # Podman has no daemon: its client answering is enough (`podman info` waits on storage locks
    # for seconds while other containers start); Docker's answer needs its daemon
    ask = ["version", "--format", "{{.Client.Version}}" if name == "podman" else "{{.Server.Version}}"]
    try:
        out = subprocess.run([exe, *_options(name, cfg), *ask], capture_output=True, text=True, timeout=PROBE_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{name} did not answer: {e}"
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines()
        return f"{name} failed: {lines[-1] if lines else f'exit {out.returncode}'}"
    return None


def container_name(job_id: str, generation: int, attempt: int) -> str:
    return f"sentinels-{job_id}-{generation}-{attempt}"


def _oom_kills() -> Optional[int]:
    """The kernel's count of OOM kills (vmstat), to recognise one the engine did not report."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def last_error(log: Path, limit: int = 64 * 1024) -> str:
    """The engine's last `Error: ...` line in the attempt log (else its last line)."""
    try:
        with open(log, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - limit))
            lines = f.read().decode("utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "the engine wrote nothing"
    errors = [line for line in lines if line.startswith("Error")]
    text = (errors or lines or ["the engine wrote nothing"])[-1]
    return text.removeprefix("Error: ").removeprefix("Error response from daemon: ").strip()


def classify(message: str) -> str:
    """The Kubernetes waiting reason for an engine's refusal to create a container."""
    low = message.lower()
    if "invalid reference format" in low or "repository name must" in low:
        return "InvalidImageName"
    if any(w in low for w in PULL_WORDS):
        return "ErrImagePull"
    return "CreateContainerError"


class EngineRuntime:
    runs_images = True

    def __init__(self, name: str, cfg: RuntimeConfig):
        self.name = name
        self.cfg = cfg
        self.exe = shutil.which(name) or name
        self.options = _options(name, cfg)
        self.ulimits = {**default_ulimits(), **dict(cfg.ulimits)}
        if name == "docker":
            bad = [p for p in cfg.registries.auth_files() if Path(p).name != "config.json"]
            if bad:
                raise ConfigError(f"registries: Docker reads credentials from a directory's config.json; name the "
                                  f"auth file {bad[0]} config.json (or use Podman)")

    def needs_command(self) -> bool:
        return False  # the image's entrypoint runs when the spec has no command

    def describe(self) -> str:
        return f"{self.name} (jobs run in their images)"

    # --- building the command line ------------------------------------------------------
    def pull_options(self, image: str, team: Optional[str] = None) -> list[str]:
        """Flags for reaching the image's registry: plain HTTP, and Podman's auth file."""
        flags = []
        if self.name == "podman" and registry_host(image) in self.cfg.insecure_registries:
            flags.append("--tls-verify=false")
        auth = self.cfg.registries.auth_file_for(image, team)
        if self.name == "podman" and auth:
            flags += ["--authfile", auth]
        return flags

    def pull_env(self, image: str, team: Optional[str] = None) -> dict:
        """The engine's environment for a pull: Docker finds its auth file through DOCKER_CONFIG."""
        auth = self.cfg.registries.auth_file_for(image, team)
        return {"DOCKER_CONFIG": str(Path(auth).parent)} if self.name == "docker" and auth else {}

    def _gpu_flags(self, gpus: list) -> list[str]:
        if not gpus:
            return []
        if self.name == "podman":  # CDI names from `nvidia-ctk cdi generate`
            return [flag for g in gpus for flag in ("--device", f"nvidia.com/gpu={g}")]
        return ["--gpus", "device=" + ",".join(map(str, gpus))]

    def argv(self, launch: Launch) -> list[str]:
        """The engine command line of one attempt; values of variables stay out of it."""
        spec = launch.spec
        res = spec.get("resources") or {}
        outputs = spec.get("outputs") or "/outputs"
        argv = [self.exe, *self.options, "run", "--name",
                container_name(launch.job_id, launch.generation, launch.attempt),
                "--cidfile", str(cidfile(launch.job_dir, launch.attempt)), "--pull", "missing",
                "--network", "host", "--security-opt", "no-new-privileges", "--stop-timeout", "30",
                "--label", f"sentinels.io/job-id={launch.job_id}",
                "--label", f"sentinels.io/attempt={launch.generation}",
                "--label", f"sentinels.io/pod={launch.attempt}",
                "--label", "app.kubernetes.io/managed-by=sentinels"]
        for key, value in sorted(self.ulimits.items()):
            argv += ["--ulimit", f"{key}={value}"]
        if res.get("cpu_millis"):
            argv += ["--cpus", format_cpu(res["cpu_millis"]) if res["cpu_millis"] % 1000 == 0
                     else f"{res['cpu_millis'] / 1000:g}"]
        if res.get("memory_bytes"):
            argv += ["--memory", str(int(res["memory_bytes"]))]
        argv += ["-v", f"{launch.job_dir / 'job.yaml'}:{CONFIG_PATH}:ro",
                 "-v", f"{launch.job_dir / 'outputs'}:{outputs}:rw"]
        if spec.get("data"):
            argv += ["-v", f"{spec['data']}:{spec['data']}:ro"]
        argv += self._gpu_flags(launch.gpus)
        for key in sorted(self.container_env(launch)):
            argv += ["--env", key]  # the value comes from the engine's environment: never in `ps`
        argv += self.pull_options(spec["image"], launch.team)
        command = list(spec.get("command") or [])
        if command:
            argv += ["--entrypoint", command[0]]
        return argv + [spec["image"], *command[1:], *(spec.get("args") or [])]

    def container_env(self, launch: Launch) -> dict:
        env = {k: v for k, v in launch.env.items() if k != "CUDA_VISIBLE_DEVICES"}  # CDI renumbers from 0
        env.update(SENTINELS_CONFIG=CONFIG_PATH, SENTINELS_OUTPUTS=launch.spec.get("outputs") or "/outputs")
        return env

    # --- the port ------------------------------------------------------------------------------
    def start(self, launch: Launch) -> tuple[processes.Started, dict]:
        cidfile(launch.job_dir, launch.attempt).unlink(missing_ok=True)  # a retried pull reuses the name
        env = {**launch.host_env, **self.pull_env(launch.spec["image"], launch.team), **self.container_env(launch)}
        started = processes.spawn(self.argv(launch), env=env, cwd=launch.job_dir / "work", log=launch.log,
                                  result=launch.result)
        return started, {"container": container_name(launch.job_id, launch.generation, launch.attempt),
                         "oom_kills": _oom_kills(),
                         "memory_limit": int((launch.spec.get("resources") or {}).get("memory_bytes") or 0)}

    def started(self, pod: dict, job_dir: Path) -> Optional[dict]:
        try:
            cid = cidfile(job_dir, pod["attempt"]).read_text().strip()
        except OSError:
            return None
        return {"container_id": f"{self.name}://{cid}"} if cid else None

    def signal(self, pod: dict, job_dir: Path, sig: int) -> None:
        """Signal the container (the engine delivers it); before it exists, stop the engine's pull."""
        if self.started(pod, job_dir) is None:
            if pod.get("pgid"):
                processes.signal_group(pod["pgid"], sig)
            return
        subprocess.Popen([self.exe, *self.options, "kill", "--signal", signal.Signals(sig).name.removeprefix("SIG"),
                          pod["container"]], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)

    def inspect(self, name: str) -> Optional[dict]:
        try:
            out = subprocess.run([self.exe, *self.options, "inspect", "--format", "{{json .State}}", name],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0:
            return None
        try:
            state = json.loads(out.stdout.strip().splitlines()[0])
        except (ValueError, IndexError):
            return None
        return state if isinstance(state, dict) else None

    def remove(self, name: str) -> None:
        subprocess.Popen([self.exe, *self.options, "rm", "--force", name], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def ending(self, pod: dict, job_dir: Path, code: Optional[int], stopping: bool) -> Ending:
        """Refine the run's exit code with the engine's view: OOMKilled, could not start."""
        name = pod["container"]
        state = self.inspect(name)
        if state is None:
            return Ending(code)
        self.remove(name)
        if state.get("Running"):
            return Ending(code)
        exit_code = state.get("ExitCode") if isinstance(state.get("ExitCode"), int) else code
        if state.get("Error") or state.get("Status") in ("created", "configured"):  # it never started
            message = str(state.get("Error") or last_error(job_dir / f"attempt-{pod['attempt']}.log"))
            return Ending(START_ERROR_CODE, "StartError", message)
        killed = exit_code == 137 and (pod.get("memory_limit") or 0) > 0 and not stopping
        before, now = pod.get("oom_kills"), _oom_kills()
        if state.get("OOMKilled") or (killed and before is not None and now is not None and now > before):
            return Ending(exit_code, "OOMKilled", f"the container went over its memory limit ({pod['memory_limit']} bytes)")
        return Ending(exit_code)

    def pull_problem(self, pod: dict, job_dir: Path) -> Optional[tuple[str, str]]:
        if self.started(pod, job_dir) is not None:
            return None
        message = last_error(job_dir / f"attempt-{pod['attempt']}.log")
        return classify(message), message


def cidfile(job_dir: Path, attempt: int) -> Path:
    return job_dir / f"attempt-{attempt}.cid"
