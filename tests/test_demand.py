"""Queued demand per class and node shape, as metrics samples and as placeholder workloads."""

import kubernetes_validate
import pytest

from sentinels.domain import demand
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
