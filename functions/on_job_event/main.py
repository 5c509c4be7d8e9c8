"""functions-framework entry point of the lifecycle function (HTTP signature, async).

HTTP signature so that "come back later" (an event ahead of the state it needs, or the
cluster API down) answers 503 and the broker redelivers, while bad or foreign events
answer 200 and are dropped with a log line.
"""

import logging

import functions_framework.aio
from starlette.responses import JSONResponse

from sentinels import clock, wiring
from sentinels.domain import events
from sentinels.http import error_response, misrouted, read_event
from sentinels import expected_secrets
from sentinels.settings import Settings

from sentinels.functions.on_job_event.service import LifecycleService, RetryLater

log = logging.getLogger("sentinels.on_job_event")
SETTINGS = Settings.load()
expected_secrets.check('sentinels-on-job-event', SETTINGS.env)  # a Secret missing on Kubernetes: one clear line
LIFECYCLE = SETTINGS.lifecycle()
TRACKER = wiring.tracker_for(SETTINGS)
wiring.warm(TRACKER, SETTINGS)


def outputs_dir(record: dict):
    """Where a finished job's outputs are readable by this function."""
    root = LIFECYCLE.outputs_root
    if root:
        return f"{root.rstrip('/')}/{record['id']}"
    if SETTINGS.backend() == "local":
        return str(SETTINGS.home / "jobs" / record["id"] / "outputs")
    return None


async def build(stores: wiring.Stores) -> LifecycleService:
    return LifecycleService(
        jobs=stores.jobs, queue=stores.queue, history=stores.history, sink=stores.sink,
        cluster=wiring.cluster_for(SETTINGS, stores.nc), clock=clock.now_iso, policy=LIFECYCLE.policy,
        tracker=TRACKER, outputs_dir=outputs_dir, board=stores.board, peaks=wiring.peak_usage_for(SETTINGS))


RECONCILE = clock.Every(LIFECYCLE.reconcile_seconds)
SERVICE = wiring.Lazy(SETTINGS, "sentinels-on-job-event", build)


@functions_framework.aio.http
async def on_job_event(request):
    wrong = misrouted(request)
    if wrong is not None:
        return wrong
    if request.method == "GET":
        return JSONResponse({"ok": True, "function": "on_job_event"})
    try:
        ce = await read_event(request)
        svc = await SERVICE.get()
        kind, data = ce["type"], ce["data"]
        if kind.startswith("dev.knative.apiserver.resource."):
            outcome = await svc.handle(kind, data if isinstance(data, dict) else {}, ce["id"], ce.get("time"))
        elif kind == events.JOB_CANCEL_REQUESTED:
            outcome = await svc.cancel((data or {}).get("job"))
        elif kind == events.JOB_PREEMPT_REQUESTED:
            outcome = await svc.preempt((data or {}).get("job"))
        elif kind == events.PING:
            outcome = f"mlflow caught up {await svc.catch_up()}"
            if RECONCILE.due():
                outcome += f"; reconciled {await svc.reconcile()}"
        elif kind == events.JOB_SCHEDULED:
            got = await svc.jobs.get((data or {}).get("job", ""))
            if got:
                await svc.sync_mlflow(got[0])
            outcome = "mlflow"
        else:
            outcome = "ignored"
        return JSONResponse({"outcome": outcome})
    except RetryLater as e:
        return JSONResponse({"error": str(e)}, status_code=503)
    except Exception as exc:
        return error_response(exc)
