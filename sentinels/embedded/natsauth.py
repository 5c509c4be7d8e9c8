"""NATS users of the embedded default: who may publish and subscribe to what.

Without this, anyone who reaches the loopback NATS port could read every record, write
KV records (ownership, a class above the cap), delete the store, or ask the executor to
run a command. `sentinels up` generates one password per component at first start
(`$SENTINELS_HOME/secrets/`, directory 0700, files 0600) and writes them into the
server's configuration (0600) with permissions: each component publishes only the
subjects its work needs, only the scheduler may publish `sentinels.local.launch`, only
the executor may subscribe to `sentinels.local.>`, and every user has its own reply
inbox (`_INBOX_<user>.>`), so nobody reads another component's replies. `admin` creates
the streams and replays dead letters; `reader` can only look (the CLI's reads and the
`nats` CLI for inspecting the layout).

The internal functions' HTTP ports (schedule, on_job_event, alert) are guarded the same
way: the router sends a per-stack secret (`secrets/internal-token`) in a header and
those functions refuse any POST without it, so nobody forges a Kubernetes event or an
alert from the machine.
"""

import json
import os
import secrets
from pathlib import Path
from typing import Optional

COMPONENTS = ("submit", "schedule", "on_job_event", "alert", "router", "executor", "exporter")
USERS = ("admin", "reader") + COMPONENTS
SECRETS_DIR = "secrets"

# What any JetStream client needs to read: stream/consumer info, direct gets, its own
# throw-away consumers (queue reads, KV watches) and their flow control.
_READ = ["$JS.API.INFO", "$JS.API.STREAM.INFO.>", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST",
         "$JS.API.CONSUMER.INFO.>", "$JS.API.CONSUMER.NAMES.>", "$JS.API.CONSUMER.LIST.>",
         "$JS.API.DIRECT.GET.>", "$JS.API.STREAM.MSG.GET.>",
         "$JS.API.CONSUMER.CREATE.SENTINELS_QUEUE.>", "$JS.API.CONSUMER.CREATE.SENTINELS_QUEUE",
         "$JS.API.CONSUMER.CREATE.KV_sentinels_jobs.>", "$JS.API.CONSUMER.CREATE.KV_sentinels_jobs",
         "$JS.API.CONSUMER.DELETE.SENTINELS_QUEUE.>", "$JS.API.CONSUMER.DELETE.KV_sentinels_jobs.>",
         "$JS.API.CONSUMER.MSG.NEXT.SENTINELS_QUEUE.>", "$JS.FC.>",
         "$JS.API.CONSUMER.CREATE.SENTINELS_INDEX.>", "$JS.API.CONSUMER.CREATE.SENTINELS_INDEX",
         "$JS.API.CONSUMER.DELETE.SENTINELS_INDEX.>", "$JS.API.CONSUMER.MSG.NEXT.SENTINELS_INDEX.>",
         "$JS.API.CONSUMER.CREATE.SENTINELS_FINISHED.>", "$JS.API.CONSUMER.CREATE.SENTINELS_FINISHED",
         "$JS.API.CONSUMER.DELETE.SENTINELS_FINISHED.>", "$JS.API.CONSUMER.MSG.NEXT.SENTINELS_FINISHED.>"]
_EVENTS = ["sentinels.events.>"]
_JOBS = ["$KV.sentinels_jobs.>"]
_STATE = ["$KV.sentinels_state.>"]
_QUEUE = ["sentinels.queue.>", "$JS.API.STREAM.MSG.DELETE.SENTINELS_QUEUE"]
_HISTORY = ["sentinels.history.*"]
_INDEX = ["sentinels.index.>", "sentinels.finished.>", "$JS.API.STREAM.PURGE.SENTINELS_INDEX"]  # the job store's listings
_LOCAL = "sentinels.local.{}"
_METRICS = ["sentinels.metrics.>"]  # counts for the metrics exporter (core NATS, no stream)

PUBLISH = {
    "submit": _JOBS + _INDEX + _QUEUE + _HISTORY + _EVENTS,
    "schedule": _JOBS + _INDEX + _STATE + _QUEUE + _HISTORY + _EVENTS + _METRICS
    + [_LOCAL.format(v) for v in ("nodes", "launch", "stop", "active", "build", "jobs")],
    "on_job_event": _JOBS + _INDEX + _STATE + _QUEUE + _HISTORY + _EVENTS
    + [_LOCAL.format(v) for v in ("nodes", "stop", "active", "logs", "jobs")],
    "alert": ["$KV.sentinels_alerts.>"] + _METRICS,
    "router": _EVENTS + _METRICS + ["sentinels.deadletter.>", "$JS.ACK.SENTINELS_EVENTS.>",
                         "$JS.API.CONSUMER.CREATE.SENTINELS_EVENTS.>", "$JS.API.CONSUMER.CREATE.SENTINELS_EVENTS",
                         "$JS.API.CONSUMER.DURABLE.CREATE.SENTINELS_EVENTS.>"],
    "executor": _EVENTS,
    "reader": [],
    "exporter": [_LOCAL.format("nodes")],  # reads, asks the executor for capacity
}


def inbox(user: str) -> str:
    return f"_INBOX_{user}"


def permissions(user: str) -> Optional[dict]:
    """The server-side permissions of `user` (None: everything, for admin)."""
    if user == "admin":
        return None
    publish = _READ + PUBLISH[user]
    subscribe = [inbox(user) + ".>"]
    if user == "executor":
        subscribe.append(_LOCAL.format(">"))
        publish = publish + ["_INBOX_schedule.>", "_INBOX_on_job_event.>", "_INBOX_reader.>", "_INBOX_admin.>",
                             "_INBOX_exporter.>"]
    if user == "exporter":
        subscribe += _METRICS + ["sentinels.deadletter.>"]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def credentials_file(home: Path, user: str) -> Path:
    return Path(home) / SECRETS_DIR / f"nats-{user}.json"


def ensure(home: Path) -> dict[str, str]:
    """Every user's password, generated on first use and kept (one 0600 file per user)."""
    _private_dir(Path(home) / SECRETS_DIR)
    out = {}
    for user in USERS:
        path = credentials_file(home, user)
        try:
            out[user] = json.loads(path.read_text())["password"]
        except (OSError, ValueError, KeyError):
            out[user] = secrets.token_urlsafe(24)
            _write_private(path, json.dumps({"user": user, "password": out[user]}))
    return out


def _quote(text: str) -> str:
    return json.dumps(text)  # NATS configuration strings accept JSON string syntax


def config_block(passwords: dict[str, str]) -> str:
    """The `authorization { users = [...] }` block of nats.conf."""
    rows = []
    for user in USERS:
        entry: dict[str, object] = {"user": user, "password": passwords[user]}
        perms = permissions(user)
        if perms is not None:
            entry["permissions"] = perms
        rows.append("    " + json.dumps(entry))
    return "authorization {\n  users = [\n" + ",\n".join(rows) + "\n  ]\n}\n"


INTERNAL_TOKEN_ENV = "SENTINELS_INTERNAL_TOKEN_FILE"
INTERNAL_HEADER = "x-sentinels-internal"


def internal_token(home: Path) -> Path:
    """The per-stack secret the router shows to the internal functions (generated once, 0600)."""
    path = Path(home) / SECRETS_DIR / "internal-token"
    if not path.exists():
        _private_dir(path.parent)
        _write_private(path, secrets.token_urlsafe(32))
    return path
