"""Job spec validation: good specs normalise, every bad input names its field."""

import pytest

from sentinels.domain import quantity
from sentinels.domain.errors import InvalidSpec
from sentinels.domain.spec import Limits, default_name, validate

LIMITS = Limits(cpu_millis=32_000, memory_bytes=256 * 2**30, gpu=4, data_roots=("/datasets",))
BASE = {"image": "ghcr.io/acme/resnet:1.4"}


def test_full_spec_normalises():
    spec = validate({
        "name": "resnet50-lr-0-01", "image": "ghcr.io/acme/resnet:1.4", "command": ["python", "train.py"],
        "args": ["--lr", 0.01], "env": {"EPOCHS": 10}, "resources": {"cpu": "500m", "memory": "16Gi", "gpu": 1},
        "priority": "high", "experiment": "resnet50", "params": {"lr": 0.01, "batch": 256},
        "data": "/datasets/imagenet", "outputs": "/outputs", "timeout": "2h", "retries": 1,
        "node_selector": {"gpu-type": "a100"}, "labels": {"team": "vision"},
        "notify": {"channel": "#vision-exps", "on": ["failed", "succeeded"]},
    }, LIMITS)
    assert spec["resources"] == {"cpu": "500m", "memory": "16Gi", "gpu": 1, "cpu_millis": 500,
                                 "memory_bytes": 16 * 2**30}
    assert spec["args"] == ["--lr", "0.01"] and spec["env"] == {"EPOCHS": "10"}
    assert spec["timeout_seconds"] == 7200 and spec["params"] == {"lr": 0.01, "batch": 256}


def test_defaults():
    spec = validate(dict(BASE), LIMITS)
    assert spec["name"] == "resnet" and spec["experiment"] == "resnet"
    assert spec["resources"]["cpu_millis"] == 1000 and spec["resources"]["gpu"] == 0
    assert spec["retries"] == 0 and spec["timeout_seconds"] is None and spec["outputs"] == "/outputs"


@pytest.mark.parametrize("image", [
    "python:3.11", "ghcr.io/acme/resnet:1.4", "localhost:5000/x/y:latest", "busybox",
    "registry.example.com/a/b@sha256:" + "a" * 64, "gcr.io/proj/img:v1.2-rc_3",
])
def test_good_images(image):
    assert validate({"image": image}, LIMITS)["image"] == image


