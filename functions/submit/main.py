"""functions-framework entry point of the submit function (HTTP signature, async).

HTTP rather than cloud_event signature because the caller needs the job record back.
Configuration (priorities, tokens, limits) is parsed at import, i.e. at start-up.
"""

import logging

import functions_framework.aio
from starlette.responses import JSONResponse

from sentinels import clock, wiring
from sentinels.domain import events
from sentinels.domain.errors import InvalidSpec
from sentinels.http import error_response, misrouted, read_event
from sentinels import expected_secrets
from sentinels.settings import Settings

from functions.submit.service import SubmitService

log = logging.getLogger("sentinels.submit")
SETTINGS = Settings.load()
expected_secrets.check('sentinels-submit', SETTINGS.env)  # a Secret missing on Kubernetes: one clear line
PRIORITIES = SETTINGS.priorities()
LIMITS = SETTINGS.limits()
# the local runtime `sentinels up` resolved (auto -> podman, docker or process); records say which
RUNTIME = SETTINGS.runtime() if SETTINGS.backend() == "local" else None
RUNTIME = RUNTIME if RUNTIME in ("podman", "docker", "process") else None
SHARING = SETTINGS.sharing()
IDENTITIES = SETTINGS.identities()
if IDENTITIES.single_user:
    log.warning("no tokens file configured: single-user mode, every request acts as %s (admin)", IDENTITIES.local["user"])

async def build(stores: wiring.Stores) -> SubmitService:
    return SubmitService(jobs=stores.jobs, queue=stores.queue, history=stores.history, sink=stores.sink,
                         priorities=PRIORITIES, limits=LIMITS, clock=clock.now_iso, runtime=RUNTIME, sharing=SHARING)


SERVICE = wiring.Lazy(SETTINGS, "sentinels-submit", build)


@functions_framework.aio.http
async def submit(request):
    wrong = misrouted(request)
    if wrong is not None:
        return wrong
    if request.method == "GET":
        jetstream = await wiring.jetstream_health(SERVICE)
        return JSONResponse({"ok": jetstream == "ok", "function": "submit", "single_user": IDENTITIES.single_user,
                             "jetstream": jetstream}, status_code=200 if jetstream == "ok" else 503)
    try:
        ce = await read_event(request)
        who = IDENTITIES.identify(request.headers.get("authorization"))
        svc = await SERVICE.get()
        kind = ce["type"]
        if kind == events.JOB_SUBMIT:
            status, body = await svc.submit(ce["data"], who, ce["source"], ce["id"])
        elif kind == events.JOB_CANCEL:
            status, body = await svc.cancel(ce["data"], who)
        elif kind == events.JOB_REPRIORITIZE:
            status, body = await svc.reprioritize(ce["data"], who)
        else:
            raise InvalidSpec(f"unknown CloudEvent type {kind!r} (accepted: {', '.join(events.WRITE_TYPES)})", "type")
        return JSONResponse(body, status_code=status)
    except Exception as exc:  # mapped to 4xx/503/500 with a JSON body
        return error_response(exc)
