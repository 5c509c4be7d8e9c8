"""Quotas with borrowing, fair share and victim choice: pure tables."""

import pytest

from sentinels.domain import fairshare, preemption, quota
from sentinels.domain.errors import ConfigError

GI = 2 ** 30
VISION = {"teams": {"vision": {"gpu": 8, "cpu": 64, "memory": "512Gi", "jobs": 20, "borrowing": {"gpu": 4}}}}


def test_issue_shape_parses():
    cfg = quota.QuotaConfig.from_dict(VISION)
    q = cfg.teams["vision"]
    assert q.nominal == {"gpu": 8, "cpu_millis": 64000, "memory_bytes": 512 * GI, "jobs": 20}
    assert q.borrowing == {"gpu": 4} and q.limit("gpu") == 12 and q.limit("cpu_millis") == 64000


@pytest.mark.parametrize("raw, key", [
    ({"teams": {"vision": {"gpu": -1}}}, "quotas.teams.vision.gpu"),
    ({"teams": {"vision": {"gpu": 2, "borrowing": {"gpu": -4}}}}, "quotas.teams.vision.borrowing.gpu"),
    ({"teams": {"vision": {"borrowing": {"gpu": 4}}}}, "quotas.teams.vision.borrowing.gpu"),
    ({"teams": {"vision": {"gpus": 2}}}, "quotas.teams.vision"),
    ({"teams": {"vision": {"gpu": 1.5}}}, "quotas.teams.vision.gpu"),
    ({"teams": {"vision": {"cpu": "lots"}}}, "quotas.teams.vision.cpu"),
    ({"teams": {"vision": {"jobs": True}}}, "quotas.teams.vision.jobs"),
    ({"groups": {}}, "quotas"),
    ({"teams": ["vision"]}, "quotas.teams"),
])
def test_quotas_that_do_not_add_up_are_refused_with_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        quota.QuotaConfig.from_dict(raw)
    assert e.value.field == key and key in e.value.message


def test_within_nominal_borrowing_and_limit():
    cfg = quota.QuotaConfig.from_dict(VISION)
    need = quota.demand(1000, GI, 2)
    held = {("team", "vision"): {"gpu": 6, "jobs": 3}}
    assert quota.check(cfg, "vision", "ann", need, held) == quota.Verdict(True, borrows=False)
    held = {("team", "vision"): {"gpu": 8, "jobs": 4}}
    assert quota.check(cfg, "vision", "ann", need, held) == quota.Verdict(True, borrows=True)
    held = {("team", "vision"): {"gpu": 12, "jobs": 6}}
    v = quota.check(cfg, "vision", "ann", need, held)
    assert not v.ok and not v.never and v.resource == "gpu"
    assert v.reason == "team vision uses 12 of its 8 GPUs; borrowing limit reached"


def test_no_borrowing_allowed_and_never_fits():
    cfg = quota.QuotaConfig.from_dict({"teams": {"nlp": {"gpu": 8}}, "users": {"bob": {"jobs": 1}}})
    v = quota.check(cfg, "nlp", None, quota.demand(0, 0, 1), {("team", "nlp"): {"gpu": 8}})
    assert v.reason == "team nlp uses 8 of its 8 GPUs; no borrowing allowed"
    v = quota.check(cfg, "nlp", None, quota.demand(0, 0, 9), {})
    assert v.never and "may hold at most 8" in v.reason
    v = quota.check(cfg, "other", "bob", quota.demand(0, 0, 0), {("user", "bob"): {"jobs": 1}})
    assert not v.ok and v.reason.startswith("user bob uses 1 of its 1 running jobs")
    assert quota.check(cfg, "other", "carol", quota.demand(0, 0, 64), {}).ok  # no quota: no limit


def test_add_counts_a_pass():
    cfg = quota.QuotaConfig.from_dict(VISION)
    held: dict = {}
    for _ in range(5):
        quota.add(held, "vision", "ann", quota.demand(0, 0, 2), cfg)
    assert held[("team", "vision")]["gpu"] == 10 and held[("team", "vision")]["jobs"] == 5
    assert cfg.teams["vision"].over_nominal(held[("team", "vision")])


