"""`sentinels up`: NATS JetStream + every function + the router, as child processes.

Foreground: Ctrl-C (SIGINT) or SIGTERM stops every child cleanly. Background (`-d`):
the same supervisor in its own session, its pid in `$SENTINELS_HOME/run/up.pid`, and
`sentinels down` sends it SIGTERM. Children that die (nats-server included) are
restarted with a capped back-off that resets once a child stayed up for a minute; every
child gets SIGTERM from the kernel if the supervisor itself is killed (-9 included).

Start-up tells the truth: before anything starts, every port is checked free (a busy one
is named with its component) and, with the Kubernetes backend, the API server must
answer; then `up` returns only once every component answers its health check (the
functions on their ports, the router and the executor by `readiness`). A child that
dies meanwhile stops everything and `up` fails with one line naming it.
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from ..domain.errors import ConfigError
from ..settings import Settings
from ..adapters.jetstream import CREDENTIALS_ENV
from . import lifeline, natsauth, natsd, readiness, serve

PID_FILE = "up.pid"
FAILED = "sentinels up: "  # how the supervisor's one line of failure starts (in logs/up.log)
SERVICES = {"executor": "sentinels.embedded.executor", "router": "sentinels.embedded.router",
            "exporter": "sentinels.exporter"}
MLFLOW_PORT_OFFSET = 5  # the MLflow server listens on the submit port + 5
START_SECONDS = 120  # for the functions to answer: minutes on a loaded machine, not seconds


def full_mlflow() -> bool:
    """Whether the full `mlflow` package (the `mlflow` extra) is installed: its local store
    and server need SQLAlchemy and Flask, which the core's `mlflow-skinny` client lacks."""
    import importlib.util

    try:
        return all(importlib.util.find_spec(m) is not None for m in ("sqlalchemy", "flask", "alembic"))
    except (ImportError, ValueError):
        return False


NO_LOCAL_STORE = ("MLflow tracking is off: the local store needs the full mlflow package "
                  "(pip install 'sentinels[mlflow]'), or set MLFLOW_TRACKING_URI to an MLflow server")


def store_uri(settings: Settings) -> str:
    """The tracking store the stack uses: `none` when it is the local one and the full
    mlflow package is not installed (`check_config` says so in one line)."""
    uri = settings.mlflow_uri()
    return "none" if uri.startswith("sqlite:") and not full_mlflow() else uri


def mlflow_server_url(settings: Settings, env=None) -> str | None:
    """Where `up` serves MLflow (UI, tracking API, artifacts) when the tracking store is local,
    so that jobs in containers log to it over HTTP; None when the store is a server already
    (or tracking is off), or SENTINELS_MLFLOW_SERVER=off."""
    env = settings.env if env is None else env
    if not store_uri(settings).startswith("sqlite:") or env.get("SENTINELS_MLFLOW_SERVER", "on") in ("off", "0", "false"):
        return None
    return f"http://127.0.0.1:{settings.function_port(MLFLOW_PORT_OFFSET)}"


