"""Placement: order, fit on one node, selectors, taints, node health, strategies, reasons."""

from sentinels.domain.placement import (BEST_EFFORT, BY_ORDER, NEVER_FITS, NO_ROOM, RESERVED, STRICT, Node, Wait,
                                        Waiting, place)

GI = 2**30


def node(name, cpu=8, mem=32, gpu=0, free_cpu=None, free_mem=None, free_gpu=None, **kw):
    return Node(name, cpu * 1000, mem * GI, gpu, (free_cpu if free_cpu is not None else cpu) * 1000,
                (free_mem if free_mem is not None else mem) * GI, free_gpu if free_gpu is not None else gpu, **kw)


def job(i, cpu=1, mem=1, gpu=0, rank=10, waited=0.0, **kw):
    return Waiting(f"job{i}", "c", rank, i, cpu * 1000, mem * GI, gpu, waited_seconds=waited, **kw)


def test_places_in_order_and_accounts_for_what_it_placed():
    d = place([job(1, cpu=4), job(2, cpu=4), job(3, cpu=4)], [node("a", cpu=8)])
    assert d.placements == [("job1", "a"), ("job2", "a")]
    assert d.reasons["job3"] == "needs 4 CPU on one node; the largest free is 0 CPU"


def test_fit_must_be_on_one_node():
    d = place([job(1, gpu=4)], [node("a", gpu=2), node("b", gpu=2)])
    assert not d.placements
    assert d.reasons["job1"].startswith("can never fit as the cluster is now: needs 4 GPUs on one node; the largest node has 2 GPUs")
    assert "job1" in d.never_fits


def test_gpu_short_now_names_the_largest_free():
    d = place([job(1, gpu=4)], [node("a", gpu=8, free_gpu=2), node("b", gpu=4, free_gpu=1)])
    assert d.reasons["job1"] == "needs 4 GPUs on one node; the largest free is 2 GPUs" and "job1" not in d.never_fits


def test_best_effort_lets_small_jobs_pass_a_big_one():
    d = place([job(1, cpu=6), job(2, cpu=2), job(3, cpu=1)], [node("a", cpu=8, free_cpu=4)], BEST_EFFORT)
    assert [p[0] for p in d.placements] == ["job2", "job3"] and "job1" in d.reasons


def test_strict_fifo_stops_at_the_first_that_does_not_fit():
    d = place([job(1, cpu=6), job(2, cpu=2), job(3, cpu=1)], [node("a", cpu=8, free_cpu=4)], STRICT)
    assert d.placements == []
    assert d.reasons["job2"] == "1 job ahead must start first (StrictFIFO)"
    assert d.reasons["job3"] == "2 jobs ahead must start first (StrictFIFO)"


def test_strict_fifo_is_not_blocked_by_a_job_that_can_never_fit():
    d = place([job(1, cpu=64), job(2, cpu=2)], [node("a", cpu=8)], STRICT)
    assert d.placements == [("job2", "a")] and "job1" in d.never_fits


def test_starvation_guard_reserves_the_nodes_the_head_can_use():
    nodes = [node("big", cpu=8, free_cpu=4), node("small", cpu=2)]
    heads = [job(1, cpu=6, waited=3600), job(2, cpu=2), job(3, cpu=1)]
    d = place(heads, nodes, BEST_EFFORT, starvation_seconds=1800)
    # job2/job3 may not take room on "big" (the only node job1 fits); "small" is fine
    assert ("job2", "small") in d.placements and all(n != "big" for _, n in d.placements)
    assert d.reasons["job3"] == "nodes held for job job1, which has waited longer (60 min)"  # names it
    assert d.waits["job3"].code == RESERVED and d.waits["job1"].code == NO_ROOM
    young = place([job(1, cpu=6, waited=10), job(2, cpu=2), job(3, cpu=1)], nodes, BEST_EFFORT, 1800)
    assert ("job3", "big") in young.placements or ("job2", "big") in young.placements


def test_node_selector_taints_and_health():
    nodes = [node("a100", gpu=8, labels={"gpu-type": "a100"}, taints=(("nvidia.com/gpu", "present", "NoSchedule"),)),
             node("tainted", labels={"gpu-type": "v100"}, taints=(("dedicated", "infra", "NoSchedule"),)),
             node("down", labels={"gpu-type": "t4"}, ready=False),
             node("cordoned", labels={"gpu-type": "l4"}, schedulable=False)]
    d = place([job(1, gpu=1, node_selector={"gpu-type": "a100"}),
               job(2, node_selector={"gpu-type": "a100"}),
               job(3, node_selector={"gpu-type": "h100"}),
               job(4, node_selector={"gpu-type": "v100"}),
               job(5, node_selector={"gpu-type": "t4"}),
               job(6, node_selector={"gpu-type": "l4"})], nodes)
    assert d.placements == [("job1", "a100")]  # GPU jobs tolerate the GPU taint
    assert d.reasons["job2"] == "every matching node has a taint this job does not tolerate"
    assert d.reasons["job3"] == "no node matches gpu-type=h100"
    assert d.reasons["job4"] == "every matching node has a taint this job does not tolerate"
    assert d.reasons["job5"] == "no node matches gpu-type=t4"  # the only t4 node is NotReady
    assert d.reasons["job6"] == "no node matches gpu-type=l4"  # the only l4 node is cordoned
    assert "job5" in d.never_fits and "job6" in d.never_fits


def test_cpu_jobs_keep_off_gpu_nodes_when_they_can():
    d = place([job(1), job(2, gpu=1)], [node("gpu", gpu=1), node("cpu")])
    assert d.placements == [("job1", "cpu"), ("job2", "gpu")]


def test_memory_reason():
    d = place([job(1, mem=20)], [node("a", mem=32, free_mem=8)])
    assert d.reasons["job1"] == "needs 20Gi memory on one node; the largest free is 8Gi memory"


def test_no_nodes_at_all():
    d = place([job(1)], [])
    assert d.reasons["job1"] == "no Ready, schedulable node in the cluster"


def test_job_slots_limit_how_many_start_on_a_node():
    slots = Node("local", 8000, 32 * GI, 0, 8000, 32 * GI, 0, free_pods=2)
    d = place([job(1), job(2), job(3)], [slots])
    assert [p[0] for p in d.placements] == ["job1", "job2"]
    assert d.reasons["job3"] == "every job slot is busy (node pod capacity / local slots)"


def test_each_waiting_job_gets_a_code_the_short_resource_and_the_text():
    d = place([job(1, gpu=4), job(2, cpu=6), job(3, cpu=1, node_selector={"zone": "x"})],
              [node("a", cpu=8, free_cpu=4, gpu=2)])
    assert d.waits["job1"] == Wait(NEVER_FITS, "gpu", "can never fit as the cluster is now: needs 4 GPUs on one "
                                                      "node; the largest node has 2 GPUs")
    assert d.waits["job2"] == Wait(NO_ROOM, "cpu", "needs 6 CPU on one node; the largest free is 4 CPU")
    assert d.waits["job3"].code == NEVER_FITS and d.waits["job3"].resource == "node_selector"
    strict = place([job(1, cpu=6), job(2, cpu=1)], [node("a", cpu=8, free_cpu=4)], STRICT)
    assert strict.waits["job2"].code == BY_ORDER and strict.by_order == {"job2"}


def test_busy_slots_are_named_as_slots_not_cpu():
    d = place([job(1)], [node("a", cpu=8, free_pods=0)])
    assert d.waits["job1"] == Wait(NO_ROOM, "slots", "every job slot is busy (node pod capacity / local slots)")
