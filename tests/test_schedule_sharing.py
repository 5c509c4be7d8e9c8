"""Quotas, fair share and preemption through the schedule and lifecycle services (in-memory ports)."""

from sentinels import clock
from sentinels.adapters.memory import MemoryBoard, MemoryCluster, MemoryHistory, MemoryJobs, MemoryQueue, MemorySink
from sentinels.domain import events, lifecycle, sharing
from sentinels.domain.placement import Node
from sentinels.domain.priority import PriorityConfig
from sentinels.domain.scheduler_config import SchedulerConfig
from sentinels.domain.spec import Limits
from sentinels.functions.on_job_event.service import LifecycleService
from sentinels.functions.schedule.holdings import Holdings
from sentinels.functions.schedule.service import ScheduleService
from sentinels.functions.submit.service import SubmitService

GI = 2**30
PRIO = {"classes": {"critical": 1000, "normal": 10, "low": 1}, "default": "normal",
        "roles": {"admin": "critical", "user": "critical"}}


class World:
    def __init__(self, nodes, quotas=None, fair_share=None, preemption=None):
        self.jobs, self.queue, self.history, self.sink = MemoryJobs(), MemoryQueue(), MemoryHistory(), MemorySink()
        self.cluster, self.board = MemoryCluster(nodes), MemoryBoard()
        prio = PriorityConfig.from_dict(PRIO)
        self.sharing = sharing.Sharing.from_dict(quotas, fair_share, preemption, prio)
        self.submitter = SubmitService(self.jobs, self.queue, self.history, self.sink, prio, Limits(), clock.now_iso,
                                       sharing=self.sharing)
        self.sched = ScheduleService(self.jobs, self.queue, self.history, self.sink, self.cluster, prio,
                                     SchedulerConfig.from_dict({}), clock.now_iso, board=self.board,
                                     holdings=Holdings(self.jobs, self.cluster, self.board, self.sharing, prio.classes))
        self.life = LifecycleService(self.jobs, self.queue, self.history, self.sink, self.cluster, clock.now_iso,
                                     lifecycle.Policy(max_attempts=1))
        self.n = 0

    async def submit(self, team, gpu=1, priority="normal", user=None, **spec):
        self.n += 1
        who = {"user": user or f"{team}-user", "team": team, "role": "user"}
        body = {"image": "python:3.11", "command": ["true"], "priority": priority, "name": f"j{self.n}",
                "resources": {"cpu": 1, "memory": "1Gi", "gpu": gpu}, **spec}
        _, rec = await self.submitter.submit({"spec": body}, who, "tests", f"ev{self.n}")
        return rec["id"]

    async def state(self, job_id):
        return (await self.jobs.get(job_id))[0]

    async def reason(self, job_id):
        return ((await self.board.get("waiting")) or {}).get("reasons", {}).get(job_id)

    async def run_preemptions(self):
        asked = [e for e in self.sink.events if e["type"] == events.JOB_PREEMPT_REQUESTED]
        return [await self.life.preempt(e["data"]["job"]) for e in asked]


def gpu_node(name, gpu):
    return Node(name, 64000, 256 * GI, gpu, 64000, 256 * GI, gpu)


async def test_two_teams_one_over_quota_waits_with_the_reason_and_never_fails():
    w = World([gpu_node("g", 4)], quotas={"teams": {"vision": {"gpu": 1}, "nlp": {"gpu": 4}}})
    v1, v2 = await w.submit("vision"), await w.submit("vision")
    n1 = await w.submit("nlp")
    await w.sched.trigger()
    assert set(w.cluster.launches) == {v1, n1}
    assert await w.reason(v2) == "team vision uses 1 of its 1 GPUs; no borrowing allowed"
    assert (await w.state(v2))["state"] == "QUEUED"
    w.cluster.finish(v1)
    await w.sched.trigger()
    assert v2 in w.cluster.launches


async def test_fair_share_puts_the_team_that_used_least_first():
    w = World([gpu_node("g", 1)], fair_share={"half_life": "1h"})
    busy = await w.submit("vision")
    await w.sched.trigger()
    w.holdings_ledger_before = await w.board.get("usage")
    v2 = await w.submit("vision")
    n1 = await w.submit("nlp")  # submitted after v2, but nlp has used nothing
    doc = {"usage": {"vision": [5000.0, clock.parse_iso(clock.now_iso())]}, "marks": {}}
    await w.board.put("usage", doc)
    w.sched.holdings._ledger = None  # read the ledger again (as after a restart)
    w.cluster.finish(busy)
    await w.sched.trigger()
    assert w.cluster.launches[-1] == n1 and (await w.state(v2))["state"] == "QUEUED"
    assert "vision" in (await w.board.get("usage"))["usage"]