def test_fair_share_decays_and_orders_within_a_class():
    cfg = fairshare.FairShareConfig.from_dict({"by": "team", "half_life": "1h", "weights": {"cpu": 1, "gpu": 10}})
    ledger = fairshare.charge({}, "vision", 1000.0, 0.0, cfg)
    now = 3600.0
    current = fairshare.usage(ledger, [fairshare.Active("nlp", cfg.rate(2000, 0), 100.0)], now, cfg)
    assert current == {"vision": pytest.approx(500.0), "nlp": pytest.approx(200.0)}

    class H:
        def __init__(self, id, rank, order, team, front=False):
            self.id, self.rank, self.order, self.team, self.front = id, rank, order, team, front

    heads = [H("v1", 10, 1, "vision"), H("n1", 10, 2, "nlp"), H("v2", 10, 3, "vision"),
             H("hi", 100, 9, "vision"), H("rq", 10, 50, "vision", front=True), H("x", 10, 4, "new")]
    ordered = fairshare.order(heads, lambda h: h.team, current)
    assert [h.id for h in ordered] == ["hi", "rq", "x", "n1", "v1", "v2"]


@pytest.mark.parametrize("raw", [{"by": "group"}, {"half_life": "0s"}, {"half_life": "soon"},
                                 {"weights": {"gpu": -1}}, {"weights": {"tpu": 1}}, {"decay": 1}])
def test_fair_share_config_refused(raw):
    with pytest.raises(ConfigError):
        fairshare.FairShareConfig.from_dict(raw)


def run(id, node, rank, gpu=1, seconds=100.0, team="a", **kw):
    return preemption.Running(id, node, rank, team, 1000, GI, gpu, seconds, **kw)


def cand(rank=1000, gpu=2, may=True, within=False, team="crit"):
    return preemption.Candidate("head", rank, team, 1000, GI, gpu, may, within)


NODES = [preemption.NodeRoom("n1", 8000, 64 * GI, 0), preemption.NodeRoom("n2", 8000, 64 * GI, 1)]


def test_fewest_victims_then_least_lost_work():
    running = [run("a", "n1", 1, seconds=10), run("b", "n1", 1, seconds=5),
               run("c", "n2", 1, seconds=1000)]
    plan = preemption.plan(cand(), NODES, running)
    assert plan.node == "n2" and [v.id for v in plan.victims] == ["c"]  # one victim beats two cheaper ones
    running = [run("a", "n1", 1, gpu=2, seconds=10), run("c", "n2", 1, seconds=1000)]
    plan = preemption.plan(cand(), NODES, running)
    assert plan.node == "n1" and [v.id for v in plan.victims] == ["a"]  # same count: least lost work


def test_only_lower_classes_and_preemptible_jobs():
    running = [run("peer", "n2", 1000), run("locked", "n1", 1, gpu=2, preemptible=False)]
    assert preemption.plan(cand(), NODES, running) is None
    assert preemption.plan(cand(may=False), NODES, [run("low", "n2", 1)]) is None


def test_spares_victims_not_needed():
    running = [run("small", "n1", 1, gpu=1, seconds=1), run("big", "n1", 1, gpu=2, seconds=2)]
    plan = preemption.plan(cand(), [preemption.NodeRoom("n1", 8000, 64 * GI, 0)], running)
    assert [v.id for v in plan.victims] == ["big"]


def test_reclaim_takes_borrowed_capacity_first_whatever_its_class():
    running = [run("borrower", "n2", 1000, team="vision", borrowed=True), run("low", "n2", 1, team="nlp")]
    plan = preemption.plan(cand(rank=10, may=False, within=True, team="nlp2"), NODES, running)
    assert [v.id for v in plan.victims] == ["borrower"]
    plan = preemption.plan(cand(rank=1000, may=True, within=True), NODES, running)
    assert [v.id for v in plan.victims] == ["borrower"]  # borrowed first, before the lower class