@pytest.mark.parametrize("raw,field,words", [
    ({**BASE, "gpus": 1}, "gpus", "unknown field"),
    ({**BASE, "name": "Bad_Name"}, "name", "DNS-1123"),
    ({**BASE, "name": "a" * 51}, "name", "DNS-1123"),
    ({**BASE, "name": "-x"}, "name", "DNS-1123"),
    ({**BASE, "name": 5}, "name", "expected"),
    ({"image": "UPPER/case:tag"}, "image", "not a valid image"),
    ({"image": "ghcr.io/acme/resnet:"}, "image", "not a valid image"),
    ({"image": "a b"}, "image", "not a valid image"),
    ({}, "image", "required"),
    ({**BASE, "command": "python train.py"}, "command", "list"),
    ({**BASE, "args": [{"a": 1}]}, "args", "string"),
    ({**BASE, "resources": {"cpu": -1}}, "resources.cpu", "negative"),
    ({**BASE, "resources": {"cpu": 0}}, "resources.cpu", "more than 0"),
    ({**BASE, "resources": {"memory": "10Zi"}}, "resources.memory", "unknown unit"),
    ({**BASE, "resources": {"memory": "lots"}}, "resources.memory", "not a Kubernetes quantity"),
    ({**BASE, "resources": {"gpu": 1.5}}, "resources.gpu", "whole number"),
    ({**BASE, "resources": {"gpu": True}}, "resources.gpu", "whole number"),
    ({**BASE, "resources": {"gpu": 8}}, "resources.gpu", "per-job maximum"),
    ({**BASE, "resources": {"cpu": 33}}, "resources.cpu", "per-job maximum"),
    ({**BASE, "resources": {"memory": "1Ti"}}, "resources.memory", "per-job maximum"),
    ({**BASE, "resources": {"disk": "1Gi"}}, "resources", "unknown key"),
    ({**BASE, "resources": [1]}, "resources", "mapping"),
    ({**BASE, "data": "/etc/passwd"}, "data", "outside the data roots"),
    ({**BASE, "data": "/datasets/../etc"}, "data", "'..'"),
    ({**BASE, "data": "datasets/x"}, "data", "absolute"),
    ({**BASE, "data": "/datasetsX/x"}, "data", "outside the data roots"),
    ({**BASE, "outputs": "/out/../x"}, "outputs", "'..'"),
    ({**BASE, "env": {"1BAD": "x"}}, "env", "environment variable name"),
    ({**BASE, "env": {"A-B": "x"}}, "env", "environment variable name"),
    ({**BASE, "env": {"SENTINELS_JOB_ID": "x"}}, "env", "reserved"),
    ({**BASE, "env": {"A": [1]}}, "env", "scalar"),
    ({**BASE, "env": ["A=1"]}, "env", "mapping"),
    ({**BASE, "timeout": "forever"}, "timeout", "not a duration"),
    ({**BASE, "timeout": "30d"}, "timeout", "maximum"),
    ({**BASE, "timeout": 0}, "timeout", "positive"),
    ({**BASE, "retries": -1}, "retries", "between"),
    ({**BASE, "retries": 99}, "retries", "between"),
    ({**BASE, "retries": "2"}, "retries", "whole number"),
    ({**BASE, "node_selector": {"gpu type": "a100"}}, "node_selector", "label key"),
    ({**BASE, "node_selector": {"gpu": "a b"}}, "node_selector", "label value"),
    ({**BASE, "labels": {"sentinels.io/job-id": "x"}}, "labels", "set by sentinels"),
    ({**BASE, "notify": {"channel": "#a", "on": ["exploded"]}}, "notify.on", "expected a list"),
    ({**BASE, "notify": {"webhook": "http://x"}}, "notify", "unknown key"),
    ({**BASE, "priority": 3}, "priority", "class name"),
    ({**BASE, "params": {"lr": float("nan")}}, "params", "params.lr: nan is not a finite number"),
    ({**BASE, "params": {"opt": {1: "a"}}}, "params", "params.opt: key 1 must be a non-empty string"),
    ({**BASE, "params": {"x": {"y": b"z"}}}, "params", "params.x.y: expected a number, string"),
    ({**BASE, "hostNetwork": True}, "hostNetwork", "unknown field"),
    ({**BASE, "volumes": [{"hostPath": {"path": "/"}}]}, "volumes", "unknown field"),
    ("just a string", None, "mapping"),
])
def test_bad_input_names_the_field(raw, field, words):
    with pytest.raises(InvalidSpec) as err:
        validate(raw, LIMITS)
    assert words in err.value.message
    if field:
        assert err.value.field == field or err.value.message.startswith(field)


@pytest.mark.parametrize("text,millis", [("500m", 500), ("2", 2000), (1.5, 1500), ("1e3", 1_000_000), ("0.1", 100)])
def test_cpu_quantities(text, millis):
    assert quantity.cpu_millis(text) == millis


@pytest.mark.parametrize("text,n", [("16Gi", 16 * 2**30), ("1G", 10**9), ("512Mi", 512 * 2**20), ("1000", 1000), ("1.5Gi", 3 * 2**29)])
def test_memory_quantities(text, n):
    assert quantity.memory_bytes(text) == n


def test_sub_millicore_refused():
    with pytest.raises(InvalidSpec, match="finer than 1m"):
        quantity.cpu_millis("0.0005")


def test_default_name_from_image():
    assert default_name("ghcr.io/acme/ResNet_50:1.4") == "resnet-50"
    assert default_name("localhost:5000/x@sha256:" + "a" * 64) == "x"
