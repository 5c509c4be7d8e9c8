"""Who hears about a finished job, and what the Slack message says (pure; no I/O, no clock).

The alert function routes a terminal job record to channels (`route`) and renders it as
Slack Block Kit with a plain-text fallback (`job_message`); capacity episodes from the
scheduler get `capacity_message`. The configuration is parsed once at start
(`NotifyConfig.from_dict`) so a bad `notify:` block stops start-up with a clear message.
"""

import fnmatch
import re
from dataclasses import dataclass, field

from . import duration, times
from .capacity_watch import CapacityConfig
from .errors import ConfigError
from .spec import NOTIFY_DEFAULT, NOTIFY_STATES
from .states import CANCELLED, FAILED, SUCCEEDED, runs_made

CHANNEL = re.compile(r"^#?[A-Za-z0-9._-]{1,80}$")
KEYS = ("default_channel", "capacity_channel", "teams", "experiments", "mute_success",
        "kibana_url", "grafana_url", "mlflow_url", "on", "capacity")
DEFAULT_ON = NOTIFY_DEFAULT
# Slack Block Kit limits: header text 150 chars, section text 3000, section field 2000.
HEADER_MAX, TEXT_MAX, FIELD_MAX, FALLBACK_MAX = 150, 3000, 2000, 4000
LOG_LINES = 30
PREEMPTED_ICON = ":arrows_counterclockwise:"
ICON = {SUCCEEDED: ":white_check_mark:", FAILED: ":x:", CANCELLED: ":no_entry_sign:"}
PLACEHOLDER = re.compile(r"\{(\w+)\}")
# where a bare Grafana / Kibana address (no {placeholder}) links: the chart's experiment
# dashboard with its `job` variable, and Discover filtered on the field Fluent Bit lifts
GRAFANA_EXPERIMENT = "/d/sentinels-experiment/sentinels-experiment?var-job={job}"
KIBANA_DISCOVER = "/app/discover#/?_a=(query:(language:kuery,query:'sentinels_job_id:%22{job}%22'))"