def test_preemption_config():
    cfg = preemption.PreemptionConfig.from_dict({"classes": ["critical"]}, ["critical", "low"])
    assert cfg.enabled and cfg.classes == {"critical"}
    assert not preemption.PreemptionConfig.from_dict(None, ["low"]).enabled
    with pytest.raises(ConfigError) as e:
        preemption.PreemptionConfig.from_dict({"classes": ["urgent"]}, ["critical", "low"])
    assert e.value.field == "preemption.classes"


def test_sharing_refuses_a_rule_for_a_team_without_quota_and_marks_borrowers():
    from sentinels.domain import sharing
    from sentinels.domain.priority import PriorityConfig

    prios = PriorityConfig.from_dict({"classes": {"high": 100, "low": 1}, "default": "low", "roles": {"admin": "high", "user": "high"},
                                      "rules": [{"team": "visoin", "class": "high"}]})
    with pytest.raises(ConfigError) as e:
        sharing.Sharing.from_dict(VISION, None, None, prios)
    assert e.value.field == "priorities.rules[0].team" and "visoin" in e.value.message
    prios = PriorityConfig.from_dict({"classes": {"high": 100, "low": 1}, "default": "low", "roles": {"admin": "high", "user": "high"},
                                      "rules": [{"team": "vis*", "class": "high"}]})
    cfg = sharing.Sharing.from_dict(VISION, {"half_life": "1h"}, {"classes": ["high"], "protected": ["high"]}, prios)
    assert cfg.allows_unpreemptible("high") and not cfg.allows_unpreemptible("low")
    running = [sharing.RunningJob(f"j{i}", "n1", "low", 1, "vision", "ann", 1000, GI, 3, 60.0) for i in range(3)]
    ledger, _ = fairshare.accrue({}, {}, sharing.accrual(cfg, running, 60.0), 60.0, cfg.fair_share)
    snap = sharing.snapshot(cfg, running, ledger, 60.0)
    assert snap.held[("team", "vision")]["gpu"] == 9 and all(r.borrowed for r in snap.running)
    assert snap.usage == {"vision": pytest.approx(3 * 60 * (1 + 30))}
    assert not sharing.within_nominal(cfg, "vision", "ann", quota.demand(0, 0, 1), snap.held)
    assert sharing.within_nominal(cfg, "vision", "ann", quota.demand(0, 0, 1), {})
    assert not sharing.within_nominal(cfg, "nlp", "ann", quota.demand(0, 0, 1), {})  # no quota: nothing to reclaim


def test_accrue_charges_running_jobs_once_and_survives_a_round_trip():
    cfg = fairshare.FairShareConfig.from_dict({"half_life": "1d"})
    running = [("j1", "vision", 2.0, 100.0), ("j2", "nlp", 1.0, 150.0)]
    ledger, marks = fairshare.accrue({}, {}, running, 200.0, cfg)
    assert marks == {"j1": 200.0, "j2": 200.0}
    ledger, marks = fairshare.from_doc(fairshare.to_doc(ledger, marks))
    ledger, marks = fairshare.accrue(ledger, marks, running[:1], 210.0, cfg)  # j2 ended: no more charges
    now = fairshare.usage(ledger, [], 210.0, cfg)
    assert now["vision"] == pytest.approx(2.0 * 110, rel=1e-3) and now["nlp"] == pytest.approx(50.0, rel=1e-3)
    assert marks == {"j1": 210.0}