def running_info(settings: Settings) -> dict:
    """What the running stack wrote about itself (url, nats_url, mlflow_ui), or {}."""
    try:
        info = json.loads((settings.run_dir / PID_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) and pid_alive(int(info.get("pid") or 0)) else {}

HEALTHY_SECONDS = 60.0  # a child up this long starts its restart back-off from scratch
MAX_BACKOFF = 5.0


def backoff(restarts: int) -> float:
    """Seconds to wait before restart number `restarts` (1, 2, ...): 0.4, 0.8, ... capped."""
    return min(MAX_BACKOFF, 0.2 * 2 ** min(restarts, 5))


BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME", "PYTHONPATH",
            "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY",
            "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
TRACKING_ENV = ("MLFLOW_", "AWS_", "GOOGLE_", "AZURE_", "KUBECONFIG", "KUBERNETES_")
RUNTIME_ENV = ("DOCKER_", "CONTAINER_", "CONTAINERS_", "XDG_", "REGISTRY_AUTH_FILE", "PODMAN_", "BUILDAH_")
EXTRA_ENV = {"schedule": TRACKING_ENV, "on_job_event": TRACKING_ENV, "admin": TRACKING_ENV, "reader": TRACKING_ENV,
             "mlflow": TRACKING_ENV, "submit": ("KUBECONFIG", "KUBERNETES_"), "alert": ("SLACK_",),
             "executor": RUNTIME_ENV}
NEVER = ("SENTINELS_TOKEN", CREDENTIALS_ENV)  # the CLI user's admin token stays with the CLI


def child_env(name: str, env) -> dict:
    """The part of the supervisor's environment one child needs: the basics, SENTINELS_*,
    and by function MLflow/cloud/Kubernetes (schedule, on_job_event) or Slack (alert).
    A job reading /proc/<pid>/environ of a function finds no token it does not need."""
    extra = EXTRA_ENV.get(name, ())
    return {k: v for k, v in env.items() if k not in NEVER and (
        k in BASE_ENV or k.startswith("SENTINELS_") or any(k.startswith(p) for p in extra))}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def running_pid(settings: Settings) -> int | None:
    path = settings.run_dir / PID_FILE
    try:
        pid = int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    return pid if pid_alive(pid) else None


def healthy(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/", timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def answers(url: str, timeout: float = 3.0) -> bool:
    """Whether an HTTP server answers at `url` at all (an internal function refuses a GET
    it cannot take, which still says that it serves)."""
    import urllib.error

    try:
        with urllib.request.urlopen(url + "/", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except Exception:
        return False


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on (or holds) `port`; SO_REUSEADDR as the servers bind,
    so a socket of a stopped stack in TIME_WAIT does not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def last_line(path) -> str:
    """The last non-empty line of a log file ("" when there is none)."""
    try:
        lines = [ln.strip() for ln in open(path, errors="replace").read()[-4096:].splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def local_runtime(settings: Settings):
    """The runtime local jobs get (`local.runtime`); ConfigError when a named engine is absent."""
    from . import runtimes

    return runtimes.select(runtimes.RuntimeConfig.from_dict(settings.local(), settings.env, settings.registries()))


PRIVATE = ("logs", "run", "jetstream", "mlflow", natsauth.SECRETS_DIR)  # the stack's own, closed to jobs


def protect_home(settings: Settings) -> list[str]:
    """Close what a job must not read: `$SENTINELS_HOME` can at most be passed through (a
    job reaches its own directory under `jobs/`, which its SENTINELS_CONFIG names) but not
    listed, the stack's own folders are 0700, and the tokens file and config.yaml (it may
    hold a `token:`), when ours and readable by others, become 0600. Returns what it
    changed, to say at start."""
    notes = []
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    mine = os.geteuid()
    if home.stat().st_uid == mine:
        os.chmod(home, home.stat().st_mode & 0o7711)  # no reading or writing by others
    for name in PRIVATE:
        (home / name).mkdir(mode=0o700, exist_ok=True)
        os.chmod(home / name, 0o700)
    for what, path in (("tokens file", settings.tokens_file()), ("configuration", home / "config.yaml")):
        try:
            st = path.stat() if path is not None else None
        except OSError:
            st = None
        if path is not None and st is not None and st.st_mode & 0o077 and st.st_uid == mine:
            os.chmod(path, 0o600)
            notes.append(f"{what} {path}: was readable by others; now mode 0600")
    return notes


def check_config(settings: Settings) -> list[str]:
    """Parse every server-side section and file now; raise ConfigError on the first bad one."""
    from ..auth import hash_at_rest
    from ..adapters import slack

    settings.validate()
    notes = []
    if settings.backend() == "local":
        from . import machine

        machine.capacity(settings.local(), settings.home / "jobs")
        notes.append(f"runtime: {local_runtime(settings).describe()}")
    from .router import retry_settings

    retry_settings(settings)
    notes += settings.registry_notes()
    notify = settings.notify()
    ids = settings.identities()
    notes += protect_home(settings)
    try:
        hashed = hash_at_rest(settings.tokens_file())
    except OSError as e:
        notes.append(f"tokens file {settings.tokens_file()}: could not replace its plaintext tokens by hashes "
                     f"({e.strerror}); keep it readable by the stack's user only")
    else:
        if hashed:
            notes.append(f"tokens file {settings.tokens_file()}: {hashed} plaintext token(s) replaced by their SHA-256")
    if store_uri(settings) != settings.mlflow_uri():
        notes.append(NO_LOCAL_STORE)
    if ids.single_user:
        notes.append(f"single-user mode: no tokens file configured, every request acts as {ids.local['user']} (admin)")
    notifier = slack.start(settings.slack_env(), notify.default_channel, strict=True)  # invalid_auth: a clear error now
    notes.append(f"notifications: {notifier.describe()}")
    return notes


class Supervisor:
    def __init__(self, settings: Settings):
        self.s = settings
        self.logs = settings.home / "logs"
        self.children: dict[str, subprocess.Popen] = {}
        self.started: dict[str, float] = {}  # name -> monotonic time of its last start
        self.stopping = False
        self.runtime = local_runtime(settings).name if settings.backend() == "local" else None
        self.store_uri = store_uri(settings)
        self.mlflow_url = mlflow_server_url(settings)

    def env(self, user: str = "admin") -> dict:
        """A child's environment: only what that child needs (`child_env`), with the NATS
        credentials of `user` (see `natsauth`) and the path of the stack's internal token."""
        login = {CREDENTIALS_ENV: str(natsauth.credentials_file(self.s.home, user))} if user in natsauth.USERS else {}
        return {**child_env(user, os.environ), "SENTINELS_HOME": str(self.s.home), "SENTINELS_URL": self.s.url,
                "SENTINELS_NATS_URL": self.s.nats_url, "MLFLOW_TRACKING_URI": self.mlflow_url or self.store_uri,
                "PYTHONUNBUFFERED": "1", **({"SENTINELS_RUNTIME": self.runtime} if self.runtime else {}), **login,
                natsauth.INTERNAL_TOKEN_ENV: str(natsauth.internal_token(self.s.home))}

    def spawn(self, name: str) -> subprocess.Popen:
        if name in SERVICES:
            cmd = [sys.executable, "-m", SERVICES[name]]
        elif name == "mlflow":
            cmd = self.mlflow_command()
        else:
            offset = serve.FUNCTIONS[name][2]
            cmd = [sys.executable, "-m", "sentinels.embedded.serve", name, str(self.s.function_port(offset))]
        out = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env(name),
                                start_new_session=name == "mlflow",  # stopped with its workers, as a group
                                preexec_fn=lifeline.preexec())
        self.children[name] = proc
        self.started[name] = time.monotonic()
        return proc

    def start_nats(self) -> subprocess.Popen:
        proc = natsd.start(self.s.home / "jetstream", self.s.nats_port(), self.logs / "nats.log",
                           sync=self.s.nats_sync(), preexec_fn=lifeline.preexec(),
                           auth=natsauth.config_block(natsauth.ensure(self.s.home)))
        self.children["nats"] = proc
        self.started["nats"] = time.monotonic()
        return proc

    def restart(self, name: str) -> None:
        if name == "nats":
            self.start_nats()
        else:
            self.spawn(name)

    def ports(self) -> list[tuple[str, int]]:
        """Every port this stack listens on, with the component that does."""
        out = [("nats-server", self.s.nats_port())]
        out += [(name, self.s.function_port(serve.FUNCTIONS[name][2])) for name in serve.available()]
        out.append(("exporter", self.exporter_address()[1]))
        if self.mlflow_url:
            out.append(("mlflow", self.s.function_port(MLFLOW_PORT_OFFSET)))
        return out

    def exporter_address(self) -> tuple[str, int]:
        return self.s.metrics_address()

    def preflight(self) -> None:
        """What would make the start a lie, checked before anything starts (ConfigError)."""
        for component, port in self.ports():
            if port_taken(port):
                raise ConfigError(f"port {port} ({component}) is in use: another program or sentinels stack "
                                  "listens there; stop it, or choose free ports with SENTINELS_URL / SENTINELS_NATS_URL")
        if self.s.backend() == "kubernetes":
            from ..adapters.kube_manifest import KubeConfig
            from ..adapters.kubernetes import KubernetesCluster
            from ..domain.errors import SentinelsError

            cluster = KubernetesCluster(KubeConfig.from_dict(self.s.section("kubernetes")), informer=False)
            try:
                asyncio.run(cluster.check_reachable())
            except SentinelsError as e:
                raise ConfigError(f"SENTINELS_BACKEND=kubernetes: {e.message}") from None

    def start(self) -> None:
        for d in (self.s.home, self.logs, self.s.run_dir, self.s.home / "jobs"):
            d.mkdir(parents=True, exist_ok=True)
        self.preflight()
        try:
            self._start()
        except BaseException:
            self.stop()  # nothing stays running after a failed start
            raise

    def _start(self) -> None:
        init = self.init_mlflow()
        if init is not None:
            self.children["mlflow-init"] = init  # stopped with the rest if the start fails
        self.start_nats()
        asyncio.run(self._ensure_streams())
        # one process creates a local MLflow store before the functions open it: two
        # processes migrating the same new sqlite file at once can leave it broken
        if init is not None:
            code = init.wait()
            del self.children["mlflow-init"]
            if code != 0:
                print(f"sentinels: the MLflow store {self.store_uri} could not be prepared; runs will catch up "
                      "when it answers (see logs/mlflow-init.log)", file=sys.stderr, flush=True)
        for name in ("executor", "router"):
            readiness.clear(self.s.home, name)
        if self.s.backend() == "local":
            self.spawn("executor")
        for name in serve.available():
            if name != "submit":
                self.spawn(name)
        self.spawn("router")
        self.spawn("exporter")  # Prometheus metrics on the submit port + 4
        self.await_health()
        if "submit" in serve.available():  # last: once the API answers, everything behind it does
            self.spawn("submit")
            self.await_health()
        if self.mlflow_url:  # started last, not awaited (it is slow to start): runs catch up once it answers
            self.spawn("mlflow")
        (self.s.run_dir / PID_FILE).write_text(json.dumps({"pid": os.getpid(), "url": self.s.url,
                                                            "nats_url": self.s.nats_url, "mlflow_ui": self.mlflow_url}))

    def unhealthy(self) -> list[str]:
        """The components that do not answer their health check yet."""
        out = []
        for name, proc in self.children.items():
            if name == "submit":
                ok = healthy(self.s.url)  # 200 only when JetStream answers it too
            elif name in serve.FUNCTIONS:
                ok = answers(f"http://127.0.0.1:{self.s.function_port(serve.FUNCTIONS[name][2])}")
            elif name == "exporter":
                host, port = self.exporter_address()
                ok = answers(f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}")
            elif name in SERVICES:
                ok = readiness.ready(self.s.home, name, proc.pid)
            else:
                ok = True  # nats-server answered before anything else started
            if not ok:
                out.append(name)
        return out

    def await_health(self, timeout: float = START_SECONDS) -> None:
        """Return once every component answers; ConfigError naming the first that died, or
        the ones still silent at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            for name, proc in self.children.items():
                if proc.poll() is not None:
                    why = last_line(self.logs / ("nats.log" if name == "nats" else f"{name}.log"))
                    raise ConfigError(f"{name} exited during start-up (code {proc.returncode})"
                                      + (f": {why}" if why else "") + f"; see {self.logs / (name + '.log')}")
            silent = self.unhealthy()
            if not silent:
                return
            if time.monotonic() > deadline:
                raise ConfigError(f"{', '.join(silent)} did not answer within {timeout:.0f} s; see {self.logs}")
            time.sleep(0.1)

    def mlflow_command(self) -> list[str]:
        """`mlflow server` of the installed package on the local store, serving artifacts."""
        artifacts = self.s.home / "mlflow" / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        port = self.s.function_port(MLFLOW_PORT_OFFSET)
        return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.store_uri,
                "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1"]

    def init_mlflow(self) -> subprocess.Popen | None:
        """Create a local MLflow store once, before the functions race to create its tables."""
        uri = self.store_uri
        if not uri.startswith("sqlite:"):  # a server (or `none`) needs no preparing
            return None
        code = ("import sys; from sentinels.adapters.mlflow_tracker import MlflowTracker, fail_fast_defaults; "
                "fail_fast_defaults(); MlflowTracker(sys.argv[1]).warm()")
        return subprocess.Popen([sys.executable, "-c", code, uri], env=self.env("reader"),
                                stdout=open(self.logs / "mlflow-init.log", "ab"), stderr=subprocess.STDOUT)

    async def _ensure_streams(self) -> None:
        from ..adapters import jetstream

        nc = await jetstream.connect(self.s.nats_url, "sentinels-up",
                                     login=jetstream.credentials(str(natsauth.credentials_file(self.s.home, "admin"))))
        try:
            js = nc.jetstream()
            await jetstream.ensure(js)
            await jetstream.JetStreamSentLog.open(js)  # the alert function may only write into it
        finally:
            await nc.close()

    def watch(self) -> None:
        """Restart children that die (each on its own back-off), until asked to stop."""
        restarts: dict[str, int] = {}
        due: dict[str, float] = {}  # name -> when to restart it
        while not self.stopping:
            now = time.monotonic()
            for name, proc in list(self.children.items()):
                if self.stopping or name in due or proc.poll() is None:
                    continue
                if now - self.started.get(name, now) >= HEALTHY_SECONDS:
                    restarts[name] = 0  # it was healthy for a while: this is a new incident
                n = restarts[name] = restarts.get(name, 0) + 1
                print(f"sentinels: {name} exited ({proc.returncode}); restart #{n}", file=sys.stderr, flush=True)
                due[name] = now + backoff(n)
            for name, when in list(due.items()):
                if self.stopping or time.monotonic() < when:
                    continue
                del due[name]
                try:
                    self.restart(name)
                except ConfigError as e:  # e.g. the port is still taken: try again later
                    print(f"sentinels: {name} did not restart: {e.message}", file=sys.stderr, flush=True)
                    self.started[name] = time.monotonic()
            time.sleep(0.2)

    def stop(self, *_):
        self.stopping = True
        order = [n for n in self.children if n != "nats"] + (["nats"] if "nats" in self.children else [])
        for name in order:
            proc = self.children[name]
            if proc.poll() is None and name == "mlflow":
                os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
            elif proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            (self.s.run_dir / PID_FILE).unlink()
        except FileNotFoundError:
            pass


def run_foreground(settings: Settings, announce=print) -> int:
    sup = Supervisor(settings)
    stop = lambda *_: setattr(sup, "stopping", True)  # noqa: E731
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    sup.start()
    announce(f"sentinels up: submit at {settings.url}, JetStream at {settings.nats_url}, data in {settings.home}"
             + (f", MLflow UI at {sup.mlflow_url}" if sup.mlflow_url else ""))
    try:
        sup.watch()
    finally:
        sup.stop()
        announce("sentinels: stopped")
    return 0


def main() -> None:
    settings = Settings.load()
    try:
        for note in check_config(settings):
            print(f"sentinels: {note}", flush=True)
        sys.exit(run_foreground(settings, lambda m: print(m, flush=True)))
    except ConfigError as e:
        print(f"{FAILED}{e.message}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()


def start_background(settings: Settings, timeout: float = START_SECONDS + 30) -> int:
    """Start the supervisor detached; return its pid once the submit function answers."""
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "logs").mkdir(exist_ok=True)
    log = settings.home / "logs" / "up.log"
    env = {**os.environ, "SENTINELS_HOME": str(settings.home), "SENTINELS_URL": settings.url,
           "SENTINELS_NATS_URL": settings.nats_url}
    proc = subprocess.Popen([sys.executable, "-m", "sentinels.embedded.supervisor"], stdin=subprocess.DEVNULL,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    start = log.stat().st_size if log.exists() else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(_failure(log, start) or f"the embedded default exited (code {proc.returncode}); see {log}")
        if running_pid(settings) == proc.pid and healthy(settings.url):
            return proc.pid
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    raise ConfigError(f"the embedded default did not answer at {settings.url} within {timeout:.0f} s; see {log}")


def _failure(log, start: int) -> str:
    """The one line a failed supervisor gave as its reason (`sentinels up: ...`) in this start's part of up.log."""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    said = [ln[len(FAILED):] for ln in text.splitlines() if ln.startswith(FAILED)]
    return said[-1] if said else ""


def stop_background(settings: Settings, timeout: float = 30) -> bool:
    pid = running_pid(settings)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)
    return True
