"""What MLflow operations a job record still owes (pure: sentinels.domain.tracking).

Records are built with the real `new_record` and `transition`, so they have the shape the
lifecycle writes. `job_at` is reused by the MLflow adapter and example tests.
"""

from datetime import datetime, timedelta, timezone

import pytest

from sentinels.domain.job import new_record
from sentinels.domain.spec import validate
from sentinels.domain.states import CANCELLED, FAILED, QUEUED, RUNNING, SCHEDULED, SUCCEEDED, transition
from sentinels.domain.tracking import apply_synced, epoch_ms, metrics_of, pending_ops

T0 = datetime(2026, 11, 28, 5, 10, 28, 102000, tzinfo=timezone.utc)
SPEC = {"image": "python:3.11-slim", "name": "resnet", "experiment": "resnet",
        "params": {"lr": 0.01, "batch": 256}, "resources": {"cpu": 1, "memory": "512Mi"}}


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_at(*states, job_id="ab2cd3ef4g", spec=None, owner="alice"):
    """A record submitted at T0 then moved through `states`, 10 s, 40 s, 90 s... apart."""
    rec = new_record(job_id=job_id, spec=validate(spec or SPEC), who={"user": owner, "team": "vision"},
                     klass="high", now=iso(T0), queue_seq=1)
    moment = T0
    for i, state in enumerate(states):
        moment += timedelta(seconds=10 * (i + 1) ** 2)
        rec = transition(rec, state, now=iso(moment), reason=f"now {state.lower()}")
    return rec


def synced(rec, state, run_id="run-1"):
    return {**rec, "mlflow": {"run_id": run_id, "experiment_id": "1", "url": None, "synced_state": state},
            "mlflow_run_id": run_id}


def names(ops):
    return [(op["op"], op.get("status")) for op in ops]


def test_a_queued_job_owes_nothing_until_scheduled():
    assert pending_ops(job_at()) == []
    assert pending_ops(job_at(CANCELLED)) == []


def test_a_scheduled_job_owes_its_run_then_the_scheduled_status():
    assert names(pending_ops(job_at(SCHEDULED))) == [("create", None), ("mark", "SCHEDULED")]


def test_running_owes_the_running_mark_once():
    rec = synced(job_at(SCHEDULED, RUNNING), SCHEDULED)
    assert names(pending_ops(rec)) == [("mark", "RUNNING")]
    assert pending_ops(synced(rec, RUNNING)) == []


def test_a_finished_job_owes_the_finish_with_metrics_from_its_timestamps():
    rec = synced(job_at(SCHEDULED, RUNNING, SUCCEEDED), RUNNING)
    [op] = pending_ops(rec)
    assert (op["op"], op["state"], op["status"]) == ("finish", SUCCEEDED, "FINISHED")
    # submitted at T0, scheduled at T0+10 s, running at T0+50 s, succeeded at T0+140 s
    assert op["metrics"] == {"time_in_queue_seconds": 10.0, "duration_seconds": 90.0}


@pytest.mark.parametrize("path,status", [((SCHEDULED, RUNNING, FAILED), "FAILED"),
                                         ((SCHEDULED, RUNNING, CANCELLED), "KILLED"),
                                         ((SCHEDULED, CANCELLED), "KILLED")])
def test_terminal_states_map_to_mlflow_statuses(path, status):
    assert names(pending_ops(job_at(*path))) == [("create", None), ("finish", status)]


def test_a_job_that_failed_before_running_gets_a_failed_run_without_duration():
    [create, finish] = pending_ops(job_at(SCHEDULED, FAILED))
    assert create == {"op": "create"}
    assert finish["metrics"] == {"time_in_queue_seconds": 10.0}  # it waited, it never ran


def test_a_requeued_job_is_marked_scheduled_again():
    rec = synced(job_at(SCHEDULED, RUNNING, QUEUED), RUNNING)
    assert rec["attempts"] == job_at()["attempts"] + 1
    assert names(pending_ops(rec)) == [("mark", "SCHEDULED")]
    assert pending_ops(synced(job_at(SCHEDULED, QUEUED), SCHEDULED)) == []


def test_a_terminal_synced_state_is_final():
    assert pending_ops(synced(job_at(SCHEDULED, RUNNING, SUCCEEDED), SUCCEEDED)) == []


def test_a_run_id_from_the_top_level_field_is_used():
    rec = {**job_at(SCHEDULED, RUNNING), "mlflow_run_id": "run-9"}
    assert names(pending_ops(rec)) == [("mark", "RUNNING")]
    after = apply_synced(rec, pending_ops(rec)[0])
    assert after["mlflow"] == {"run_id": "run-9", "synced_state": RUNNING}


@pytest.mark.parametrize("path", [(), (SCHEDULED,), (SCHEDULED, RUNNING), (SCHEDULED, RUNNING, QUEUED),
                                  (SCHEDULED, RUNNING, SUCCEEDED), (SCHEDULED, FAILED), (CANCELLED,),
                                  (SCHEDULED, QUEUED, SCHEDULED, RUNNING, CANCELLED)])
def test_applying_every_owed_op_leaves_nothing_owed(path):
    rec = job_at(*path)
    before = repr(rec)
    current = rec
    for op in pending_ops(rec):
        result = {"run_id": "r1", "experiment_id": "3", "url": "http://ml/#/experiments/3/runs/r1"} \
            if op["op"] == "create" else None
        current = apply_synced(current, op, result)
    assert pending_ops(current) == []
    assert repr(rec) == before  # pure: the input record is untouched


def test_create_fills_the_run_id_and_link_keeping_other_links():
    rec = {**job_at(SCHEDULED), "links": {"kibana": "http://k/x"}}
    after = apply_synced(rec, {"op": "create"}, {"run_id": "r1", "experiment_id": "3", "url": "http://ml/r1"})
    assert after["mlflow_run_id"] == "r1"
    assert after["links"] == {"kibana": "http://k/x", "mlflow": "http://ml/r1"}
    assert after["mlflow"] == {"run_id": "r1", "experiment_id": "3", "url": "http://ml/r1", "synced_state": None}
    without_url = apply_synced(job_at(SCHEDULED), {"op": "create"}, {"run_id": "r1", "experiment_id": "3", "url": None})
    assert "mlflow" not in (without_url.get("links") or {})


def test_an_unknown_op_is_refused():
    with pytest.raises(ValueError, match="unknown MLflow operation"):
        apply_synced(job_at(SCHEDULED), {"op": "explode"})


def test_timestamps_are_parsed_strictly():
    assert epoch_ms("2026-11-28T05:10:28.102Z") == int(T0.timestamp() * 1000)
    assert epoch_ms("2026-11-28T05:10:28") is None  # no zone: ambiguous
    assert epoch_ms("yesterday") is None and epoch_ms(None) is None
    rec = job_at(SCHEDULED, RUNNING, SUCCEEDED)
    rec["timestamps"][RUNNING] = "garbage"
    assert metrics_of(rec) == {"time_in_queue_seconds": 10.0}  # no run time from a garbage start
    assert pending_ops({"state": "EXPLODED"}) == []