async def test_preemption_requeues_the_victim_at_the_front_without_counting_a_failure():
    w = World([gpu_node("g", 2)], preemption={"classes": ["critical"]})
    low = await w.submit("nlp", gpu=2, priority="low")
    await w.sched.trigger()
    urgent = await w.submit("vision", gpu=2, priority="critical")
    await w.sched.trigger()
    assert (await w.state(low))["preempted_by"] == urgent
    assert (await w.reason(urgent)).startswith("preempting 1 job on g")
    await w.sched.trigger()  # asked once: the next pass waits for the victim to stop
    assert (await w.reason(urgent)).startswith("waiting for 1 preempted job to stop")
    assert await w.run_preemptions() == ["queued"]
    victim = await w.state(low)
    assert victim["state"] == "QUEUED" and victim["attempts"] == 2 and victim["preemptions"] == 1
    assert victim["reason"].startswith(f"preempted by {urgent}")
    await w.sched.trigger()
    assert w.cluster.launches[-1] == urgent
    hist = [(e["to"], e["reason"]) for e in await w.history.of(low)]
    assert hist[-1][0] == "QUEUED" and urgent in hist[-1][1]
    # the victim was told why before it was stopped, and its next run is told again
    assert w.cluster.told[low].startswith(f"preempted by {urgent} (critical, vision-user) at ")
    assert "SENTINELS_PREEMPTED" not in w.cluster.envs[low]
    w.cluster.finish(urgent)
    await w.sched.trigger()
    assert w.cluster.launches[-1] == low and w.cluster.envs[low]["SENTINELS_PREEMPTED"] == w.cluster.told[low]


async def test_no_preemption_without_configuration_and_not_of_protected_jobs():
    w = World([gpu_node("g", 2)])
    await w.submit("nlp", gpu=2, priority="low")
    await w.sched.trigger()
    await w.submit("vision", gpu=2, priority="critical")
    await w.sched.trigger()
    assert not [e for e in w.sink.events if e["type"] == events.JOB_PREEMPT_REQUESTED]
    w = World([gpu_node("g", 2)], preemption={"classes": ["critical"], "protected": ["normal"]})
    keep = await w.submit("nlp", gpu=2, preemptible=False)
    await w.sched.trigger()
    await w.submit("vision", gpu=2, priority="critical")
    await w.sched.trigger()
    assert not (await w.state(keep)).get("preempted_by")


async def test_reclaim_takes_back_borrowed_capacity():
    w = World([gpu_node("g", 4)], quotas={"teams": {"vision": {"gpu": 2, "borrowing": {"gpu": 2}}, "nlp": {"gpu": 2}}})
    borrowed = [await w.submit("vision") for _ in range(4)]
    await w.sched.trigger()
    assert set(w.cluster.launches) == set(borrowed)
    mine = await w.submit("nlp", gpu=1)
    await w.sched.trigger()
    marked = [j for j in borrowed if (await w.state(j)).get("preempted_by") == mine]
    assert len(marked) == 1
    await w.run_preemptions()
    await w.sched.trigger()
    assert w.cluster.launches[-1] == mine


class AnswersLate(MemoryCluster):
    """A launch that happens but whose answer is lost (a NATS request timing out on a loaded
    machine), or that is held until the test lets it answer."""

    def __init__(self, nodes):
        super().__init__(nodes)
        self.lose_answer: set = set()
        self.hold = None  # an asyncio.Event a launch waits for

    async def launch(self, record, extra_env):
        await super().launch(record, extra_env)
        if self.hold is not None:
            await self.hold.wait()
        if record["id"] in self.lose_answer:
            from sentinels.domain.errors import Unavailable
            raise Unavailable("local executor: no answer within 5s")


def borrowing_world():
    w = World([gpu_node("g", 2)], quotas={"teams": {"vision": {"gpu": 1, "borrowing": {"gpu": 1}}, "nlp": {"gpu": 1}}})
    w.cluster = w.sched.cluster = w.sched.holdings.cluster = w.life.cluster = AnswersLate([gpu_node("g", 2)])
    return w


