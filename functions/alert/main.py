"""functions-framework entry point of the alert function (HTTP signature, async).

HTTP rather than cloud_event signature so the answer can say 503 when Slack failed
transiently (the broker redelivers) and 200 when an event was handled or deliberately
ignored. The notify configuration and the Slack credentials are read at import, i.e. at
start-up: a bad configuration fails then, a rejected token is logged and notifications
fall back to the log. Slack is a separate subscriber, so its outage never blocks jobs.
"""

import logging

import functions_framework.aio
from starlette.responses import JSONResponse

from sentinels import clock, wiring
from sentinels.adapters import slack
from sentinels.http import error_response, misrouted, read_event
from sentinels import expected_secrets
from sentinels.settings import Settings

from sentinels.functions.alert.service import AlertService

log = logging.getLogger("sentinels.alert")
SETTINGS = Settings.load()
expected_secrets.check('sentinels-alert', SETTINGS.env)  # a Secret missing on Kubernetes: one clear line
NOTIFY = SETTINGS.notify()
NOTIFIER = slack.start(SETTINGS.slack_env(), NOTIFY.default_channel)


async def build(stores: wiring.Stores) -> AlertService:
    return AlertService(jobs=stores.jobs, sent=await stores.sent_log(), notifier=NOTIFIER,
                        cfg=NOTIFY, clock=clock.now_iso, fallback=slack.ConsoleNotifier,
                        meter=stores.meter())


SERVICE = wiring.Lazy(SETTINGS, "sentinels-alert", build)


@functions_framework.aio.http
async def alert(request):
    wrong = misrouted(request)
    if wrong is not None:
        return wrong
    if request.method == "GET":
        return JSONResponse({"ok": True, "function": "alert", "notifications": NOTIFIER.describe()})
    try:
        ce = await read_event(request)
        svc = await SERVICE.get()
        status, body = await svc.handle(ce)
        return JSONResponse(body, status_code=status)
    except Exception as exc:  # Unavailable (Slack or NATS) -> 503, bad CloudEvent -> 400
        return error_response(exc)
