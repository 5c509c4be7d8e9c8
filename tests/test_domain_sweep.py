"""Sweeps and arrays expand into members, and a request over the maximum is refused (pure)."""

import pytest

from sentinels.domain import sweep
from sentinels.domain.errors import InvalidSpec


def test_cartesian_product_times_array():
    got = sweep.members({"sweep": {"lr": [0.1, 0.2], "b": [64, 128, 256]}, "array": "1-2"}, 1000)
    assert len(got) == 12 and [m["index"] for m in got] == list(range(12))
    assert got[0] == {"index": 0, "values": {"lr": 0.1, "b": 64}, "array_index": 1}
    assert {(m["values"]["lr"], m["values"]["b"], m["array_index"]) for m in got} == {
        (lr, b, a) for lr in (0.1, 0.2) for b in (64, 128, 256) for a in (1, 2)}


def test_plain_submit_is_not_a_sweep():
    assert sweep.members({"spec": {}}, 10) is None


@pytest.mark.parametrize("data", [
    {"array": "1-1001"}, {"array": "0-9999999"}, {"sweep": {"a": list(range(100)), "b": list(range(11))}}])
def test_over_the_maximum_is_refused_before_expanding(data):
    with pytest.raises(InvalidSpec, match="over the maximum of 1000"):
        sweep.members(data, 1000)


@pytest.mark.parametrize("data,words", [
    ({"array": "5-1"}, "ends before"), ({"array": "a-b"}, "not a range"), ({"array": "1,1"}, "distinct"),
    ({"sweep": {"lr": []}}, "non-empty list"), ({"sweep": {"lr": 0.1}}, "non-empty list"),
    ({"sweep": {"bad key": [1]}}, "not a param name"), ({"sweep": {"x": [{"a": 1}]}}, "numbers or strings"),
    ({"sweep": None, "array": None}, "give sweep values"),
])
def test_bad_sweeps_name_the_problem(data, words):
    with pytest.raises(InvalidSpec, match=words):
        sweep.members(data, 1000)


def test_member_spec_and_name():
    raw = {"image": "i", "params": {"lr": 1, "epochs": 3}}
    assert sweep.member_spec(raw, {"values": {"lr": 2}})["params"] == {"lr": 2, "epochs": 3}
    assert raw["params"]["lr"] == 1
    name = sweep.member_name("x" * 50, 999)
    assert len(name) <= 50 and name.endswith("-999")