def test_placement_honours_quotas_in_the_same_pass():
    from sentinels.domain.placement import STRICT, Node, Waiting, place

    cfg = quota.QuotaConfig.from_dict({"teams": {"vision": {"gpu": 2, "borrowing": {"gpu": 1}}, "nlp": {"gpu": 8}}})
    nodes = [Node("g", 64000, 256 * GI, 8, 64000, 256 * GI, 8)]

    def w(i, team, gpu=1):
        return Waiting(f"j{i}", "normal", 10, i, 1000, GI, gpu, team=team, owner="u")

    heads = [w(1, "vision"), w(2, "vision"), w(3, "vision"), w(4, "vision"), w(5, "nlp"), w(6, "vision", gpu=4)]
    for strategy in ("BestEffortFIFO", STRICT):
        d = place(heads, nodes, strategy, quotas=cfg, held={("team", "vision"): {"gpu": 0}})
        # nlp is not held back by vision's quota, and borrowing (j3) comes after every job within its quota
        assert [p[0] for p in d.placements] == ["j1", "j2", "j5", "j3"]
        assert d.borrowing == {"j3"}
        assert d.reasons["j4"] == "team vision uses 3 of its 2 GPUs; borrowing limit reached" and "j4" in d.by_quota
        assert "j6" in d.never_fits and "may hold at most 3" in d.reasons["j6"]


def test_share_report_says_usage_holdings_quota_and_what_is_borrowed():
    from sentinels.domain import sharing
    from sentinels.domain.priority import PriorityConfig

    prios = PriorityConfig.from_dict({"classes": {"high": 100, "low": 1}, "default": "low", "roles": {"admin": "high", "user": "high"}})
    cfg = sharing.Sharing.from_dict({**VISION, "users": {"ann": {"gpu": 2}}}, {"half_life": "1h"}, None, prios)
    running = [sharing.RunningJob(f"v{i}", "n1", "low", 1, "vision", "ann", 2000, 4 * GI, 3, 60.0) for i in range(3)]
    running.append(sharing.RunningJob("n", "n1", "low", 1, "nlp", "bob", 1000, GI, 0, 60.0))
    held = sharing.holding(running)
    assert held[("team", "vision")] == {"cpu_millis": 6000, "memory_bytes": 12 * GI, "gpu": 9, "jobs": 3}
    assert held[("user", "bob")]["jobs"] == 1  # every holder, quota or not
    assert sharing.holding_from_doc(sharing.holding_to_doc(held)) == held
    rows = {(r["kind"], r["name"]): r for r in sharing.report(cfg, {"vision": 300.0, "nlp": 100.0, "ghost": 0.0}, held)}
    assert set(rows) == {("team", "vision"), ("team", "nlp"), ("team", "ghost"), ("user", "ann")}
    vision = rows[("team", "vision")]
    assert vision["usage"] == 300.0 and vision["share"] == 0.75 and vision["holds"]["gpu"] == 9
    assert vision["nominal"] == {"gpu": 8, "cpu_millis": 64000, "memory_bytes": 512 * GI, "jobs": 20}
    assert vision["borrowing_limit"] == {"gpu": 4, "cpu_millis": 0, "memory_bytes": 0, "jobs": 0}
    assert vision["borrowed"] == {"gpu": 1, "cpu_millis": 0, "memory_bytes": 0, "jobs": 0}
    nlp = rows[("team", "nlp")]  # no quota: usage and holdings only
    assert nlp["nominal"] is None and nlp["borrowed"] is None and nlp["holds"]["jobs"] == 1 and nlp["share"] == 0.25
    ann = rows[("user", "ann")]  # fair share goes by team: a user row has no usage of its own
    assert ann["usage"] is None and ann["borrowed"] == {"gpu": 7} and ann["holds"]["gpu"] == 9
    assert sharing.report(sharing.Sharing(), {}, {}) == []


def test_sort_key_is_the_order_fair_share_uses():
    assert sorted([(10, False, 5.0, 1), (10, True, 9.0, 3), (10, False, 1.0, 2), (20, False, 9.0, 4)],
                  key=lambda t: fairshare.sort_key(*t)) == [(20, False, 9.0, 4), (10, True, 9.0, 3),
                                                             (10, False, 1.0, 2), (10, False, 5.0, 1)]
