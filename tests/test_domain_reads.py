"""Read rules and query checks of the read API (pure)."""

import pytest

from sentinels.domain import reads
from sentinels.domain.errors import ConfigError, Forbidden, InvalidSpec

JOB = {"id": "abcdefghij", "owner": "alice", "team": "vision", "state": "RUNNING", "log_tail": ["x"],
       "spec": {"env": {"TOKEN": "s3cret"}, "params": {"lr": "0.1"}, "image": "i"}}
ALICE = {"user": "alice", "team": "vision", "role": "user"}
CAROL = {"user": "carol", "team": "vision", "role": "user"}
BOB = {"user": "bob", "team": "nlp", "role": "user"}
ROOT = {"user": "root", "team": None, "role": "admin"}


@pytest.mark.parametrize("details,who,sees", [
    ("team", ALICE, True), ("team", CAROL, True), ("team", BOB, False), ("team", ROOT, True),
    ("owner", CAROL, False), ("owner", ALICE, True), ("owner", ROOT, True), ("everyone", BOB, True),
])
def test_who_sees_details(details, who, sees):
    rules = reads.ReadRules.from_dict({"details": details})
    view = rules.view(who, JOB)
    assert (view["spec"]["env"]["TOKEN"] == "s3cret") is sees
    assert ("log_tail" in view) is sees and view["state"] == "RUNNING" and view["owner"] == "alice"
    if not sees:
        assert view["spec"]["params"] == {"lr": "(hidden)"} and f"reads.details: {details}" in view["hidden"]
        with pytest.raises(Forbidden, match=f"rule reads.details: {details}"):
            rules.check_details(who, JOB, "logs")


def test_a_user_without_team_is_not_everyones_teammate():
    assert not reads.ReadRules().sees_details({"user": "x", "team": None, "role": "user"}, {**JOB, "team": None})


@pytest.mark.parametrize("raw", [{"details": "nobody"}, {"colour": 1}, "team"])
def test_bad_rules_are_config_errors(raw):
    with pytest.raises(ConfigError, match="reads"):
        reads.ReadRules.from_dict(raw)


def test_query_parameters():
    assert reads.limit_param(None) == 50 and reads.limit_param("1000") == 1000
    assert reads.cursor_param("d123") == ("done", 123) and reads.cursor_param("") is None
    assert reads.state_param("running") == "RUNNING" and reads.state_param("active") == "active"
    for fn, raw in ((reads.limit_param, "0"), (reads.limit_param, "1001"), (reads.limit_param, "-1"),
                    (reads.cursor_param, "x1"), (reads.cursor_param, "a" + "9" * 20), (reads.state_param, "up")):
        with pytest.raises(InvalidSpec):
            fn(raw)
    assert reads.lists_for(None, None) == ["active", "done"] and reads.lists_for("FAILED", None) == ["done"]
    assert reads.lists_for("QUEUED", "s1") == ["sweep"]
