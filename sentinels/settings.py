"""Configuration: flags, then environment, then `$SENTINELS_HOME/config.yaml` (DESIGN §8).

The same variables tell `sentinels up` where to listen and the CLI where to connect, so
several stacks can run side by side. Server-side files (priorities, tokens) are parsed
here at start so a bad file stops start-up with a clear message.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .domain import quantity, duration
from .domain.errors import ConfigError
from .domain.spec import Limits

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
CONFIG_KEYS = {"url", "nats_url", "token", "priorities", "tokens_file", "limits", "data_roots",
               "mlflow_tracking_uri", "user", "notify", "local", "backend", "scheduler", "lifecycle",
               "kubernetes", "nats_sync", "quotas", "fair_share", "preemption", "builds"}


def _load_yaml_file(path: Path, what: str, max_bytes: int = 1 << 20):
    import yaml

    try:
        text = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot read ({e.strerror})") from None
    if len(text) > max_bytes:
        raise ConfigError(f"{what} {path}: larger than {max_bytes} bytes")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path}: not valid YAML ({str(e).splitlines()[0]})") from None


@dataclass
class Settings:
    home: Path
    url: str = DEFAULT_URL
    nats_url: str = DEFAULT_NATS_URL
    token: str | None = None
    file: dict = field(default_factory=dict)

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
                   token=pick("token", "SENTINELS_TOKEN", "token"), file=file)

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

    # --- server-side configuration ----------------------------------------------------
    def priorities(self):
        from .domain.priority import PriorityConfig

        ref = os.environ.get("SENTINELS_PRIORITIES") or self.file.get("priorities")
        if isinstance(ref, str):
            return PriorityConfig.from_dict(_load_yaml_file(Path(ref).expanduser(), "priority configuration"))
        return PriorityConfig.from_dict(ref)

    def tokens_file(self) -> Path | None:
        ref = os.environ.get("SENTINELS_TOKENS_FILE") or self.file.get("tokens_file")
        return Path(ref).expanduser() if ref else None

    def limits(self) -> Limits:
        raw = self.file.get("limits") or {}
        if not isinstance(raw, dict):
            raise ConfigError("configuration: limits must be a mapping (cpu, memory, gpu, timeout, retries)")
        env_roots = os.environ.get("SENTINELS_DATA_ROOTS")
        roots = env_roots.split(":") if env_roots else self.file.get("data_roots") or ["/datasets", str(self.home / "data")]
        try:
            base = Limits()
            return Limits(
                cpu_millis=quantity.cpu_millis(raw["cpu"], "limits.cpu") if "cpu" in raw else base.cpu_millis,
                memory_bytes=quantity.memory_bytes(raw["memory"], "limits.memory") if "memory" in raw else base.memory_bytes,
                gpu=int(raw.get("gpu", base.gpu)),
                timeout_seconds=duration.seconds(raw["timeout"], "limits.timeout") if "timeout" in raw else base.timeout_seconds,
                retries=int(raw.get("retries", base.retries)),
                data_roots=tuple(str(r).rstrip("/") or "/" for r in roots),
            )
        except Exception as e:  # a bad limits block is a start-up error, never a first-use one
            raise ConfigError(f"configuration: bad limits ({getattr(e, 'message', e)})") from None

    def backend(self) -> str:
        name = os.environ.get("SENTINELS_BACKEND") or self.file.get("backend") or "local"
        if name not in ("local", "kubernetes"):
            raise ConfigError(f"configuration: backend must be local or kubernetes, not {name!r}")
        return name

    def scheduler(self):
        from .domain.scheduler_config import SchedulerConfig

        return SchedulerConfig.from_dict(self.section("scheduler"))

    def lifecycle(self):
        from .domain.lifecycle import LifecycleConfig

        return LifecycleConfig.from_dict(self.section("lifecycle"))

    def sharing(self):
        """Quotas, fair share and preemption (`quotas:`, `fair_share:`, `preemption:`), checked together."""
        from .domain.sharing import Sharing

        return Sharing.from_dict(self.file.get("quotas"), self.file.get("fair_share"), self.file.get("preemption"),
                                 self.priorities())

    def builds(self):
        """The `builds:` block: Dockerfile builds (concurrency, context size, deadline, registry)."""
        from .domain.build import BuildConfig

        return BuildConfig.from_dict(self.section("builds"))

    def section(self, key: str) -> dict:
        raw = self.file.get(key) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"configuration: {key} must be a mapping")
        return raw

    def notify(self, env=None):
        """The `notify:` block (a mapping, or a path to a YAML file; SENTINELS_NOTIFY names a
        file that wins); SLACK_CHANNEL overrides the default channel."""
        from .domain import notify

        env = os.environ if env is None else env
        raw = env.get("SENTINELS_NOTIFY") or self.file.get("notify")
        if isinstance(raw, str):
            raw = _load_yaml_file(Path(raw).expanduser(), "notify configuration")
        if env.get("SLACK_CHANNEL"):
            if raw is not None and not isinstance(raw, dict):
                raise ConfigError("notify configuration: expected a mapping")
            raw = dict(raw or {}, default_channel=env["SLACK_CHANNEL"])
        return notify.NotifyConfig.from_dict(raw)

    def mlflow_uri(self) -> str:
        return (os.environ.get("MLFLOW_TRACKING_URI") or self.file.get("mlflow_tracking_uri")
                or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}")
