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


async def read_event(request) -> dict:
    """Return the CloudEvent as {type, source, id, subject, time, data} or raise a 4xx error."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY:
        raise TooLarge(f"request body of {length} bytes is over the {MAX_BODY // 1024} KiB limit")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise TooLarge(f"request body is over the {MAX_BODY // 1024} KiB limit")
    from cloudevents.exceptions import GenericException
    from cloudevents.http import from_http

    try:
        ce = from_http(dict(request.headers), body)
    except GenericException as e:
        raise InvalidSpec(f"not a valid CloudEvent: {str(e).strip() or type(e).__name__} "
                          "(required: id, source, type, specversion)") from None
    attrs = ce.get_attributes()
    for key in ("id", "source", "type"):
        if not attrs.get(key):
            raise InvalidSpec(f"not a valid CloudEvent: missing {key}", key)
    data = ce.data
    if isinstance(data, (bytes, str)) and data:
        try:
            data = json.loads(data)
        except ValueError:
            raise InvalidSpec("CloudEvent data must be JSON") from None
    return {**attrs, "data": data}


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
