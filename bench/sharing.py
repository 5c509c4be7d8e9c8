"""Issue 16 numbers: placement with quotas and fair share (100,000 queued, 1,000 nodes,
50 teams) and one preemption decision over 10,000 running jobs. Pure decisions only:
the same functions the schedule function calls, on generated data. Each line gives the
median wall time and the median CPU time of the process (on a loaded machine the wall
time includes waiting for a core), and the load average is printed first.
"""

import random
import time

from common import load, median, ms

from sentinels.domain import fairshare, preemption, quota, sharing
from sentinels.domain.placement import Node, Waiting, place
from sentinels.domain.priority import PriorityConfig
from sentinels.domain.scheduler_config import SchedulerConfig

GI = 2**30
TEAMS = [f"team-{i:02d}" for i in range(50)]


def nodes(n=1000):
    """Mostly full, as a busy cluster is: one node in five has 8 CPUs free, one in twenty 2 GPUs."""
    return [Node(f"node-{i:04d}", 64000, 512 * GI, 8 if i % 4 == 0 else 0, 8000 if i % 5 == 0 else 0,
                 64 * GI if i % 5 == 0 else 0, 2 if i % 20 == 0 else 0) for i in range(n)]


def queued(n, rnd):
    classes = [("critical", 1000), ("high", 100), ("normal", 10), ("low", 1)]
    out = []
    for i in range(n):
        klass, rank = classes[rnd.randrange(4)]
        out.append(Waiting(f"job{i:06d}", klass, rank, i, rnd.choice([500, 1000, 4000]), rnd.choice([1, 4, 16]) * GI,
                           rnd.choice([0, 0, 0, 1, 2]), team=rnd.choice(TEAMS), owner=f"user{rnd.randrange(500)}"))
    return out


def timed(fn, runs):
    """(median wall seconds, median CPU seconds, last result) of `runs` calls."""
    wall, cpu, out = [], [], None
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return median(wall), median(cpu), out


def main():
    print(load())
    rnd = random.Random(16)
    prio = PriorityConfig.from_dict(None)
    cfg = sharing.Sharing.from_dict(
        {"teams": {t: {"gpu": 120, "cpu": 400, "memory": "2Ti", "jobs": 300, "borrowing": {"gpu": 40}} for t in TEAMS}},
        {"half_life": "7d"}, {"classes": ["critical"]}, prio)
    cluster = nodes()
    running = [sharing.RunningJob(f"run{i:05d}", f"node-{rnd.randrange(1000):04d}", "normal", 10, rnd.choice(TEAMS), "u",
                                  1000, 4 * GI, rnd.choice([0, 1]), rnd.uniform(10, 36000)) for i in range(10_000)]
    ledger, _ = fairshare.accrue({}, {}, sharing.accrual(cfg, running, 100000.0), 100000.0, cfg.fair_share)
    snap = sharing.snapshot(cfg, running, ledger, 100000.0)
    all_jobs = queued(100_000, rnd)
    window = SchedulerConfig().window
    per_class: dict = {}
    for w in all_jobs:
        per_class.setdefault(w.klass, []).append(w)
    heads = [w for k in prio.ordered() for w in per_class.get(k, [])[:window]]

    def decide(jobs):
        ordered = fairshare.order(jobs, lambda w: cfg.fair_share.key(w.team, w.owner), snap.usage)
        return place(ordered, cluster, quotas=cfg.quotas, held=snap.held)

    for label, jobs in ((f"the {len(heads):,} heads a pass reads (window {window} per class)", heads),
                        ("all 100,000 queued", all_jobs)):
        wall, cpu, d = timed(lambda: decide(jobs), 5)
        print(f"placement with quotas and fair share, {label}, 1,000 nodes, 50 teams: median {ms(wall)} "
              f"(CPU {ms(cpu)}; {len(d.placements)} placed, {len(d.by_quota)} held by quota)   [target <= 100 ms]")
    wall, cpu, _ = timed(lambda: place(heads, cluster), 5)
    print(f"same heads without quotas or fair share: median {ms(wall)} (CPU {ms(cpu)})")

    rooms = [preemption.NodeRoom(n.name, n.free_cpu_millis, n.free_memory_bytes, n.free_gpu) for n in cluster]
    head = preemption.Candidate("head", 1000, "team-00", 4000, 16 * GI, 8, True, False)
    wall, cpu, plan = timed(lambda: preemption.plan(head, rooms, snap.running), 7)
    print(f"preemption decision, one head job over 10,000 running: median {ms(wall)} (CPU {ms(cpu)}; "
          f"{len(plan.victims) if plan else 0} victims on {plan.node if plan else '-'})   [target <= 20 ms]")
    print(load())
    assert quota.demand(1, 1, 1)["jobs"] == 1


if __name__ == "__main__":
    main()
