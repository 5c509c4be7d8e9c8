"""Operator commands that read JetStream itself (dead letters), not the HTTP API.

They run where the stack runs (credentials from SENTINELS_HOME or
SENTINELS_NATS_CREDENTIALS), so they may import the NATS client; the common commands
in `sentinels.cli.main` never load this module.
"""

import asyncio
import sys

from sentinels.domain.errors import SentinelsError

from .client import CliError


def nats_login(settings, user: str = "reader") -> dict:
    """The NATS credentials the CLI uses: SENTINELS_NATS_CREDENTIALS, else the embedded
    default's `reader` (or `admin`, for replaying dead letters) from SENTINELS_HOME."""
    from pathlib import Path

    from sentinels.adapters import jetstream

    path = settings.env.get(jetstream.CREDENTIALS_ENV) or str(Path(settings.home) / "secrets" / f"nats-{user}.json")
    return jetstream.credentials(path) if Path(path).exists() else {}


class Reader:
    """Access to the JetStream store for status, ls, queue, history: read-only as `reader`."""

    def __init__(self, settings, user: str = "reader"):
        self.settings = settings
        self.user = user

    def run(self, fn):
        async def go():
            from sentinels.adapters import jetstream

            nc = await jetstream.connect(self.settings.nats_url, "sentinels-cli", timeout=1.5,
                                         login=nats_login(self.settings, self.user))
            try:
                js = nc.jetstream(timeout=5)
                try:
                    jobs = await jetstream.JetStreamJobs.open(js)
                except Exception:
                    raise CliError(f"no sentinels store at {self.settings.nats_url} yet; has `sentinels up` run?") from None
                self.js = js
                return await fn(js, jobs, jetstream.JetStreamQueue(js, nc), jetstream.JetStreamHistory(js))
            finally:
                await nc.close()

        try:
            return asyncio.run(go())
        except SentinelsError as e:
            raise CliError(e.message) from None


def cmd_events(a, settings, emit) -> int:
    """Dead letters: events no function accepted within the retry horizon (count, list, replay)."""
    dead, replay, limit, fmt = a.dead, a.replay, a.limit, a.output
    if not dead and replay is None:
        raise CliError("say what to show: `sentinels events --dead` or `sentinels events --replay SEQ|all`", 2)
    if replay is not None and replay != "all" and not replay.isdigit():
        raise CliError(f"--replay {replay!r}: give the SEQ of a dead letter (from `events --dead`) or all", 2)
    from sentinels.adapters import deadletters

    async def look(js, jobs, q, h):
        return await deadletters.count(js), await deadletters.listing(js, limit)

    async def again(js, jobs, q, h):
        seqs = [d["seq"] for d in await deadletters.listing(js, limit)] if replay == "all" else [int(replay)]
        return [(seq, await deadletters.replay(js, seq)) for seq in seqs]

    if replay is not None:
        done = Reader(settings, "admin").run(again)
        missing = [seq for seq, ce_id in done if ce_id is None]
        if missing and replay != "all":
            raise CliError(f"no dead letter {replay}; `sentinels events --dead` lists them")
        emit([{"seq": seq, "event": ce_id} for seq, ce_id in done], fmt, [("SEQ", "seq"), ("REPLAYED", "event")])
        return 0
    total, letters = Reader(settings).run(look)
    rows = [{"seq": d["seq"], "trigger": d.get("trigger"), "type": (d.get("event") or {}).get("type"),
             "id": (d.get("event") or {}).get("id"), "attempts": d.get("attempts"), "dead_at": d.get("dead_at"),
             "reason": d.get("reason")} for d in letters]
    if fmt == "table":
        print(f"{total} dead letter{'s' if total != 1 else ''}" + (f" (first {len(rows)})" if total > len(rows) else ""),
              file=sys.stdout)
    emit({"count": total, "letters": letters} if fmt != "table" else rows, fmt,
         [("SEQ", "seq"), ("TRIGGER", "trigger"), ("TYPE", "type"), ("ID", "id"), ("TRIES", "attempts"),
          ("DEAD AT", "dead_at"), ("REASON", "reason")], rows)
    return 0
