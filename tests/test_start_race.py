"""A job that fails before it ever reports running reaches FAILED with its reason, every time.

The real local executor (`Kubelet`) runs in this process behind a `Cluster` that calls it
directly; its events go to the real lifecycle service like the router delivers them: at
once or a little later, and again with back-off when the handler asks to retry. The Job's
"failed" can so arrive before or after the scheduler records SCHEDULED; both orders must
end the same way. (Before the fix, an event that came first was dropped as stale and the
job stayed SCHEDULED for ever.)
"""

import asyncio
import dataclasses
import random

import pytest

from sentinels.functions.on_job_event.service import LifecycleService, RetryLater
from sentinels.functions.schedule.service import ScheduleService
from sentinels.functions.submit.service import SubmitService
from sentinels import clock
from sentinels.adapters.memory import MemoryHistory, MemoryJobs, MemoryQueue
from sentinels.domain import lifecycle, local_objects, states
from sentinels.domain.errors import InvalidSpec
from sentinels.domain.placement import Node
from sentinels.domain.priority import PriorityConfig
from sentinels.domain.scheduler_config import SchedulerConfig
from sentinels.domain.spec import Limits, validate
from sentinels.embedded.kubelet import Kubelet
from sentinels.embedded.machine import Capacity

ADMIN = {"user": "root", "role": "admin"}
ROUNDS = 50


class RouterLikeSink:
    """Delivers each event to the lifecycle either at once (before the launch call returns to
    the scheduler, as a fast router does) or a little later, redelivering with back-off on
    RetryLater, as the embedded router does."""

    def __init__(self, rng: random.Random):
        self.life = None
        self.rng = rng
        self.tasks: list[asyncio.Task] = []
        self.outcomes: list[str] = []

    async def emit(self, event):
        if not event["type"].startswith("dev.knative.apiserver"):
            return
        if self.rng.random() < 0.5:
            try:  # delivered and handled before the scheduler hears back from the launch
                self.outcomes.append(await self.life.handle(event["type"], event["data"], event["id"]))
                return
            except RetryLater:
                pass
        self.tasks.append(asyncio.create_task(self._deliver(event, self.rng.choice([0, 0.001, 0.003]))))

    async def _deliver(self, event, delay):
        for attempt in range(6):
            await asyncio.sleep(delay)
            try:
                self.outcomes.append(await self.life.handle(event["type"], event["data"], event["id"]))
                return
            except RetryLater:
                delay = 0.05 * 2 ** attempt
        self.outcomes.append("dead-letter")


class InProcessCluster:
    """The `Cluster` port straight onto a Kubelet (what the executor process does over NATS)."""

    def __init__(self, kubelet: Kubelet):
        self.k = kubelet

    async def nodes(self):
        raw = self.k.node()
        return [Node(**{**raw, "taints": tuple(raw["taints"])})]

    async def launch(self, record, extra_env):
        self.k.launch(record, extra_env)
        await self.k.flush()

    async def stop(self, record):
        self.k.stop(record["id"])
        await self.k.flush()

    async def active(self):
        return self.k.active()

    async def logs(self, record, tail=None):
        return []


async def test_a_job_failing_before_it_runs_always_ends_failed_with_its_reason(tmp_path):
    rng = random.Random(8)
    sink = RouterLikeSink(rng)
    kubelet = Kubelet(tmp_path / "jobs", Capacity(cpu_millis=64_000, memory_bytes=64 * 2**30, gpus=()), sink)
    jobs, queue, history = MemoryJobs(), MemoryQueue(), MemoryHistory()
    prio = PriorityConfig.from_dict(None)
    cluster = InProcessCluster(kubelet)
    # a spec with no command reaches the executor only past submit's check (e.g. an older
    # record); the executor fails it without ever starting a process
    submitter = SubmitService(jobs, queue, history, sink, prio, Limits(), clock.now_iso)
    sched = ScheduleService(jobs, queue, history, sink, cluster, prio, SchedulerConfig(), clock.now_iso)
    sink.life = LifecycleService(jobs, queue, history, sink, cluster, clock.now_iso, lifecycle.Policy())
    ids = []
    for i in range(ROUNDS):
        _, rec = await submitter.submit({"spec": {"image": "python:3.11", "name": f"nocmd-{i}"}}, ADMIN, "t", f"e{i}")
        ids.append(rec["id"])
        await sched.trigger()
        await asyncio.sleep(rng.choice([0, 0.001]))
    await asyncio.wait_for(asyncio.gather(*sink.tasks), 60)
    assert "dead-letter" not in sink.outcomes
    for job_id in ids:
        record = (await jobs.get(job_id))[0]
        assert record["state"] == states.FAILED, (job_id, record["state"], record["reason"])
        assert local_objects.NO_COMMAND_REASON in record["reason"] and "needs a command" in record["reason"]


def test_submit_refuses_a_job_without_command_for_the_local_runtime():
    local = dataclasses.replace(Limits(), command_required=True)
    with pytest.raises(InvalidSpec, match="command: required here") as e:
        validate({"image": "python:3.11"}, local)
    assert e.value.field == "command"
    assert validate({"image": "python:3.11", "command": ["true"]}, local)["command"] == ["true"]
    assert validate({"image": "python:3.11"}, Limits())["command"] == []  # Kubernetes: the image's entrypoint
