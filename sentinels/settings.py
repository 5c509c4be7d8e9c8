"""The one configuration module: flags, then environment, then `$SENTINELS_HOME/config.yaml`.

Every `config.yaml` section is parsed here into a typed object (once per process, then
kept), `validate()` parses them all so `sentinels up` refuses a bad file before anything
starts, and every environment variable the code base reads is read here (`self.env`).
The same variables tell `sentinels up` where to listen and the CLI where to connect, so
several stacks can run side by side.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from .domain import duration
from .domain.errors import ConfigError

TYPE_CHECKING = False  # the CLI reads its URL and token here: no typing or dataclasses at run time
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping, Optional, TypeVar

    from .domain.spec import Limits

    T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
CONFIG_KEYS = {"url", "nats_url", "token", "priorities", "tokens_file", "limits", "data_roots",
               "mlflow_tracking_uri", "user", "notify", "local", "backend", "scheduler", "lifecycle",
               "kubernetes", "nats_sync", "quotas", "fair_share", "preemption", "builds", "nats_replicas", "events",
               "reads", "retention", "sweeps", "registries", "demand", "logs", "prometheus_url"}


def _load_yaml_file(path: Path, what: str, max_bytes: int = 1 << 20):
    from . import yamlfile

    try:
        text = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot read ({e.strerror})") from None
    if len(text) > max_bytes:
        raise ConfigError(f"{what} {path}: larger than {max_bytes} bytes")
    try:
        return yamlfile.parse(text, f"{what} {path}")
    except yamlfile.YamlError as e:
        raise ConfigError(e.message) from None


class Settings:
    """Where things are (home, URLs, token), the config file's sections, the environment.

    A plain class rather than a dataclass: every CLI command loads it, and importing
    dataclasses costs a tenth of a command's start-up."""

    def __init__(self, home: Path, url: str = DEFAULT_URL, nats_url: str = DEFAULT_NATS_URL,
                 token: str | None = None, file: dict | None = None, env: Mapping[str, str] | None = None):
        self.home = home
        self.url = url
        self.nats_url = nats_url
        self.token = token
        self.file: dict = {} if file is None else file
        self.env: Mapping[str, str] = os.environ if env is None else env
        self._parsed: dict = {}

    def __repr__(self) -> str:
        return f"Settings(home={self.home!r}, url={self.url!r}, nats_url={self.nats_url!r})"

    def _once(self, key: str, parse: Callable[[], T]) -> T:
        """Parse a section the first time it is asked for; keep the typed result."""
        if key not in self._parsed:
            self._parsed[key] = parse()
        return self._parsed[key]

    @classmethod
    def load(cls, env=None, **flags) -> "Settings":
        env = os.environ if env is None else env
        home = Path(flags.get("home") or env.get("SENTINELS_HOME") or Path.home() / ".sentinels").expanduser()
        cfg_path = home / "config.yaml"
        file: dict = {}
        if cfg_path.exists():
            file = _load_yaml_file(cfg_path, "configuration") or {}
            if not isinstance(file, dict):
                raise ConfigError(f"configuration {cfg_path}: expected a mapping")
            unknown = set(file) - CONFIG_KEYS
            if unknown:
                raise ConfigError(f"configuration {cfg_path}: unknown key(s) {', '.join(sorted(unknown))} "
                                  f"(known: {', '.join(sorted(CONFIG_KEYS))})")

        def pick(flag, var, key, default=None):
            return flags.get(flag) or env.get(var) or file.get(key) or default

        return cls(home=home, url=pick("url", "SENTINELS_URL", "url", DEFAULT_URL).rstrip("/"),
                   nats_url=pick("nats_url", "SENTINELS_NATS_URL", "nats_url", DEFAULT_NATS_URL),
                   token=pick("token", "SENTINELS_TOKEN", "token"), file=file, env=env)

    # --- where the embedded default listens -------------------------------------------
    def port(self) -> int:
        return urlparse(self.url).port or 80

    def nats_port(self) -> int:
        return urlparse(self.nats_url).port or 4222

    def function_port(self, offset: int) -> int:
        """Internal functions listen on the submit port + offset (1 schedule, 2 on_job_event, 3 alert)."""
        return self.port() + offset

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    # --- server-side configuration: each section parsed once into its typed object ----------
    def validate(self) -> None:
        """Parse every server-side section now; raise ConfigError on the first bad one.

        The `local:` block is the executor's (`embedded.machine.capacity`), checked with it."""
        self.priorities()
        self.limits()
        self.backend()
        self.scheduler()
        self.lifecycle()
        self.sharing()
        self.builds()
        self.notify()
        self.identities()
        self.read_rules()
        self.retention()
        self.sweep_max()
        self.registries()
        self.placeholders()
        if self.backend() == "kubernetes":
            self.kubernetes()
        self.tick()

    def priorities(self):
        from .domain.priority import PriorityConfig

        def parse():
            ref = self.env.get("SENTINELS_PRIORITIES") or self.file.get("priorities")
            if isinstance(ref, str):
                return PriorityConfig.from_dict(_load_yaml_file(Path(ref).expanduser(), "priority configuration"))
            return PriorityConfig.from_dict(ref)
        return self._once("priorities", parse)

    def tokens_file(self) -> Path | None:
        ref = self.env.get("SENTINELS_TOKENS_FILE") or self.file.get("tokens_file")
        return Path(ref).expanduser() if ref else None

    def identities(self):
        """Who may do what: the tokens file, or single-user mode as `user` (default: the login)."""
        from .auth import Identities

        return self._once("identities", lambda: Identities.load(self.tokens_file(), self.file.get("user"),
                                                                self.priorities().roles))

    def user(self) -> Optional[str]:
        """Who the CLI acts as when it needs a name (`ls` shows this user's jobs)."""
        return self.env.get("SENTINELS_USER") or self.file.get("user")

    def limits(self) -> "Limits":
        return self._once("limits", self._limits)

    def _limits(self) -> "Limits":
        from .domain import quantity
        from .domain.spec import Limits

        raw = self.file.get("limits") or {}
        if not isinstance(raw, dict):
            raise ConfigError("configuration: limits must be a mapping (cpu, memory, gpu, timeout, retries)")
        env_roots = self.env.get("SENTINELS_DATA_ROOTS")
        roots = env_roots.split(":") if env_roots else self.file.get("data_roots") or ["/datasets", str(self.home / "data")]
        # the process runtime (what `up` resolved, else the default) has no image entrypoint
        local = self.backend() == "local" and self.runtime() in (None, "process")
        try:
            base = Limits()
            return Limits(
                cpu_millis=quantity.cpu_millis(raw["cpu"], "limits.cpu") if "cpu" in raw else base.cpu_millis,
                memory_bytes=quantity.memory_bytes(raw["memory"], "limits.memory") if "memory" in raw else base.memory_bytes,
                gpu=int(raw.get("gpu", base.gpu)),
                timeout_seconds=duration.seconds(raw["timeout"], "limits.timeout") if "timeout" in raw else base.timeout_seconds,
                retries=int(raw.get("retries", base.retries)),
                data_roots=tuple(str(r).rstrip("/") or "/" for r in roots),
                command_required=local,
            )
        except Exception as e:  # a bad limits block is a start-up error, never a first-use one
            raise ConfigError(f"configuration: bad limits ({getattr(e, 'message', e)})") from None

    def nats_replicas(self) -> int:
        """Replicas of the streams and KV buckets the functions create (3 on the chart's NATS cluster)."""
        raw = self.file.get("nats_replicas", 1)
        if isinstance(raw, bool) or raw not in (1, 3, 5):
            raise ConfigError(f"configuration: nats_replicas must be 1, 3 or 5, not {raw!r}")
        return raw

    def backend(self) -> str:
        name = self.env.get("SENTINELS_BACKEND") or self.file.get("backend") or "local"
        if name not in ("local", "kubernetes"):
            raise ConfigError(f"configuration: backend must be local or kubernetes, not {name!r}")
        return name

    def sharing(self):
        """Quotas, fair share and preemption (`quotas:`, `fair_share:`, `preemption:`), checked together."""
        from .domain.sharing import Sharing

        return self._once("sharing", lambda: Sharing.from_dict(self.file.get("quotas"), self.file.get("fair_share"),
                                                               self.file.get("preemption"), self.priorities()))

    def builds(self):
        """The `builds:` block: Dockerfile builds (concurrency, context size, deadline, registry)."""
        from .domain.build import BuildConfig

        return self._once("builds", lambda: BuildConfig.from_dict(self.section("builds")))

    def placeholders(self):
        """`demand.placeholders`: placeholder pods for queued demand (Kubernetes; off by default)."""
        from .domain.demand import PlaceholderConfig

        return self._once("placeholders", lambda: PlaceholderConfig.from_dict(self.file.get("demand")))

    def section(self, key: str) -> dict:
        raw = self.file.get(key) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"configuration: {key} must be a mapping")
        return raw

    def scheduler(self):
        from .domain.scheduler_config import SchedulerConfig

        return self._once("scheduler", lambda: SchedulerConfig.from_dict(self.section("scheduler")))

    def tick(self) -> float:
        """Seconds between the embedded timer's events: SENTINELS_TICK, else `scheduler.tick`."""
        raw = self.env.get("SENTINELS_TICK")
        if not raw:
            return self.scheduler().tick_seconds
        try:
            value = float(raw)
        except ValueError:
            value = 0.0
        if value <= 0:
            raise ConfigError(f"SENTINELS_TICK must be a number of seconds above 0, not {raw!r}")
        return value

    def lifecycle(self):
        from .domain.lifecycle import LifecycleConfig

        return self._once("lifecycle", lambda: LifecycleConfig.from_dict(self.section("lifecycle")))

    def kubernetes(self):
        """The `kubernetes:` block, with the imagePullSecret of each registry (`registries:`)."""
        from dataclasses import replace

        from .adapters.kube_manifest import KubeConfig

        return self._once("kubernetes", lambda: replace(KubeConfig.from_dict(self.section("kubernetes")),
                                                        registries=self.registries()))

    def registries(self):
        """Registry credentials by host (`registries:`, SENTINELS_REGISTRY_AUTH): every auth file
        named is read and parsed now, so a bad one stops start-up with its key named."""
        return self._once("registries", self._registries)

    def _registries(self):
        from dataclasses import replace

        from .domain import registries

        default = self.env.get("SENTINELS_REGISTRY_AUTH") or None
        regs = registries.Registries.from_dict(self.file.get("registries"),
                                               str(Path(default).expanduser()) if default else None)
        regs = replace(regs, entries=tuple(replace(e, auth_file=str(Path(e.auth_file).expanduser())) if e.auth_file
                                           else e for e in regs.entries))
        for path, hosts in regs.auth_files().items():
            where = "SENTINELS_REGISTRY_AUTH " + path if path == regs.default_auth_file and not hosts else \
                f"registries.{hosts[0]}.auth_file {path}"
            try:
                text = Path(path).read_text(encoding="utf-8", errors="replace")
            except OSError as e:
                raise ConfigError(f"configuration: {where}: cannot read ({e.strerror})") from None
            held = registries.auth_hosts(text, f"configuration: {where}")
            missing = [h for h in hosts if h not in held]
            if missing:
                raise ConfigError(f"configuration: registries.{missing[0]}.auth_file {path}: holds no credentials "
                                  f"for {missing[0]}")
        return regs

    def registry_notes(self) -> list[str]:
        """What `sentinels up` says about registry credentials: which hosts, and auth files
        other users can read (never their content)."""
        regs = self.registries()
        notes = []
        if regs.entries or regs.default_auth_file:
            hosts = ", ".join(e.host for e in regs.entries) or "none by host"
            notes.append(f"registry credentials: {hosts}"
                         + (f"; other hosts from {regs.default_auth_file}" if regs.default_auth_file else ""))
        for path in regs.auth_files():
            try:
                mode = Path(path).stat().st_mode & 0o777
            except OSError:
                continue
            if mode & 0o044:
                notes.append(f"warning: the registry auth file {path} is readable by other users (mode {mode:04o}); "
                             f"chmod 600 {path}")
        return notes

    def local(self) -> dict:
        """The raw `local:` block; the executor turns it into what this machine offers."""
        return self.file.get("local") or {}

    def notify(self, env=None):
        """The `notify:` block (a mapping, or a path to a YAML file; SENTINELS_NOTIFY names a
        file that wins); SLACK_CHANNEL overrides the default channel."""
        from .domain import notify

        def parse():
            e = self.env if env is None else env
            raw = e.get("SENTINELS_NOTIFY") or self.file.get("notify")
            if isinstance(raw, str):
                raw = _load_yaml_file(Path(raw).expanduser(), "notify configuration")
            if e.get("SLACK_CHANNEL"):
                if raw is not None and not isinstance(raw, dict):
                    raise ConfigError("notify configuration: expected a mapping")
                raw = dict(raw or {}, default_channel=e["SLACK_CHANNEL"])
            return notify.NotifyConfig.from_dict(raw)
        return parse() if env is not None else self._once("notify", parse)

    def slack_env(self) -> dict[str, str]:
        """The Slack credentials (SLACK_BOT_TOKEN + SLACK_API_URL, or SLACK_WEBHOOK_URL)."""
        return {k: self.env[k] for k in ("SLACK_BOT_TOKEN", "SLACK_API_URL", "SLACK_WEBHOOK_URL") if self.env.get(k)}

    def runtime(self) -> Optional[str]:
        """The local runtime `sentinels up` chose for its children (SENTINELS_RUNTIME), if any."""
        return self.env.get("SENTINELS_RUNTIME") or None

    def read_rules(self):
        from .domain.reads import ReadRules

        return ReadRules.from_dict(self.section("reads"))

    def retention(self) -> tuple[float, float]:
        """(seconds a finished record stays in the jobs bucket, seconds of SENTINELS_HISTORY)."""
        raw = self.section("retention")
        unknown = set(raw) - {"finished", "history"}
        if unknown:
            raise ConfigError(f"configuration: retention takes finished and history, not {', '.join(sorted(unknown))}")
        try:
            finished = duration.seconds(raw.get("finished", "30d"), "retention.finished")
            history = duration.seconds(raw.get("history", "365d"), "retention.history")
        except Exception as e:
            raise ConfigError(f"configuration: bad retention ({getattr(e, 'message', e)})") from None
        if finished < 60 or history < finished:
            raise ConfigError("configuration: retention.finished must be at least 1m and history at least as long")
        return finished, history

    def sweep_max(self) -> int:
        raw = self.section("sweeps")
        if set(raw) - {"max_size"}:
            raise ConfigError("configuration: sweeps takes one key, max_size")
        size = raw.get("max_size", 1000)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigError(f"configuration: sweeps.max_size must be a positive whole number, not {size!r}")
        return size

    def elasticsearch(self, env=None) -> dict | None:
        """Where job logs are searched first: `logs: {elasticsearch: URL, index: PATTERN}` or
        SENTINELS_ELASTICSEARCH_URL (+ SENTINELS_ELASTICSEARCH_API_KEY); None when unset."""
        env = self.env if env is None else env
        logs = self.section("logs")
        unknown = set(logs) - {"elasticsearch", "index"}
        if unknown:
            raise ConfigError(f"configuration: logs: unknown key(s) {', '.join(sorted(unknown))} (known: elasticsearch, index)")
        url = env.get("SENTINELS_ELASTICSEARCH_URL") or logs.get("elasticsearch")
        if not url:
            return None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"configuration: logs.elasticsearch must be an http(s) URL, got {url!r}")
        return {"url": url, "index": str(logs.get("index") or "sentinels-logs-*"),
                "api_key": env.get("SENTINELS_ELASTICSEARCH_API_KEY")}

    def prometheus_url(self) -> Optional[str]:
        """Where `sentinels top` asks for usage on Kubernetes (SENTINELS_PROMETHEUS_URL or prometheus_url)."""
        return self.env.get("SENTINELS_PROMETHEUS_URL") or self.file.get("prometheus_url") or None

    def metrics_listen(self) -> Optional[str]:
        """SENTINELS_METRICS_LISTEN (host:port) for the exporter; None: loopback, submit port + 4."""
        return self.env.get("SENTINELS_METRICS_LISTEN") or None

    def metrics_address(self) -> tuple[str, int]:
        """Where the exporter listens: `SENTINELS_METRICS_LISTEN` (host:port; the chart sets
        0.0.0.0:9464), else loopback on the submit port + 4."""
        raw = self.metrics_listen()
        if raw:
            host, _, port = raw.rpartition(":")
            if not port.isdigit():
                raise ConfigError(f"SENTINELS_METRICS_LISTEN must be host:port, got {raw!r}")
            return host or "0.0.0.0", int(port)
        return "127.0.0.1", self.function_port(4)

    def mlflow_uri(self) -> str:
        return (self.env.get("MLFLOW_TRACKING_URI") or self.file.get("mlflow_tracking_uri")
                or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}")

    # --- wiring ------------------------------------------------------------------------------
    def broker_url(self) -> Optional[str]:
        """Knative: where follow-up events go (K_SINK from a SinkBinding, or SENTINELS_BROKER_URL)."""
        return self.env.get("K_SINK") or self.env.get("SENTINELS_BROKER_URL") or None

    def jetstream_domain(self) -> Optional[str]:
        """The JetStream domain to use (SENTINELS_JETSTREAM_DOMAIN), for a leaf-node setup; None: the local one."""
        return self.env.get("SENTINELS_JETSTREAM_DOMAIN") or None

    def knative_dir(self) -> Optional[Path]:
        """Where the Trigger manifests are read from (SENTINELS_KNATIVE_DIR; default: the repo's)."""
        here = self.env.get("SENTINELS_KNATIVE_DIR")
        return Path(here) if here else None

    def nats_sync(self) -> Optional[str]:
        """How often the embedded nats-server syncs to disk (`nats_sync`, SENTINELS_NATS_SYNC)."""
        return str(self.file.get("nats_sync") or "") or self.env.get("SENTINELS_NATS_SYNC") or None
