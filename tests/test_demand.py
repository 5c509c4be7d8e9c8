"""Queued demand per class and node shape, as metrics samples and as placeholder workloads."""

import kubernetes_validate
import pytest
import yaml

from sentinels.domain import demand, placement
from sentinels.domain.errors import ConfigError
from sentinels.domain.job import new_record
from sentinels.domain.spec import validate

GI = 2**30


def queued(job_id: str, klass: str, state="QUEUED", **spec) -> dict:
    rec = new_record(job_id=job_id, spec=validate({"image": "ghcr.io/acme/train:1", **spec}),
                     who={"user": "alice"}, klass=klass, now="2026-12-01T00:00:00Z", queue_seq=1)
    rec["state"] = state
    return rec


RECORDS = [
    queued("aaaaaaaaa1", "high", resources={"cpu": 4, "memory": "16Gi", "gpu": 1}, node_selector={"gpu-type": "a100"}),
    queued("aaaaaaaaa2", "high", resources={"cpu": 8, "memory": "32Gi", "gpu": 2}, node_selector={"gpu-type": "a100"}),
    queued("aaaaaaaaa3", "normal", resources={"cpu": "500m", "memory": "1Gi"}),
    queued("aaaaaaaaa4", "low", resources={"cpu": 2, "memory": "4Gi"}),
    queued("aaaaaaaaa5", "high", state="RUNNING", resources={"cpu": 64, "memory": "256Gi", "gpu": 8}),
]


def test_demand_per_class_and_shape():
    got = demand.waiting(RECORDS)
    assert set(got) == {("high", "gpu,gpu-type=a100"), ("normal", "cpu"), ("low", "cpu")}
    gpu = got[("high", "gpu,gpu-type=a100")]
    assert (gpu.jobs, gpu.cpu_cores, gpu.memory_bytes, gpu.gpu) == (2, 12.0, 48 * GI, 3)
    assert gpu.largest == (2, 8000, 32 * GI)
    assert got[("normal", "cpu")].cpu_millis == 500  # running jobs are not demand
    cpu = demand.by_shape(got)["cpu"]
    assert (cpu.jobs, cpu.cpu_millis, cpu.largest) == (2, 2500, (0, 2000, 4 * GI))


def test_samples_name_every_metric_with_class_and_shape():
    samples = demand.samples(demand.waiting(RECORDS))
    assert len(samples) == 3 * len(demand.METRICS)
    assert ("sentinels_queued_demand_gpus", {"class": "high", "shape": "gpu,gpu-type=a100"}, 3.0) in samples
    assert ("sentinels_queued_demand_cpu_cores", {"class": "normal", "shape": "cpu"}, 0.5) in samples
    assert demand.samples({}) == []


def test_placeholders_are_valid_preemptible_and_sized_by_the_largest_job():
    deployments = demand.placeholders(demand.waiting(RECORDS), "ml", max_per_shape=1)
    assert [d["metadata"]["annotations"]["sentinels.io/shape"] for d in deployments] == ["cpu", "gpu,gpu-type=a100"]
    assert [d["metadata"]["name"] for d in deployments] == [demand.placeholder_name("cpu"),
                                                           demand.placeholder_name("gpu,gpu-type=a100")]
    for d in deployments:
        kubernetes_validate.validate(d, "1.31", strict=True)
        pod = d["spec"]["template"]["spec"]
        assert pod["priorityClassName"] == demand.PLACEHOLDER_PRIORITY_CLASS and d["spec"]["replicas"] == 1
    gpu_pod = deployments[1]["spec"]["template"]["spec"]
    assert gpu_pod["nodeSelector"] == {"gpu-type": "a100"} and gpu_pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu_pod["containers"][0]["resources"]["requests"] == {"cpu": "8000m", "memory": str(32 * GI), "nvidia.com/gpu": "2"}
    assert demand.placeholders({}, "ml") == []


def test_the_chart_priority_class_is_the_one_placeholders_use():
    pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) is not installed")
    from tests import helm_chart as hc

    on = hc.documents(hc.render({"demand": {"placeholders": {"enabled": True}}}))
    (pc,) = [d for d in on if d["kind"] == "PriorityClass"]
    assert pc["metadata"]["name"] == demand.PLACEHOLDER_PRIORITY_CLASS and pc["value"] < 0
    kubernetes_validate.validate(pc, "1.31", strict=True)
    assert not [d for d in hc.documents(hc.render()) if d["kind"] == "PriorityClass"]


