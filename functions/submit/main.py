"""functions-framework entry point of the submit function (HTTP signature, async).

HTTP rather than cloud_event signature because the caller needs the job record back,
and because this is the one public entry point: writes are CloudEvents on `POST /`,
reads are the HTTP read API (`GET /v1/...`, `sentinels.functions.submit.api`), both behind the
same bearer tokens. Configuration (priorities, tokens, limits, read rules) is parsed at
import, i.e. at start-up.
"""

import logging

import functions_framework.aio
from starlette.responses import JSONResponse

from sentinels import clock, wiring
from sentinels.domain import events
from sentinels.domain.errors import InvalidSpec, NotFound
from sentinels.http import error_response, misrouted, path_of, read_event
from sentinels import expected_secrets
from sentinels.settings import Settings

from sentinels.functions.submit import api
from sentinels.functions.submit.reads import ReadService
from sentinels.functions.submit.service import SubmitService

log = logging.getLogger("sentinels.submit")
SETTINGS = Settings.load()
expected_secrets.check('sentinels-submit', SETTINGS.env)  # a Secret missing on Kubernetes: one clear line
PRIORITIES = SETTINGS.priorities()
LIMITS = SETTINGS.limits()
# the local runtime `sentinels up` resolved (auto -> podman, docker or process); records say which
RUNTIME = SETTINGS.runtime() if SETTINGS.backend() == "local" else None
RUNTIME = RUNTIME if RUNTIME in ("podman", "docker", "process") else None
SHARING = SETTINGS.sharing()
RULES = SETTINGS.read_rules()
NOTIFY = SETTINGS.notify()
SWEEP_MAX = SETTINGS.sweep_max()
REGISTRIES = SETTINGS.registries()
SETTINGS.elasticsearch()  # a bad `logs:` section fails here, at start-up
USAGE = wiring.usage_source_for(SETTINGS)
IDENTITIES = SETTINGS.identities()
if IDENTITIES.single_user:
    log.warning("no tokens file configured: single-user mode, every request acts as %s (admin)", IDENTITIES.local["user"])


async def build(stores: wiring.Stores) -> tuple[SubmitService, ReadService]:
    writes = SubmitService(jobs=stores.jobs, queue=stores.queue, history=stores.history, sink=stores.sink,
                           priorities=PRIORITIES, limits=LIMITS, clock=clock.now_iso, runtime=RUNTIME, sharing=SHARING,
                           sweep_max=SWEEP_MAX, registries=REGISTRIES)
    reads = ReadService(jobs=stores.jobs, queue=stores.queue, history=stores.history,
                        board=stores.board, logs=wiring.log_source_for(SETTINGS, stores.nc),
                        priorities=PRIORITIES, rules=RULES, notify=NOTIFY, usage_source=USAGE, sharing=SHARING,
                        clock=clock.now_iso)
    return writes, reads


SERVICE = wiring.Lazy(SETTINGS, "sentinels-submit", build)


async def write(request):
    ce = await read_event(request)
    who = IDENTITIES.identify(request.headers.get("authorization"))
    svc, _ = await SERVICE.get()
    kind = ce["type"]
    if kind == events.JOB_SUBMIT:
        return await svc.submit(ce["data"], who, ce["source"], ce["id"])
    if kind == events.JOB_CANCEL:
        return await svc.cancel(ce["data"], who)
    if kind == events.JOB_REPRIORITIZE:
        return await svc.reprioritize(ce["data"], who)
    raise InvalidSpec(f"unknown CloudEvent type {kind!r} (accepted: {', '.join(events.WRITE_TYPES)})", "type")


@functions_framework.aio.http
async def submit(request):
    path = path_of(request)
    if not (request.method == "GET" and (path == "/openapi.json" or path.startswith("/v1/"))):
        wrong = misrouted(request)
        if wrong is not None:
            return wrong
    if request.method == "GET" and path == "/":
        jetstream = await wiring.jetstream_health(SERVICE)
        return JSONResponse({"ok": jetstream == "ok", "function": "submit", "single_user": IDENTITIES.single_user,
                             "jetstream": jetstream, "api": "/openapi.json"}, status_code=200 if jetstream == "ok" else 503)
    try:
        if request.method == "GET" and path == "/":
            return JSONResponse({"ok": True, "function": "submit", "single_user": IDENTITIES.single_user,
                                 "api": "/openapi.json"})
        if request.method == "GET" and path == "/openapi.json":
            return api.openapi()
        if request.method == "GET" and path.startswith("/v1/"):
            who = dict(IDENTITIES.identify(request.headers.get("authorization")), single_user=IDENTITIES.single_user)
            _, reads = await SERVICE.get()
            return await api.get(request, who, reads)
        if request.method == "POST" and path == "/":
            status, body = await write(request)
            return JSONResponse(body, status_code=status)
        raise NotFound(f"no {request.method} {path} here: reads are GET /v1/..., writes are CloudEvents on POST / "
                       "(see /openapi.json)", "path")
    except Exception as exc:  # mapped to 4xx/503/500 with a JSON body
        return error_response(exc)
