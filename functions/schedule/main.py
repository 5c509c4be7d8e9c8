"""functions-framework entry point of the schedule function (CloudEvent signature, async).

Triggered by job.queued, the timer, capacity.changed and job-finished events; every
trigger runs (or coalesces into) one scheduling pass. The timer also reconciles.
"""

import logging

import functions_framework.aio

from sentinels import clock, wiring
from sentinels.domain import events
from sentinels import expected_secrets
from sentinels.settings import Settings

from sentinels.functions.schedule.capacity import CapacityAlerts
from sentinels.functions.schedule.holdings import Holdings
from sentinels.functions.schedule.placeholders import PlaceholderSync
from sentinels.functions.schedule.service import ScheduleService

log = logging.getLogger("sentinels.schedule")
SETTINGS = Settings.load()
expected_secrets.check('sentinels-schedule', SETTINGS.env)  # a Secret missing on Kubernetes: one clear line
PRIORITIES = SETTINGS.priorities()
CONFIG = SETTINGS.scheduler()
SHARING = SETTINGS.sharing()
CAPACITY = SETTINGS.notify().capacity
TRACKER = wiring.tracker_for(SETTINGS)
wiring.warm(TRACKER, SETTINGS)


def mlflow_env(record: dict, run: dict | None) -> dict:
    """What the container needs to log into the job's own MLflow run."""
    if TRACKER is None:
        return {}
    env = {"MLFLOW_TRACKING_URI": SETTINGS.mlflow_uri(), "MLFLOW_EXPERIMENT_NAME": record["spec"]["experiment"]}
    if run and run.get("run_id"):
        env["MLFLOW_RUN_ID"] = run["run_id"]
    return env


async def build(stores: wiring.Stores) -> ScheduleService:
    alerts = CapacityAlerts(stores.board, stores.sink, CAPACITY, clock.now_iso)
    cluster = wiring.cluster_for(SETTINGS, stores.nc)
    hooks = [alerts.after_pass]
    target = wiring.placeholders_for(SETTINGS, cluster)
    if target is not None:
        hooks.append(PlaceholderSync(target, SETTINGS.placeholders(), SETTINGS.kubernetes().namespace).after_pass)

    async def after_pass(decision, nodes, waiting, now: float) -> None:
        for hook in hooks:
            await hook(decision, nodes, waiting, now)

    return ScheduleService(
        jobs=stores.jobs, queue=stores.queue, history=stores.history, sink=stores.sink,
        cluster=cluster, priorities=PRIORITIES, cfg=CONFIG,
        clock=clock.now_iso, tracker=TRACKER, env_for_run=mlflow_env, after_pass=after_pass,
        board=stores.board, holdings=Holdings(stores.jobs, cluster, stores.board, SHARING, PRIORITIES.classes,
                                              refresh_seconds=HOLDINGS_REFRESH_SECONDS),
        meter=stores.meter())


SERVICE = wiring.Lazy(SETTINGS, "sentinels-schedule", build)
# Who holds what is kept from this function's own placements and the end events it gets;
# the cluster's list of every running Job is read again at most this often (it is what
# a pass would otherwise read every time, growing with the cluster's Jobs)
HOLDINGS_REFRESH_SECONDS = 5.0
ENDED = (events.JOB_SUCCEEDED, events.JOB_FAILED, events.JOB_CANCELLED, events.JOB_REQUEUED)
# Reconciling lists every sentinels Job in the cluster: on the timer, at most once per
# `lifecycle.reconcile_seconds` (the first tick after a start always reconciles), and on
# every tick while a launch whose outcome is unknown backs off; while passes follow each other
# (a burst), between two of them
RECONCILE = clock.Every(SETTINGS.lifecycle().reconcile_seconds)


@functions_framework.aio.cloud_event
async def schedule(cloud_event):
    svc = await SERVICE.get()
    if cloud_event["type"] == events.JOB_BUILDING:
        log.info("build of %s: %s", (cloud_event.data or {}).get("job"),
                 await svc.start_build((cloud_event.data or {}).get("job")))
        return
    if cloud_event["type"] in ENDED and svc.holdings is not None:
        svc.holdings.forget(str((cloud_event.data or {}).get("job")))
    await svc.trigger(reconcile=cloud_event["type"] == events.PING and (RECONCILE.due() or svc.launches_in_doubt))
