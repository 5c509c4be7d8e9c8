"""HTTP plumbing shared by the functions: CloudEvent parsing with limits, JSON errors.

Knative delivers CloudEvents over HTTP in binary or structured mode; both are accepted.
A user mistake becomes a 4xx with a JSON `{"error": ...}`, never a stack trace.
"""

import json
import logging

from starlette.responses import JSONResponse, Response

from .domain.errors import InvalidSpec, SentinelsError, TooLarge, Unavailable

MAX_BODY = 256 * 1024
log = logging.getLogger("sentinels.http")


REQUIRED = ("id", "source", "type", "specversion")
JSON_TYPES = ("application/json", "text/json", "")


class UnsupportedMedia(InvalidSpec):
    status = 415


async def read_event(request) -> dict:
    """Return the CloudEvent as a dict of attributes plus `data`, or raise a 4xx error.

    Binary mode (attributes in `ce-*` headers, data in the body) and structured mode
    (`application/cloudevents+json`) per the CloudEvents HTTP binding, JSON data only.
    """
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY:
        raise TooLarge(f"request body of {length} bytes is over the {MAX_BODY // 1024} KiB limit")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise TooLarge(f"request body is over the {MAX_BODY // 1024} KiB limit")
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";")[0].strip().lower()
    if media == "application/cloudevents+json":
        try:
            event = json.loads(body)
        except (ValueError, RecursionError):
            raise InvalidSpec("not a valid CloudEvent: structured-mode body is not JSON (or nested too deeply)") from None
        if not isinstance(event, dict):
            raise InvalidSpec("not a valid CloudEvent: structured-mode body must be a JSON object")
        if "data_base64" in event:
            raise InvalidSpec("CloudEvent data must be JSON, not data_base64")
        event.setdefault("data", None)
        if not all(isinstance(event.get(k), str) for k in REQUIRED if event.get(k) is not None):
            raise InvalidSpec(f"not a valid CloudEvent: {', '.join(REQUIRED)} must be strings")
    else:
        if body.strip() and media not in JSON_TYPES and not media.endswith("+json"):
            raise UnsupportedMedia(f"content-type {ctype or '(none)'!r}: CloudEvent data must be JSON "
                                   "(application/json), or send a structured application/cloudevents+json event")
        event = {k[3:]: v for k, v in request.headers.items() if k.startswith("ce-")}
        try:
            event["data"] = json.loads(body) if body.strip() else None
        except (ValueError, RecursionError):
            raise InvalidSpec("CloudEvent data must be JSON (and nested at most a few hundred levels)") from None
    missing = [k for k in REQUIRED if not event.get(k)]
    if missing:
        raise InvalidSpec(f"not a valid CloudEvent: missing {', '.join(missing)} (required: {', '.join(REQUIRED)})",
                          missing[0])
    if event["specversion"] != "1.0":
        raise InvalidSpec(f"unsupported CloudEvents specversion {event['specversion']!r} (use 1.0)", "specversion")
    return event


def path_of(request) -> str:
    """The request's path as sent (percent-decoded). Not `request.url.path`: building a URL drops
    tabs and newlines, so `/v1/jobs/%09` would be answered as `/v1/jobs/`."""
    return request.scope["path"]


def misrouted(request) -> Response | None:
    """404 for any path but `/`, 405 for any method but GET (health) and POST (events)."""
    path = path_of(request)
    if path not in ("/", ""):
        return JSONResponse({"error": f"no such path {path!r}: events are POSTed to /"}, status_code=404)
    if request.method not in ("GET", "POST"):
        return JSONResponse({"error": f"method {request.method} not allowed: POST a CloudEvent to /"},
                            status_code=405, headers={"allow": "GET, POST"})
    return None


def error_response(exc: Exception) -> Response:
    if isinstance(exc, SentinelsError):
        if exc.status >= 500:
            log.warning("%s", exc.message)
        return JSONResponse(exc.to_dict(), status_code=exc.status)
    if _is_nats_outage(exc):
        log.warning("JetStream unavailable: %s", type(exc).__name__)
        return JSONResponse(Unavailable("the job store (NATS JetStream) is unavailable; nothing was written, retry").to_dict(),
                            status_code=503)
    log.exception("unexpected error")
    return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)


def _is_nats_outage(exc: Exception) -> bool:
    import asyncio

    from nats import errors as ne
    from nats.js import errors as je

    return isinstance(exc, (ne.ConnectionClosedError, ne.NoServersError, ne.TimeoutError, ne.NoRespondersError,
                            ne.StaleConnectionError, ne.OutboundBufferLimitError, je.ServiceUnavailableError,
                            asyncio.TimeoutError, ConnectionError))
