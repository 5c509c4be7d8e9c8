"""The example experiment (examples/train.py) run as a job would run it: a subprocess with
SENTINELS_CONFIG, SENTINELS_OUTPUTS and the MLflow run the tracker created."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from sentinels.adapters.mlflow_tracker import MlflowTracker
from sentinels.domain.spec import validate
from sentinels.domain.states import RUNNING, SCHEDULED, SUCCEEDED, transition
from sentinels.embedded.natsd import free_port
from test_tracking_pending import job_at

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TRAIN = EXAMPLES / "train.py"


def run_train(tmp_path: Path, env: dict, config: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SENTINELS_"))}
    if config is not None:
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
        base["SENTINELS_CONFIG"] = str(tmp_path / "job.yaml")
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, str(TRAIN)], cwd=work, env={**base, **env}, capture_output=True,
                          text=True, timeout=60)


def test_the_example_spec_is_a_valid_job_spec():
    spec = validate(yaml.safe_load((EXAMPLES / "train.yaml").read_text()))
    assert spec["resources"]["cpu_millis"] == 1000 and spec["resources"]["memory"] == "512Mi"
    assert set(spec["params"]) >= {"lr", "epochs", "n"}


def test_train_logs_into_the_run_the_tracker_created(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    tracker = MlflowTracker(uri)
    config = {"name": "logreg", "image": "python:3.11-slim", "experiment": "logreg",
              "params": {"lr": 0.3, "epochs": 6, "n": 600, "features": 4, "seed": 3}}
    rec = tracker.sync(job_at(SCHEDULED, RUNNING, spec=config))
    run_id = rec["mlflow_run_id"]
    outputs = tmp_path / "outputs"

    done = run_train(tmp_path, {"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id,
                                "SENTINELS_OUTPUTS": str(outputs)}, config)
    assert done.returncode == 0, done.stderr
    assert "epoch 6/6" in done.stdout and f"logging to MLflow run {run_id}" in done.stdout

    client = tracker._client()
    losses = client.get_metric_history(run_id, "loss")
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == [1, 2, 3, 4, 5, 6]
    by_step = {m.step: m.value for m in losses}
    assert by_step[6] < by_step[1]  # it learns
    assert len(client.get_metric_history(run_id, "test_accuracy")) == 6
    model = json.loads((outputs / "model.json").read_text())
    summary = json.loads((outputs / "metrics.json").read_text())
    assert len(model["weights"]) == 4 and model["params"]["lr"] == 0.3
    assert summary["epochs"] == 6 and summary["final_accuracy"] > 0.7
    assert summary["final_accuracy"] == client.get_run(run_id).data.metrics["test_accuracy"]

    finished = tracker.sync(transition(rec, SUCCEEDED, now="2026-11-28T05:12:48.102Z"), str(outputs))
    assert {a.path for a in client.list_artifacts(finished["mlflow_run_id"])} == {"model.json", "metrics.json"}
    assert client.get_run(run_id).info.status == "FINISHED"


def test_train_by_hand_uses_defaults_and_needs_no_mlflow(tmp_path):
    done = run_train(tmp_path, {})
    assert done.returncode == 0, done.stderr
    assert "epoch 40/40" in done.stdout
    model = json.loads((tmp_path / "work" / "outputs" / "model.json").read_text())
    assert len(model["weights"]) == 5
    assert not list(tmp_path.rglob("mlflow.db")) and not list(tmp_path.rglob("mlruns"))


def test_train_keeps_going_when_mlflow_does_not_answer(tmp_path):
    done = run_train(tmp_path, {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "MLFLOW_RUN_ID": "0" * 32,
                                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "SENTINELS_OUTPUTS": str(tmp_path / "o")},
                     {"params": {"epochs": 3}})
    assert done.returncode == 0, done.stderr
    assert "MLflow unavailable, training without it" in done.stdout and "epoch 3/3" in done.stdout
    assert (tmp_path / "o" / "metrics.json").exists()


def test_bad_params_stop_with_a_message_not_a_traceback(tmp_path):
    done = run_train(tmp_path, {"SENTINELS_OUTPUTS": str(tmp_path / "o")}, {"params": {"lr": "fast"}})
    assert done.returncode != 0
    assert "params.lr must be a float" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()  # nothing half-written
