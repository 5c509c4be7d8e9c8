"""Capacity episodes (sentinels.domain.capacity_watch): one exhausted, one recovered, never one per pass."""

import json

import pytest

from sentinels.domain import capacity_watch as cw
from sentinels.domain import events
from sentinels.domain.errors import ConfigError

T = 1_800_000_000.0
GPU_FULL = {"waiting_for_room": 12, "by_resource": {"gpu": 12}, "largest_request": {"gpu": 8},
            "allocated": {"gpu": (16, 16), "cpu": (20_000, 64_000), "memory": (100 * 2**30, 256 * 2**30)}}
QUIET = {"waiting_for_room": 0, "by_resource": {}, "largest_request": {},
         "allocated": {"gpu": (10, 16), "cpu": (20_000, 64_000), "memory": (100 * 2**30, 256 * 2**30)}}


def run(passes, cfg=cw.CapacityConfig(), state=None):
    """Feed (seconds, observation) passes; return the final state and all events, state kept as JSON."""
    out = []
    for t, obs in passes:
        state, evs = cw.step(state, obs, T + t, cfg)
        state = json.loads(json.dumps(state))  # what the scheduler stores in KV and reads back
        out += evs
    return state, out


def test_one_exhausted_event_after_the_wait_and_one_recovered():
    passes = [(t, GPU_FULL) for t in range(0, 1800, 30)] + [(t, QUIET) for t in range(1800, 2400, 30)]
    _, evs = run(passes)
    assert [e["type"] for e in evs] == [events.CAPACITY_EXHAUSTED, events.CAPACITY_RECOVERED]
    ex, rec = evs
    assert ex["data"]["summary"] == "12 jobs wait for GPUs; 0 of 16 GPUs free for 10 min; largest request 8"
    assert ex["data"]["at"] == cw.iso(T + 600) and ex["data"]["started_at"] == cw.iso(T)
    assert ex["data"]["episode"] == rec["data"]["episode"] and ex["id"] == f"{ex['data']['episode']}:exhausted"
    assert rec["id"] == f"{ex['data']['episode']}:recovered"
    assert rec["data"]["summary"] == "room again after 30 min; no job waits for room; 6 of 16 GPUs free; " \
                                     "44 of 64 CPU cores free; 156Gi of 256Gi memory free"
    assert ex["data"]["allocated"]["gpu"] == {"used": 16, "total": 16, "free": 0, "text": "0 of 16 GPUs free"}


def test_short_bursts_never_open_an_episode():
    passes = []
    for burst in range(5):  # 5 minutes full, 1 minute quiet, again and again
        base = burst * 360
        passes += [(base + t, GPU_FULL) for t in range(0, 300, 30)] + [(base + 300, QUIET)]
    _, evs = run(passes)
    assert evs == []


def test_the_same_pass_twice_emits_nothing_new_and_ids_are_deterministic():
    state, evs = run([(0, GPU_FULL), (700, GPU_FULL)])
    again, evs2 = cw.step(state, GPU_FULL, T + 700)
    assert len(evs) == 1 and evs2 == [] and again == state
    _, evs3 = run([(0, GPU_FULL), (700, GPU_FULL)])
    assert evs3 == evs  # a scheduler that replays the passes gets the same event ids


def test_allocation_above_threshold_without_waiting_jobs():
    busy = {"waiting_for_room": 0, "allocated": {"cpu": (63_000, 64_000), "gpu": (2, 16)}}
    _, evs = run([(0, busy), (599, busy)])
    assert evs == []
    state, evs = run([(0, busy), (600, busy)])
    assert [e["type"] for e in evs] == [events.CAPACITY_EXHAUSTED]
    assert evs[0]["data"]["causes"] == ["cpu"]
    assert evs[0]["data"]["summary"] == "CPU cores over 95% allocated (63 of 64) for 10 min"
    _, evs = run([(900, {**busy, "allocated": {"cpu": (60_000, 64_000), "gpu": (2, 16)}})], state=state)
    assert [e["type"] for e in evs] == [events.CAPACITY_RECOVERED]


def test_recovery_needs_every_condition_gone_and_a_new_episode_gets_a_new_id():
    state, evs = run([(0, GPU_FULL), (600, GPU_FULL)])
    still_busy = {**QUIET, "allocated": {"gpu": (16, 16)}}  # nobody waits but GPUs are full
    state, more = run([(700, still_busy)], state=state)
    assert more == []
    state, more = run([(800, QUIET), (900, GPU_FULL), (1500, GPU_FULL)], state=state)
    assert [e["type"] for e in more] == [events.CAPACITY_RECOVERED, events.CAPACITY_EXHAUSTED]
    assert more[1]["data"]["episode"] != evs[0]["data"]["episode"]


def test_mixed_waits_and_units_in_the_summary():
    obs = {"waiting_for_room": 4, "by_resource": {"memory": 3, "cpu": 1},
           "largest_request": {"memory": 200 * 2**30, "cpu": 48_000},
           "allocated": {"memory": (250 * 2**30, 256 * 2**30), "cpu": (10_000, 64_000)}}
    _, evs = run([(0, obs), (3 * 3600 + 300, obs)], cw.CapacityConfig(after_seconds=60))
    assert evs[0]["data"]["summary"] == ("3 jobs wait for memory, 1 for CPU cores; 6.0Gi of 256Gi memory free for 3 h 5 min; "
                                         "largest request 200Gi")
    one = {"waiting_for_room": 1}
    _, evs = run([(0, one), (60, one)], cw.CapacityConfig(after_seconds=60))
    assert evs[0]["data"]["summary"] == "1 job waits for room for 1 min"


def test_config():
    assert cw.CapacityConfig.from_dict(None) == cw.CapacityConfig(600.0, 0.95)
    assert cw.CapacityConfig.from_dict({"after": "20m", "threshold": 0.9}) == cw.CapacityConfig(1200.0, 0.9)
    for bad in ({"after": "-1"}, {"threshold": 0}, {"threshold": True}, {"later": 1}, []):
        with pytest.raises(ConfigError):
            cw.CapacityConfig.from_dict(bad)


GI = 2**30


def _pass(heads, nodes, **kw):
    from sentinels.domain.placement import place

    decision = place(heads, nodes, **kw)
    return cw.pass_observation(decision, nodes, heads)


def test_the_alert_names_the_resource_that_blocks_and_never_fits_opens_no_episode():
    from sentinels.domain.placement import Node, Waiting

    slots_full = [Node("local", 8000, 32 * GI, 0, 7000, 30 * GI, 0, free_pods=0)]
    obs = _pass([Waiting("a", "c", 10, 1, 1000, GI, 0)], slots_full)
    assert obs["waiting_for_room"] == 1 and obs["by_resource"]["slots"] == 1 and obs["by_resource"]["cpu"] == 0
    _, out = cw.step(cw.step(None, obs, 0)[0], obs, 700)
    assert "1 job waits for job slots" in out[0]["data"]["summary"] and "CPU" not in out[0]["data"]["summary"]

    roomy = [Node("local", 8000, 32 * GI, 0, 8000, 32 * GI, 0)]
    never = _pass([Waiting("huge", "c", 10, 1, 64000, GI, 0)], roomy)
    assert never["waiting_for_room"] == 0
    state, out = cw.step(None, never, 0)
    assert cw.step(state, never, 10_000)[1] == []  # hours later: still no "cluster full"
