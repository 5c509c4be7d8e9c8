"""functions-framework entry point of the alert function (HTTP signature, async).

HTTP rather than cloud_event signature so the answer can say 503 when Slack failed
transiently (the broker redelivers) and 200 when an event was handled or deliberately
ignored. The notify configuration and the Slack credentials are read at import, i.e. at
start-up: a bad configuration fails then, a rejected token is logged and notifications
fall back to the log. Slack is a separate subscriber, so its outage never blocks jobs.
"""

import asyncio
import logging
import os

import functions_framework.aio
from starlette.responses import JSONResponse

from sentinels import clock
from sentinels.adapters import jetstream, slack
from sentinels.http import error_response, read_event
from sentinels.settings import Settings

from functions.alert.service import AlertService, JetStreamSentLog, notify_config

log = logging.getLogger("sentinels.alert")
SETTINGS = Settings.load()
NOTIFY = notify_config(SETTINGS, os.environ)
NOTIFIER = slack.start(os.environ, NOTIFY.default_channel)

_service: AlertService | None = None
_nc = None
_lock = asyncio.Lock()


async def service() -> AlertService:
    """Connect on first use (and again after the connection closed); NATS down -> 503."""
    global _service, _nc
    async with _lock:
        if _service is None or _nc.is_closed:
            _nc = await jetstream.connect(SETTINGS.nats_url, "sentinels-alert", reconnect=True)
            js = _nc.jetstream(timeout=5)
            await jetstream.ensure(js)
            notifier = _service.notifier if _service is not None else NOTIFIER
            _service = AlertService(jobs=await jetstream.JetStreamJobs.open(js), sent=await JetStreamSentLog.open(js),
                                    notifier=notifier, cfg=NOTIFY, clock=clock.now_iso)
        return _service


@functions_framework.aio.http
async def alert(request):
    if request.method == "GET":
        notifier = _service.notifier if _service is not None else NOTIFIER
        return JSONResponse({"ok": True, "function": "alert", "notifications": notifier.describe()})
    try:
        ce = await read_event(request)
        svc = await service()
        status, body = await svc.handle(ce)
        return JSONResponse(body, status_code=status)
    except Exception as exc:  # Unavailable (Slack or NATS) -> 503, bad CloudEvent -> 400
        return error_response(exc)