@dataclass(frozen=True)
class NotifyConfig:
    """Routing and link templates. `default_channel` "" means the destination's own default
    (the incoming webhook's channel, or the console)."""

    default_channel: str = ""
    capacity_channel: str = ""
    teams: dict = field(default_factory=dict)         # team -> channel
    experiments: tuple = ()                            # ((glob, channel), ...) in file order
    mute_success: frozenset = frozenset()              # users who do not want success messages
    kibana_url: str = ""                               # templates: {job} {name} {owner} {team} ...
    grafana_url: str = ""
    mlflow_url: str = ""                               # e.g. https://mlflow.example/#/experiments/{experiment_id}/runs/{run_id}
    on: frozenset = frozenset(DEFAULT_ON)
    capacity: CapacityConfig = CapacityConfig()         # when the scheduler calls capacity "exhausted"

    @classmethod
    def from_dict(cls, raw) -> "NotifyConfig":
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError(f"notify configuration: expected a mapping with {', '.join(KEYS)}")
        unknown = set(raw) - set(KEYS)
        if unknown:
            raise ConfigError(f"notify configuration: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                              f"(known: {', '.join(KEYS)})")
        teams = _mapping(raw.get("teams"), "teams")
        experiments = _mapping(raw.get("experiments"), "experiments")
        for where, channels in (("teams", teams), ("experiments", experiments)):
            for key, ch in channels.items():
                _channel(ch, f"{where}.{key}")
        mute = raw.get("mute_success") or []
        if isinstance(mute, str):
            mute = [mute]
        if not isinstance(mute, list) or not all(isinstance(u, str) and u for u in mute):
            raise ConfigError(f"notify configuration: mute_success must be a list of user names, got {mute!r}")
        on = raw.get("on", list(DEFAULT_ON))
        if isinstance(on, str):
            on = [on]
        if not isinstance(on, list) or any(s not in NOTIFY_STATES for s in on):
            raise ConfigError(f"notify configuration: on must be a list of {', '.join(NOTIFY_STATES)}, got {on!r}")
        urls = {}
        for key in ("kibana_url", "grafana_url", "mlflow_url"):
            value = raw.get(key) or ""
            if not isinstance(value, str) or (value and not value.startswith(("http://", "https://"))):
                raise ConfigError(f"notify configuration: {key} must be an http(s) URL template, got {value!r}")
            urls[key] = value
        return cls(
            default_channel=_channel(raw.get("default_channel"), "default_channel"),
            capacity_channel=_channel(raw.get("capacity_channel"), "capacity_channel"),
            teams={str(k): v for k, v in teams.items()},
            experiments=tuple((str(k), v) for k, v in experiments.items()),
            mute_success=frozenset(mute), on=frozenset(on), capacity=CapacityConfig.from_dict(raw.get("capacity")),
            **urls)


def _mapping(value, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"notify configuration: {key} must map a name to a Slack channel, got {type(value).__name__}")
    return value


def _channel(value, key: str) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not CHANNEL.match(value):
        raise ConfigError(f"notify configuration: {key}: {value!r} is not a Slack channel name or id")
    return value


# --- routing ---------------------------------------------------------------------------
def route(record: dict, cfg: NotifyConfig, what: str | None = None) -> list[str]:
    """Channels to tell about this terminal job (or `what` happened to it: "preempted");
    [] when nobody should be told.

    The job spec's own `notify` (channel, on) wins; else the team's and matching
    experiments' channels; else the default channel. A user's success mute always holds.
    """
    state = what or str(record.get("state", "")).lower()
    spec = record.get("spec") or {}
    own = spec.get("notify") or {}
    wanted = set(own["on"]) if own.get("on") is not None else cfg.on
    if state not in wanted:
        return []
    if state == "succeeded" and record.get("owner") in cfg.mute_success:
        return []
    if own.get("channel"):
        return [own["channel"]]
    channels = []
    team = record.get("team")
    if team and team in cfg.teams:
        channels.append(cfg.teams[team])
    experiment = spec.get("experiment") or record.get("name")
    for pattern, channel in cfg.experiments:
        if experiment and fnmatch.fnmatchcase(str(experiment), pattern) and channel not in channels:
            channels.append(channel)
    return channels or [cfg.default_channel]


# --- job messages ----------------------------------------------------------------------
def job_message(record: dict, now_iso: str, cfg: NotifyConfig = NotifyConfig()) -> dict:
    """Slack message {"text", "blocks"} for a job in a terminal state."""
    state = str(record.get("state", "?"))
    name = str(record.get("name") or (record.get("spec") or {}).get("name") or "?")
    job_id = str(record.get("id", "?"))
    owner = str(record.get("owner") or "?")
    team = record.get("team")
    reason = str(record.get("reason") or "")
    took, waited = timings(record, now_iso)
    exit_code = record.get("exit_code")
    links = job_links(record, cfg)

    fields = [
        ("Job", f"`{job_id}` {esc(name)}"),
        ("Owner", esc(owner) + (f" ({esc(team)})" if team else "")),
        ("State", state + (f" (exit code {exit_code})" if exit_code not in (None, "") else "")),
        ("Attempts", str(runs_made(record))),
        ("Duration", duration.human(took) if took is not None else "never ran"),
        ("Time in queue", duration.human(waited) if waited is not None else "unknown"),
    ]
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "emoji": True,
                                    "text": clip(f"{ICON.get(state, '')} {name} {state.lower()}".strip(), HEADER_MAX)}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": clip(f"*{k}*\n{v}", FIELD_MAX)} for k, v in fields]},
    ]
    if reason:
        blocks.append(section(f"*Reason*\n{esc(reason)}"))
    if links:
        blocks.append(section(" · ".join(f"<{url}|{label}>" for label, url in links)))
    tail = [str(line) for line in (record.get("log_tail") or [])][-LOG_LINES:]
    if state == FAILED and tail:
        blocks.append(section(log_block("*Last log lines*\n", tail)))
    text = f"{ICON.get(state, '')} {esc(name)} ({job_id}) of {esc(owner)} {state.lower()}".strip()
    if reason:
        text += f": {esc(reason)}"
    if took is not None:
        text += f" after {duration.human(took)}"
    for label, url in links:
        text += f"\n{label}: {url}"
    return {"text": clip(text, FALLBACK_MAX), "blocks": blocks}


def preempted_message(record: dict, reason: str, cfg: NotifyConfig = NotifyConfig()) -> dict:
    """Slack message for a job stopped and requeued for another (`reason` names who took the room)."""
    name, job_id = str(record.get("name") or "?"), str(record.get("id", "?"))
    owner = esc(str(record.get("owner") or "?")) + (f" ({esc(record['team'])})" if record.get("team") else "")
    text = f"{PREEMPTED_ICON} {esc(name)} ({job_id}) of {owner}: {esc(reason)}"
    blocks = [{"type": "header", "text": {"type": "plain_text", "emoji": True,
                                          "text": clip(f"{PREEMPTED_ICON} {name} preempted", HEADER_MAX)}},
              section(clip(f"`{job_id}` of {owner}\n{esc(reason)}", TEXT_MAX))]
    links = job_links(record, cfg)
    if links:
        blocks.append(section(" · ".join(f"<{url}|{label}>" for label, url in links)))
    return {"text": clip(text, FALLBACK_MAX), "blocks": blocks}