def test_with_placeholders_on_the_chart_configures_the_scheduler_and_lets_it_keep_deployments():
    pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) is not installed")
    from tests import helm_chart as hc

    def schedule_rules(docs):
        (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-schedule")]
        return role["rules"]

    def config(docs):
        (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")]
        return yaml.safe_load(cm["data"]["config.yaml"])

    on = hc.documents(hc.render({"demand": {"placeholders": {"enabled": True, "maxPerShape": 3}}}))
    assert {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create", "list", "patch", "delete"]} \
        in schedule_rules(on)
    cfg = demand.PlaceholderConfig.from_dict(config(on)["demand"])
    assert (cfg.enabled, cfg.max_per_shape, cfg.interval_seconds) == (True, 3, 30.0)
    off = hc.documents(hc.render())
    assert not [r for r in schedule_rules(off) if "deployments" in r["resources"]] and "demand" not in config(off)


def test_a_shape_keeps_its_placeholder_name_when_other_shapes_come_and_go():
    alone = demand.placeholders(demand.waiting(RECORDS[3:4]), "ml")
    together = demand.placeholders(demand.waiting(RECORDS), "ml")
    assert alone[0]["metadata"]["name"] == together[0]["metadata"]["name"] == demand.placeholder_name("cpu")
    assert len({d["metadata"]["name"] for d in together}) == 2
    assert demand.placeholder_name("gpu") != demand.placeholder_name("gpu,zone=a")


def wait_for(job_id, cpu, gpu=0, klass="high", **kw):
    return placement.Waiting(id=job_id, klass=klass, rank=1, order=1, cpu_millis=cpu, memory_bytes=GI, gpu=gpu, **kw)


def test_the_demand_of_a_pass_is_what_more_nodes_would_start():
    jobs = [wait_for("w1", 4000, gpu=1, node_selector={"gpu-type": "a100"}), wait_for("w2", 2000),
            wait_for("w3", 1000), wait_for("w4", 8000), wait_for("w5", 500), wait_for("w6", 700)]
    waits = {"w1": placement.Wait(placement.NEVER_FITS, "gpu", "no node has 1 GPU"),
             "w2": placement.Wait(placement.NO_ROOM, "cpu", "needs 2 CPU"),
             "w3": placement.Wait(placement.RESERVED, None, "held"),
             "w4": placement.Wait(placement.QUOTA, "cpu", "team over quota"),
             "w5": placement.Wait(placement.LAUNCH_REFUSED, None, "webhook said no")}
    got = demand.of_pass(jobs, waits)  # w6 was placed: no wait, no demand
    assert set(got) == {("high", "gpu,gpu-type=a100"), ("high", "cpu")}
    assert (got[("high", "cpu")].jobs, got[("high", "cpu")].cpu_millis) == (2, 3000)
    assert got[("high", "gpu,gpu-type=a100")].largest == (1, 4000, GI)


@pytest.mark.parametrize("raw, words", [
    ({"placeholders": {"enabled": "yes"}}, "enabled must be true or false"),
    ({"placeholders": {"enabled": True, "max_per_shape": 0}}, "max_per_shape"),
    ({"placeholders": {"max_per_shape": True}}, "max_per_shape"),
    ({"placeholders": {"interval_seconds": 0.5}}, "interval_seconds"),
    ({"placeholders": {"enabld": True}}, "demand.placeholders takes"),
    ({"placeholder": {}}, "demand takes only placeholders"),
    ("on", "demand takes only placeholders"),
])
def test_a_bad_placeholder_configuration_is_refused_with_its_key(raw, words):
    with pytest.raises(ConfigError, match=words):
        demand.PlaceholderConfig.from_dict(raw)


def test_placeholders_are_off_by_default():
    assert demand.PlaceholderConfig.from_dict(None) == demand.PlaceholderConfig(False, 10, 30.0)
    assert demand.PlaceholderConfig.from_dict({"placeholders": {"enabled": True, "interval_seconds": 5}}).enabled