async def test_a_borrower_whose_launch_answer_was_lost_is_still_reclaimed():
    """The sharing end-to-end test failed on a loaded machine with the reclaiming job stuck on
    "needs 1 CPU": the borrower's launch had answered too late, the timer's reconcile repaired its
    record without a node, and a running job without a node was invisible to quotas and
    preemption (its team was not seen borrowing)."""
    w = borrowing_world()
    v1 = await w.submit("vision")
    await w.sched.trigger()
    v2 = await w.submit("vision")
    w.cluster.lose_answer.add(v2)
    await w.sched.trigger()
    assert v2 in w.cluster.running and (await w.state(v2))["state"] == "QUEUED"  # it runs; the record lags
    assert await w.sched.reconcile() == 1
    assert (await w.state(v2))["node"] == "g"
    n1 = await w.submit("nlp")
    await w.sched.trigger()
    assert (await w.state(v2))["preempted_by"] == n1 and (await w.state(v1)).get("preempted_by") is None
    assert (await w.reason(n1)).startswith("preempting 1 job on g")


async def test_reconcile_waits_for_the_pass_that_is_launching():
    """A job launched by a pass in flight is not "repaired" by the timer's reconcile (which would
    take the record from the pass and leave it without its node)."""
    import asyncio

    w = borrowing_world()
    j = await w.submit("vision")
    w.cluster.hold = asyncio.Event()
    pass_ = asyncio.create_task(w.sched.trigger())
    while j not in w.cluster.running:
        await asyncio.sleep(0)
    fix = asyncio.create_task(w.sched.reconcile())
    await asyncio.sleep(0.01)
    w.cluster.hold.set()
    await pass_
    assert await fix == 0
    rec = await w.state(j)
    assert rec["state"] == "SCHEDULED" and rec["node"] == "g" and rec["reason"] == "scheduled on g"


async def test_a_repaired_record_gets_its_node_from_the_running_pod():
    from sentinels.domain import observe

    rec = {"id": "abcdefghij", "state": "SCHEDULED", "attempts": 1, "k8s_job": "sentinels-abcdefghij", "spec": {}}
    obs = observe.Observation(what=observe.RUNNING, kind="Pod", job_id=rec["id"], reason="running on g", node_name="g")
    step = lifecycle.decide(rec, obs, 0.0)
    assert step.to == "RUNNING" and step.changes == {"node": "g"}
    assert lifecycle.decide(dict(rec, node="g"), obs, 0.0).changes == {}


async def test_the_end_of_a_preempted_job_requeues_it_even_before_the_preemption_is_applied():
    """The local executor reports the stopped run's end at once; if that event is handled before
    the lifecycle's own requeue, it is still a preemption, never a failure."""
    w = World([gpu_node("g", 2)], preemption={"classes": ["critical"]})
    low = await w.submit("nlp", gpu=2, priority="low")
    await w.sched.trigger()
    urgent = await w.submit("vision", gpu=2, priority="critical")
    await w.sched.trigger()
    from sentinels.domain import observe

    rec = await w.state(low)
    obs = observe.Observation(what=observe.FAILED, kind="Pod", job_id=low, reason="exit code 143", exit_code=143,
                              attempt=rec["attempts"])
    step = lifecycle.decide(dict(rec, state="RUNNING"), obs, 0.0)
    assert step.to == "QUEUED" and step.reason.startswith(f"preempted by {urgent}")


def test_our_own_disruption_target_is_a_preemption_not_an_eviction():
    from sentinels.domain import observe

    rec = {"id": "abcdefghij", "state": "RUNNING", "attempts": 1, "priority": "low", "k8s_job": "sentinels-abcdefghij",
           "spec": {}, "preempted_by": "zz2yy3xx4w", "preempted_note": "preempted by zz2yy3xx4w (critical, vera) at t"}
    obs = observe.Observation(what=observe.DISRUPTED, kind="Pod", job_id=rec["id"], reason="preempted", attempt=1)
    step = lifecycle.decide(rec, obs, 0.0)
    assert step.to == "QUEUED" and step.reason == "preempted by zz2yy3xx4w (critical, vera) at t; requeued at the front of low"
    assert step.changes["preemptions"] == 1
    plain = lifecycle.decide({k: v for k, v in rec.items() if k != "preempted_by"}, obs, 0.0)
    assert plain.reason.startswith("requeued after")  # someone else's eviction: counted as a cut-short attempt