def timings(record: dict, now_iso: str) -> tuple[float | None, float | None]:
    """(run time, time in queue) of the job's last attempt, as `times.job_times` reads them."""
    in_queue, run = times.job_times(record, times.seconds(now_iso))
    return run, in_queue


def job_links(record: dict, cfg: NotifyConfig) -> list[tuple[str, str]]:
    """[(label, url)]: the record's own links first, then the configured templates."""
    own = record.get("links") or {}
    spec = record.get("spec") or {}
    values = {"job": record.get("id"), "id": record.get("id"), "name": record.get("name"), "owner": record.get("owner"),
              "team": record.get("team"), "experiment": spec.get("experiment"), "k8s_job": record.get("k8s_job"),
              "run_id": record.get("mlflow_run_id"),
              "experiment_id": (record.get("mlflow") or {}).get("experiment_id") or record.get("mlflow_experiment_id")}
    out = []
    for label, key, template in (("MLflow run", "mlflow", cfg.mlflow_url),
                                 ("Kibana logs", "kibana", _at_base(cfg.kibana_url, KIBANA_DISCOVER)),
                                 ("Grafana", "grafana", _at_base(cfg.grafana_url, GRAFANA_EXPERIMENT))):
        url = own.get(key) or fill(template, values)
        if url and isinstance(url, str) and url.startswith(("http://", "https://")):
            out.append((label, url.replace(">", "%3E").replace("|", "%7C")))
    return out


def _at_base(url: str, path: str) -> str:
    """A template as given, or a bare base address completed with sentinels' own path."""
    return url if not url or "{" in url else url.rstrip("/") + path


def fill(template: str, values: dict) -> str:
    """Replace {name} placeholders; "" if one has no value (a link to nowhere helps no one)."""
    if not template:
        return ""
    missing = [k for k in PLACEHOLDER.findall(template) if values.get(k) in (None, "")]
    if missing:
        return ""
    from urllib.parse import quote

    return PLACEHOLDER.sub(lambda m: quote(str(values[m.group(1)]), safe=""), template)


# --- capacity messages -----------------------------------------------------------------
def capacity_message(data: dict) -> dict:
    """Slack message for a capacity episode (data as `capacity_watch.step` emits it)."""
    exhausted = data.get("status") != "recovered"
    title = ":rotating_light: Cluster capacity exhausted" if exhausted else ":white_check_mark: Cluster capacity recovered"
    summary = str(data.get("summary") or "")
    blocks = [{"type": "header", "text": {"type": "plain_text", "emoji": True, "text": title}},
              section(esc(summary))]
    fields = []
    if data.get("waiting_for_room") is not None:
        fields.append(("Waiting for room", str(data["waiting_for_room"])))
    free = [str(row["text"]) for row in (data.get("allocated") or {}).values() if isinstance(row, dict) and row.get("text")]
    if free:
        fields.append(("Free now", "\n".join(free)))
    if fields:
        blocks.append({"type": "section",
                       "fields": [{"type": "mrkdwn", "text": clip(f"*{k}*\n{v}", FIELD_MAX)} for k, v in fields[:10]]})
    if data.get("episode"):
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"episode `{data['episode']}`"}]})
    text = f"Cluster capacity {'exhausted' if exhausted else 'recovered'}: {summary}"
    return {"text": clip(text, FALLBACK_MAX), "blocks": blocks}


# --- Block Kit helpers -----------------------------------------------------------------
def esc(text) -> str:
    """Slack's three control characters in mrkdwn."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, TEXT_MAX)}}


def log_block(title: str, lines: list[str]) -> str:
    """Title + the newest lines in a code block, dropping the oldest to fit one text block."""
    room = TEXT_MAX - len(title) - len("``````") - len("…\n")
    kept, size = [], 0
    for line in reversed(lines):
        line = esc(line.rstrip("\n").replace("```", "`\u200b``"))
        if len(line) > room:
            line = "…" + line[-(room - 1):]
        if size + len(line) + 1 > room:
            kept.append("…")
            break
        kept.append(line)
        size += len(line) + 1
    body = "\n".join(reversed(kept))
    return f"{title}```{body}```"
