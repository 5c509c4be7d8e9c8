"""Priority configuration (classes, rules, caps) and the job state machine."""

import pytest

from sentinels.domain import states
from sentinels.domain.errors import ConfigError, Forbidden, InvalidSpec
from sentinels.domain.priority import PriorityConfig

CFG = PriorityConfig.from_dict({
    "classes": {"critical": 1000, "high": 100, "normal": 10, "low": 1},
    "default": "normal",
    "rules": [{"team": "vision", "class": "high"}, {"user": "bob", "class": "low"},
              {"experiment": "smoke-*", "class": "low"}, {"name": "urgent-*", "class": "critical"}],
    "roles": {"admin": "critical", "user": "high", "guest": "low"},
})
ALICE = {"user": "alice", "team": "nlp", "role": "user"}


def test_defaults_and_order():
    cfg = PriorityConfig.from_dict(None)
    assert cfg.ordered() == ["critical", "high", "normal", "low"] and cfg.default == "normal"


@pytest.mark.parametrize("who,spec,expected", [
    (ALICE, {"experiment": "x", "name": "x"}, "normal"),
    ({"user": "carol", "team": "vision", "role": "user"}, {"experiment": "x", "name": "x"}, "high"),
    ({"user": "bob", "team": "vision", "role": "user"}, {"experiment": "x", "name": "x"}, "high"),  # first rule wins
    ({"user": "bob", "team": None, "role": "user"}, {"experiment": "x", "name": "x"}, "low"),
    (ALICE, {"experiment": "smoke-test", "name": "x"}, "low"),
    (ALICE, {"experiment": "x", "name": "urgent-fix"}, "high"),  # rule says critical, role caps at high
    ({"user": "root", "role": "admin"}, {"experiment": "x", "name": "urgent-fix"}, "critical"),
    ({"user": "g", "role": "guest"}, {"experiment": "x", "name": "x"}, "low"),  # default capped by role
])
def test_rules_give_default_class(who, spec, expected):
    assert CFG.resolve(None, who, spec) == expected


def test_requested_class_checked():
    assert CFG.resolve("high", ALICE, {}) == "high"
    with pytest.raises(Forbidden, match="at most 'high'"):
        CFG.resolve("critical", ALICE, {})
    with pytest.raises(InvalidSpec, match="unknown class 'urgent'"):
        CFG.resolve("urgent", ALICE, {})


@pytest.mark.parametrize("raw,words", [
    ("nope", "expected a mapping"),
    ({"classes": {}}, "non-empty"),
    ({"classes": {"High": 1}}, "lowercase"),
    ({"classes": {"a": "x"}}, "integer"),
    ({"classes": {"a": 1, "b": 1}}, "distinct"),
    ({"classes": {"a": 1}, "default": "b"}, "default class"),
    ({"classes": {"a": 1}, "rules": [{"user": "x"}]}, "needs a class"),
    ({"classes": {"a": 1}, "rules": [{"colour": "x", "class": "a"}]}, "may match only"),
    ({"classes": {"a": 1}, "rules": [{"user": "x", "class": "z"}]}, "unknown class"),
    ({"classes": {"a": 1}, "roles": {"user": "z"}}, "unknown class"),
    ({"classes": {"a": 1}, "colours": 1}, "unknown key"),
])
def test_bad_priority_config_fails_at_load(raw, words):
    with pytest.raises(ConfigError, match=words):
        PriorityConfig.from_dict(raw)


REC = {"id": "abcdefghij", "state": states.QUEUED, "attempts": 1, "timestamps": {}}


@pytest.mark.parametrize("path,ok", [
    ([states.SCHEDULED, states.RUNNING, states.SUCCEEDED], True),
    ([states.SCHEDULED, states.RUNNING, states.QUEUED, states.SCHEDULED], True),
    ([states.CANCELLED], True),
    ([states.RUNNING], False),
    ([states.SUCCEEDED], False),
    ([states.SCHEDULED, states.RUNNING, states.SUCCEEDED, states.FAILED], False),
    ([states.SCHEDULED, states.CANCELLED, states.QUEUED], False),
])
def test_transition_table(path, ok):
    rec = REC
    try:
        for i, to in enumerate(path):
            rec = states.transition(rec, to, now=f"t{i}", reason=to.lower())
    except states.IllegalTransition:
        assert not ok
    else:
        assert ok and rec["state"] == path[-1] and rec["timestamps"][path[-1]] == f"t{len(path) - 1}"


def test_requeue_counts_an_attempt_and_never_mutates_input():
    running = states.transition(states.transition(REC, states.SCHEDULED, now="a"), states.RUNNING, now="b")
    again = states.transition(running, states.QUEUED, now="c", reason="node lost")
    assert again["attempts"] == 2 and running["attempts"] == 1 and again["reason"] == "node lost"
    assert REC["state"] == states.QUEUED and REC["timestamps"] == {}
