"""The HTTP read API on the submit function: `GET /v1/...` routes, query checks, streaming.

The submit function is the one public entry point, so reads carry the same bearer tokens
and identities as writes. Answers are JSON; history and logs stream when followed
(NDJSON and plain text), so `--wait` and `logs -f` hold one connection instead of polling.
"""

import json
import re
import time

from starlette.responses import JSONResponse, Response, StreamingResponse

from sentinels.domain import reads, times
from sentinels.domain.errors import InvalidSpec, NotFound
from sentinels.http import path_of

from sentinels.functions.submit.openapi import DOCUMENT

JOB = r"/v1/jobs/(?P<id>[^/]+)"
ROUTES = [
    (re.compile(r"^/v1/whoami/?$"), "whoami"),
    (re.compile(r"^/v1/jobs/?$"), "jobs"),
    (re.compile(rf"^{JOB}/?$"), "job"),
    (re.compile(rf"^{JOB}/history/?$"), "history"),
    (re.compile(rf"^{JOB}/logs/?$"), "logs"),
    (re.compile(rf"^{JOB}/usage/?$"), "job_usage"),
    (re.compile(r"^/v1/queue/?$"), "queue"),
    (re.compile(r"^/v1/usage/?$"), "usage"),
    (re.compile(r"^/v1/share/?$"), "share"),
]
PARAMS = {
    "whoami": set(), "job": set(), "jobs": {"owner", "team", "state", "sweep", "limit", "cursor"},
    "history": {"follow"}, "logs": {"tail", "follow", "build", "since", "attempt"}, "queue": {"limit", "class"},
    "usage": set(), "job_usage": set(), "share": set(),
}
NOTE_HEADER = "X-Sentinels-Note"  # remarks on a log answer (a fallback taken, no output yet), one per line


def openapi() -> Response:
    return JSONResponse(DOCUMENT)


def route(path: str) -> tuple[str, dict]:
    for pattern, name in ROUTES:
        m = pattern.match(path)
        if m:
            return name, m.groupdict()
    raise NotFound(f"no such path {path} (see /openapi.json)", "path")


def _flag(query, name: str) -> bool:
    raw = query.get(name)
    if raw in (None, "", "false", "0", "no"):
        return False
    if raw in ("true", "1", "yes"):
        return True
    raise InvalidSpec(f"{name}: {raw!r} is not true or false", name)


def _name(query, name: str) -> str | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > 200 or not raw.isprintable():
        raise InvalidSpec(f"{name}: not a valid name", name)
    return raw


def _ndjson(items):
    async def gen():
        async for item in items:
            yield json.dumps(item) + "\n"
    return StreamingResponse(gen(), media_type="application/x-ndjson")


def _text(lines, notes: list):
    async def gen():
        async for line in lines:
            yield line + "\n"
    headers = {NOTE_HEADER: " | ".join(_header_safe(n) for n in notes)} if notes else None
    return StreamingResponse(gen(), media_type="text/plain; charset=utf-8", headers=headers)


def _header_safe(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:1000]


async def get(request, who: dict, svc) -> Response:
    """Answer one GET below /v1 for the caller `who`; raises domain errors for 4xx."""
    name, args = route(path_of(request))
    query = request.query_params
    unknown = set(query) - PARAMS[name]
    if unknown:
        raise InvalidSpec(f"unknown query parameter(s) {', '.join(sorted(unknown))} for this path "
                          f"(known: {', '.join(sorted(PARAMS[name])) or 'none'})", sorted(unknown)[0])
    if name == "whoami":
        return JSONResponse(who)
    if name == "job":
        return JSONResponse(await svc.job(args["id"], who))
    if name == "jobs":
        body = await svc.listing(owner=_name(query, "owner"), team=_name(query, "team"),
                                 state=reads.state_param(query.get("state")), sweep=_name(query, "sweep"),
                                 limit=reads.limit_param(query.get("limit")),
                                 cursor=reads.cursor_param(query.get("cursor")))
        return JSONResponse(body)
    if name == "queue":
        return JSONResponse(await svc.queue_view(reads.limit_param(query.get("limit")), _name(query, "class")))
    if name == "share":
        return JSONResponse(await svc.share())
    if name == "history":
        if _flag(query, "follow"):
            stream = svc.follow_history(args["id"])
            first = await _first(stream)  # a 404 must come before the 200 of a stream
            return _ndjson(_chain(first, stream))
        return JSONResponse({"job": args["id"], "history": await svc.history_of(args["id"])})
    if name in ("usage", "job_usage"):
        return JSONResponse(await svc.usage(args.get("id")))
    tail = query.get("tail")
    if tail not in (None, "") and (not tail.isdigit() or int(tail) > 1_000_000):
        raise InvalidSpec(f"tail: {tail!r} is not a whole number of lines (0 to 1000000)", "tail")
    attempt = query.get("attempt")
    if attempt not in (None, "") and (not attempt.isdigit() or not 1 <= int(attempt) <= 1_000_000):
        raise InvalidSpec(f"attempt: {attempt!r} is not an attempt number (1, 2, ...)", "attempt")
    since = times.since_iso(query.get("since"), time.time()) if query.get("since") else None
    notes, lines = await svc.log_stream(args["id"], who, int(tail) if tail else None, _flag(query, "follow"),
                                        _flag(query, "build"), int(attempt) if attempt else None, since)
    return _text(lines, notes)  # a 404 or 400 was raised before the 200 of the stream


_END = object()


async def _first(gen):
    try:
        return await gen.__anext__()
    except StopAsyncIteration:
        return _END


async def _chain(first, gen):
    if first is _END:
        return
    yield first
    async for item in gen:
        yield item
