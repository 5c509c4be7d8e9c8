"""The local executor process of the embedded default: `python -m sentinels.embedded.executor`.

It serves the `Cluster` verbs (`sentinels.local.nodes|launch|stop|active|logs`, JSON
request/reply on core NATS) for `adapters.local.LocalCluster`, and publishes every
Job/Pod change to SENTINELS_EVENTS as an ApiServerSource CloudEvent. Jobs run in their own
sessions, so stopping or restarting the executor leaves them running; the next executor
adopts them. One executor per SENTINELS_HOME (a lock file says so).
"""

import asyncio
import fcntl
import json
import logging
import signal
import sys
from typing import Optional

from ..adapters import jetstream
from ..adapters.local import SUBJECT, VERBS
from ..domain.errors import ConfigError, InvalidSpec, SentinelsError
from ..settings import Settings
from . import machine, readiness, runtimes, usage
from .builder import Builder
from .kubelet import Kubelet

log = logging.getLogger("sentinels.executor")
POLL_SECONDS = 0.02  # how soon an ended process is noticed; a poll only checks live children


async def _answer(kubelet: Kubelet, verb: str, body: dict, builder: Optional[Builder] = None) -> dict:
    if verb == "nodes":
        return {"nodes": [kubelet.node()]}
    if verb == "active":
        return {"active": kubelet.active()}
    if verb == "jobs":
        return {"jobs": kubelet.jobs(body.get("ids"))}
    if verb == "launch":
        reply = kubelet.launch(body.get("record"), body.get("extra_env"))
    elif verb == "build" and builder is not None:
        reply = builder.start(body.get("record"))
        await builder.flush()
    elif verb == "stop":
        reply = kubelet.stop(body.get("job"), body.get("why"))
        if builder is not None and builder.stop(body.get("job")):  # a cancel during its build
            reply["build_stopping"] = True
            await builder.flush()
    else:
        return {"lines": kubelet.logs(body.get("job"), body.get("tail"))}
    await kubelet.flush()
    return reply


def handler(kubelet: Kubelet, verb: str, builder: Optional[Builder] = None):
    async def handle(msg) -> None:
        try:
            try:
                body = json.loads(msg.data or b"{}")
            except ValueError:
                raise InvalidSpec(f"{verb}: the request is not JSON") from None
            if not isinstance(body, dict):
                raise InvalidSpec(f"{verb}: the request must be a JSON object")
            reply = await _answer(kubelet, verb, body, builder)
        except SentinelsError as e:
            reply = {**e.to_dict(), "status": e.status}
        except Exception as e:  # never leave the caller waiting for a timeout
            log.exception("%s failed", verb)
            reply = {"error": f"local executor: {verb} failed: {type(e).__name__}: {e}", "status": 500}
        if msg.reply:
            await msg.respond(json.dumps(reply).encode())
    return handle


def _log_failure(done: asyncio.Future) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("usage sampling failed: %r", done.exception())


def _lock(settings: Settings):
    jobs = settings.home / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    f = open(jobs / ".executor.lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"another local executor already runs for {settings.home}") from None
    return f


async def serve(settings: Settings, capacity: machine.Capacity, stop: asyncio.Event,
                runtime: runtimes.Runtime | None = None) -> None:
    nc = await jetstream.connect(settings.nats_url, "sentinels-executor", reconnect=True)
    try:
        js = nc.jetstream(timeout=5)
        await jetstream.ensure(js)
        kubelet = Kubelet(settings.home / "jobs", capacity, jetstream.JetStreamSink(js), runtime=runtime)
        kubelet.recover()
        await kubelet.flush()
        builder = Builder(settings.home / "jobs", settings.builds(), kubelet.sink)
        builder.recover()
        await builder.flush()
        for verb in VERBS:
            await nc.subscribe(SUBJECT.format(verb), cb=handler(kubelet, verb, builder))
        await nc.flush()
        log.info("local executor ready (runtime %s): %s", kubelet.runtime.describe(), kubelet.node())
        readiness.mark(settings.home, "executor")
        sampler = usage.Sampler(settings.home / "jobs", mlflow_uri=settings.mlflow_uri())
        sampling: asyncio.Future | None = None
        while not stop.is_set():
            kubelet.poll()
            builder.poll()
            await kubelet.flush()
            await builder.flush()
            if sampler.due() and (sampling is None or sampling.done()):
                # CPU, memory, GPU of running jobs for `sentinels top` and MLflow, off the loop
                sampling = asyncio.ensure_future(asyncio.to_thread(sampler.tick, dict(kubelet.runs)))
                sampling.add_done_callback(_log_failure)
            try:
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)
            except asyncio.TimeoutError:
                pass
    finally:
        await nc.drain()


async def _main(settings: Settings, capacity: machine.Capacity, runtime: runtimes.Runtime) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, capacity, stop, runtime)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s executor %(levelname)s %(message)s")
    try:
        settings = Settings.load()
        capacity = machine.capacity(settings.local(), settings.home / "jobs")
        runtime = runtimes.select(runtimes.RuntimeConfig.from_dict(settings.local(), settings.env, settings.registries()))
        lock = _lock(settings)
        asyncio.run(_main(settings, capacity, runtime))
        lock.close()
    except SentinelsError as e:  # ConfigError, Unavailable: a clear line, no stack trace
        print(f"sentinels executor: {e.message}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
