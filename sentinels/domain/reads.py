"""Who may read what, and the shape of the read API's queries and answers (pure).

By default the queue is shared knowledge (like `squeue`): everyone sees every job's state,
class, owner and reason. A job's env values, params and logs are its details: the owner,
admins and (configurable) the owner's team see them. Queries are checked here so a bad
limit or cursor is a 400 naming the parameter, never a 5xx.
"""

import re
from dataclasses import dataclass

from .errors import ConfigError, Forbidden, InvalidSpec
from .states import ACTIVE, QUEUED, STATES, TERMINAL

DETAILS = ("owner", "team", "everyone")  # who sees another user's env values, params and logs
MAX_LIMIT = 1000
HIDDEN = "(hidden)"
CURSOR = re.compile(r"^([ads])(\d{1,19})$")
LIST_KINDS = {"a": "active", "d": "done", "s": "sweep"}
STATE_FILTERS = ("active", "finished", *STATES)


@dataclass(frozen=True)
class ReadRules:
    details: str = "team"

    @classmethod
    def from_dict(cls, raw) -> "ReadRules":
        raw = raw or {}
        if not isinstance(raw, dict) or set(raw) - {"details"}:
            raise ConfigError("configuration: reads takes one key, details (owner, team or everyone)")
        details = raw.get("details", "team")
        if details not in DETAILS:
            raise ConfigError(f"configuration: reads.details must be one of {', '.join(DETAILS)}, not {details!r}")
        return cls(details)

    @property
    def rule(self) -> str:
        return f"reads.details: {self.details}"

    def sees_details(self, who: dict, record: dict) -> bool:
        if who.get("role") == "admin" or record.get("owner") == who.get("user") or self.details == "everyone":
            return True
        return self.details == "team" and who.get("team") is not None and who.get("team") == record.get("team")

    def check_details(self, who: dict, record: dict, what: str) -> None:
        if not self.sees_details(who, record):
            whom = "its owner, its team and admins" if self.details == "team" else "its owner and admins"
            raise Forbidden(f"{what} of job {record['id']} ({record.get('owner')}'s) are visible to {whom} only "
                            f"(rule {self.rule})")

    def view(self, who: dict, record: dict) -> dict:
        """The record as `who` may see it: another user's env values, params and log lines hidden."""
        if self.sees_details(who, record):
            return record
        spec = dict(record.get("spec") or {})
        spec["env"] = {k: HIDDEN for k in spec.get("env") or {}}
        spec["params"] = {k: HIDDEN for k in spec.get("params") or {}}
        out = {k: v for k, v in record.items() if k != "log_tail"}
        out["spec"] = spec
        out["hidden"] = f"env values, params and logs (rule {self.rule})"
        return out


def row(record: dict) -> dict:
    """One line of a listing: what everyone may see."""
    out = {k: record.get(k) for k in ("id", "name", "state", "priority", "owner", "team", "reason", "attempts",
                                      "submitted_at", "updated_at")}
    if record.get("sweep"):
        out["sweep"] = record["sweep"]["id"]
    return out


def limit_param(raw: str | None, default: int = 50) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidSpec(f"limit: {raw!r} is not a whole number from 1 to {MAX_LIMIT}", "limit")
    return int(raw)


def cursor_param(raw: str | None) -> tuple[str, int] | None:
    """A listing cursor is the list (`a`ctive, `d`one, `s`weep) and the sequence to continue below."""
    if raw is None or raw == "":
        return None
    m = CURSOR.match(raw)
    if not m:
        raise InvalidSpec(f"cursor: {raw!r} is not a cursor from a previous page (use the `next` value)", "cursor")
    return LIST_KINDS[m.group(1)], int(m.group(2))


def make_cursor(kind: str, seq: int) -> str:
    return kind[0] + str(seq)


def state_param(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    value = raw if raw in ("active", "finished") else raw.upper()
    if value not in STATE_FILTERS:
        raise InvalidSpec(f"state: {raw!r} is not one of {', '.join(STATE_FILTERS)}", "state")
    return value


def lists_for(state: str | None, sweep: str | None) -> list[str]:
    """Which index lists a listing walks, in order (live jobs first, then finished ones)."""
    if sweep:
        return ["sweep"]
    if state in ("active", QUEUED, *ACTIVE):
        return ["active"]
    if state == "finished" or state in TERMINAL:
        return ["done"]
    return ["active", "done"]


def matches(record: dict, state: str | None) -> bool:
    if state is None:
        return True
    if state == "active":
        return record["state"] not in TERMINAL
    if state == "finished":
        return record["state"] in TERMINAL
    return record["state"] == state
