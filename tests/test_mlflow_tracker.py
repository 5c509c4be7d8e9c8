"""The MLflow tracker on a real local sqlite store and on a real `mlflow server`.

The server tests start `mlflow server` once for the module (about 10 s) on a free port,
kill it to show that `sync` fails fast with Unavailable while the job's state is kept,
then start it again on the same port and check that every owed operation completes.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sentinels.adapters.mlflow_tracker import FINISHED_TAG, MlflowTracker
from sentinels.domain.errors import InvalidSpec, Unavailable
from sentinels.domain.states import CANCELLED, FAILED, QUEUED, RUNNING, SCHEDULED, SUCCEEDED, transition
from sentinels.domain.tracking import epoch_ms, pending_ops
from sentinels.embedded.natsd import free_port
from test_tracking_pending import job_at


@pytest.fixture(scope="module")
def blank_store(tmp_path_factory):
    """An initialised, empty MLflow database: creating one runs migrations (about 1 s)."""
    path = tmp_path_factory.mktemp("blank") / "mlflow.db"
    MlflowTracker(f"sqlite:///{path}")._client()
    return path


@pytest.fixture
def tracker(tmp_path, blank_store):
    (tmp_path / "mlflow").mkdir()
    shutil.copy(blank_store, tmp_path / "mlflow" / "mlflow.db")
    return MlflowTracker(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")


def outputs(path: Path, files: dict) -> str:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return str(path)


def sync_all(tracker, rec, outputs_dir=None):
    return tracker.sync(rec, outputs_dir) or rec


# --- local sqlite store ----------------------------------------------------------------

def test_start_run_creates_one_tagged_run_with_params(tracker, tmp_path):
    rec = job_at(SCHEDULED)
    out = tracker.start_run(rec)
    assert out["url"] is None  # a local store has no UI
    client = tracker._client()
    run = client.get_run(out["run_id"])
    assert run.info.run_name == "resnet"
    assert run.info.experiment_id == out["experiment_id"]
    assert client.get_experiment(out["experiment_id"]).name == "resnet"
    assert run.data.params == {"lr": "0.01", "batch": "256"}
    tags = run.data.tags
    assert (tags["sentinels.job_id"], tags["sentinels.image"], tags["sentinels.owner"], tags["sentinels.priority"],
            tags["sentinels.attempts"]) == ("ab2cd3ef4g", "python:3.11-slim", "alice", "high", str(rec["attempts"]))
    assert run.info.start_time == epoch_ms(rec["timestamps"][SCHEDULED])
    artifacts = Path(client.get_experiment(out["experiment_id"]).artifact_location)
    assert artifacts == tmp_path / "mlflow" / "artifacts"

    again = tracker.start_run(rec)
    assert again == out
    found = client.search_runs([out["experiment_id"]], filter_string="tags.`sentinels.job_id` = 'ab2cd3ef4g'")
    assert [r.info.run_id for r in found] == [out["run_id"]]
    other = tracker.start_run(job_at(SCHEDULED, job_id="zz2cd3ef4g"))
    assert other["run_id"] != out["run_id"] and other["experiment_id"] == out["experiment_id"]


def test_params_missing_from_an_interrupted_create_are_logged_on_retry(tracker):
    rec = job_at(SCHEDULED)
    exp_id = tracker._experiment_id("resnet")
    # what a create cut off between create_run and the params leaves behind
    half = tracker._client().create_run(exp_id, tags=tracker._tags(rec), run_name="resnet")
    out = tracker.start_run(rec)
    assert out["run_id"] == half.info.run_id
    assert tracker._client().get_run(half.info.run_id).data.params == {"lr": "0.01", "batch": "256"}


def test_ui_url_gives_run_links(tracker):
    tracker.ui_url = "http://mlflow.example/"
    out = tracker.start_run(job_at(SCHEDULED))
    assert out["url"] == f"http://mlflow.example/#/experiments/{out['experiment_id']}/runs/{out['run_id']}"
    rec = tracker.sync(job_at(SCHEDULED))
    assert rec["links"]["mlflow"] == out["url"]


def test_sync_follows_the_job_to_success_with_metrics_and_artifacts(tracker, tmp_path):
    rec = job_at(SCHEDULED)
    rec = tracker.sync(rec)
    client = tracker._client()
    run_id = rec["mlflow_run_id"]
    assert rec["mlflow"]["synced_state"] == SCHEDULED
    assert client.get_run(run_id).info.status == "SCHEDULED"
    assert tracker.sync(rec) is None  # nothing owed

    rec = tracker.sync(transition(rec, RUNNING, now="2026-11-28T05:11:18.102Z"))
    assert client.get_run(run_id).info.status == "RUNNING"

    done = transition(rec, SUCCEEDED, now="2026-11-28T05:12:48.102Z", reason="exit 0")
    out_dir = outputs(tmp_path / "out", {"model.json": '{"w": [1]}', "plots/loss.txt": "0.3"})
    rec = tracker.sync(done, out_dir)
    assert pending_ops(rec) == [] and rec["mlflow"]["synced_state"] == SUCCEEDED
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.end_time == epoch_ms("2026-11-28T05:12:48.102Z")
    assert run.data.metrics == {"time_in_queue_seconds": 10.0, "duration_seconds": 90.0}
    assert run.data.tags[FINISHED_TAG] == "FINISHED" and run.data.tags["sentinels.reason"] == "exit 0"
    stored = tmp_path / "mlflow" / "artifacts" / run_id / "artifacts"
    assert (stored / "model.json").read_text() == '{"w": [1]}'
    assert (stored / "plots" / "loss.txt").read_text() == "0.3"
    assert {a.path for a in client.list_artifacts(run_id)} == {"model.json", "plots"}
    assert tracker.sync(rec, out_dir) is None


def test_outputs_never_follow_a_link_the_job_left(tracker, tmp_path):
    """The job writes its outputs directory; the lifecycle uploads it with its own rights: a
    link to a platform secret (here a credentials file outside the directory) stays behind."""
    secret = tmp_path / "secrets" / "nats-admin.json"
    secret.parent.mkdir()
    secret.write_text('{"password": "platform-secret"}')
    out_dir = outputs(tmp_path / "out", {"model.json": "{}", "plots/loss.txt": "0.3"})
    (Path(out_dir) / "creds.json").symlink_to(secret)
    (Path(out_dir) / "all-secrets").symlink_to(secret.parent, target_is_directory=True)
    (Path(out_dir) / "plots" / "up").symlink_to(tmp_path)
    rec = sync_all(tracker, job_at(SCHEDULED, RUNNING, SUCCEEDED), out_dir)
    client = tracker._client()
    run_id = rec["mlflow_run_id"]
    assert {a.path for a in client.list_artifacts(run_id)} == {"model.json", "plots"}
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/loss.txt"]
    stored = tmp_path / "mlflow" / "artifacts" / run_id / "artifacts"
    assert not [f for f in stored.rglob("*") if f.is_file() and b"platform-secret" in f.read_bytes()]


def test_finish_run_twice_logs_once(tracker, tmp_path):
    rec = sync_all(tracker, job_at(SCHEDULED, RUNNING, FAILED))
    run_id = rec["mlflow_run_id"]
    client = tracker._client()
    assert client.get_run(run_id).info.status == "FAILED"
    client.set_terminated(run_id, "FINISHED")  # e.g. the script's own end_run came later
    tracker.finish_run(rec, "FAILED", {"duration_seconds": 90.0}, str(tmp_path / "missing"))
    assert client.get_run(run_id).info.status == "FINISHED"  # already finished as FAILED once: untouched
    assert len(client.get_metric_history(run_id, "duration_seconds")) == 1
    assert client.list_artifacts(run_id) == []


@pytest.mark.parametrize("path,status", [((SCHEDULED, RUNNING, CANCELLED), "KILLED"),
                                         ((SCHEDULED, FAILED), "FAILED")])
def test_ends_that_are_not_success(tracker, tmp_path, path, status):
    empty = tmp_path / "empty"
    empty.mkdir()
    rec = tracker.sync(job_at(*path), str(empty))
    run = tracker._client().get_run(rec["mlflow_run_id"])
    assert run.info.status == status
    assert tracker._client().list_artifacts(rec["mlflow_run_id"]) == []


def test_a_requeued_job_keeps_its_run_and_counts_attempts(tracker):
    rec = sync_all(tracker, job_at(SCHEDULED, RUNNING))
    requeued = tracker.sync(transition(rec, QUEUED, now="2026-11-28T05:13:00.000Z", reason="node lost"))
    run = tracker._client().get_run(rec["mlflow_run_id"])
    assert requeued["mlflow_run_id"] == rec["mlflow_run_id"]
    assert (run.info.status, run.data.tags["sentinels.attempts"]) == ("SCHEDULED", str(rec["attempts"] + 1))


def test_a_cancelled_queued_job_gets_no_run(tracker):
    assert tracker.sync(job_at(CANCELLED)) is None
    assert tracker._client().get_experiment_by_name("resnet") is None


def test_a_deleted_experiment_is_restored(tracker):
    first = tracker.start_run(job_at(SCHEDULED))
    tracker._client().delete_experiment(first["experiment_id"])
    second = tracker.start_run(job_at(SCHEDULED, job_id="bb2cd3ef4g"))
    assert second["experiment_id"] == first["experiment_id"]
    assert tracker._client().get_experiment(first["experiment_id"]).lifecycle_stage == "active"


def test_bad_records_get_clear_errors(tracker):
    with pytest.raises(InvalidSpec, match="not a job id"):
        tracker.start_run({**job_at(SCHEDULED), "id": "x' or 1=1"})
    with pytest.raises(InvalidSpec, match="no MLflow run"):
        tracker.finish_run(job_at(SCHEDULED, FAILED), "FAILED", {}, None)


# --- a real MLflow tracking server ----------------------------------------------------------

class Server:
    """`mlflow server` on a sqlite store; stop() kills it, start() brings it back on the same port."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 240  # a loaded machine takes minutes to import mlflow
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}: "
                            f"{(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        pytest.fail("mlflow server did not answer /health within 240 s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its uvicorn worker
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    yield srv
    srv.stop()


def test_a_run_created_through_the_http_api(server, tmp_path):
    tracker = MlflowTracker(server.url)
    rec = tracker.sync(job_at(SCHEDULED, RUNNING, SUCCEEDED), outputs(tmp_path / "out", {"model.json": "{}"}))
    run_id, exp_id = rec["mlflow_run_id"], rec["mlflow"]["experiment_id"]
    assert rec["links"]["mlflow"] == f"{server.url}/#/experiments/{exp_id}/runs/{run_id}"
    assert tracker.start_run(rec)["run_id"] == run_id
    run = tracker._client().get_run(run_id)
    assert (run.info.status, run.data.params["lr"], run.data.metrics["duration_seconds"]) == ("FINISHED", "0.01", 90.0)
    assert [a.path for a in tracker._client().list_artifacts(run_id)] == ["model.json"]
    assert list((server.root / "artifacts").rglob("model.json"))  # proxied to the server's store


def test_mlflow_unreachable_then_back(server, tmp_path, monkeypatch):
    from sentinels.adapters.mlflow_tracker import fail_fast_defaults

    for key in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(key, raising=False)
    fail_fast_defaults()  # as tracker_for does when a function is wired (undone by monkeypatch)
    tracker = MlflowTracker(server.url)
    running = tracker.sync(job_at(SCHEDULED, RUNNING, job_id="cc2cd3ef4g"))
    assert running["mlflow"]["synced_state"] == RUNNING

    server.stop()
    # the lifecycle records the transitions first; MLflow is told later
    finished = transition(running, SUCCEEDED, now="2026-11-28T05:12:48.102Z", reason="exit 0")
    fresh = job_at(SCHEDULED, job_id="dd2cd3ef4g")
    out_dir = outputs(tmp_path / "out", {"metrics.json": '{"accuracy": 0.9}'})
    for rec in (finished, fresh):
        began = time.monotonic()
        with pytest.raises(Unavailable, match="did not answer") as caught:
            tracker.sync(rec, out_dir)
        assert time.monotonic() - began < 5  # fails fast, no retries
        assert caught.value.record is None  # no progress to keep
        assert pending_ops(rec)  # still owed

    server.start()
    done = tracker.sync(finished, out_dir)
    assert pending_ops(done) == []
    run = tracker._client().get_run(done["mlflow_run_id"])
    assert (run.info.status, run.data.metrics["duration_seconds"]) == ("FINISHED", 90.0)
    assert [a.path for a in tracker._client().list_artifacts(run.info.run_id)] == ["metrics.json"]
    created = tracker.sync(fresh)
    assert pending_ops(created) == []
    assert tracker._client().get_run(created["mlflow_run_id"]).info.status == "SCHEDULED"


async def test_lifecycle_keeps_states_right_while_mlflow_is_down_and_catches_up(server, monkeypatch):
    """The whole path: scheduled, running and succeeded while the MLflow server is down;
    the job's states never wait for MLflow, and the next ticks bring its run up to date."""
    from tests.test_lifecycle import UPDATE, World, fixture, labelled

    from sentinels.functions.on_job_event.service import LifecycleService
    from sentinels.adapters.memory import MemoryBoard

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")  # what tracker_for sets in a function process
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    w = World()
    tracker = MlflowTracker(server.url)
    w.sched.tracker = w.life.tracker = tracker
    w.life.board = MemoryBoard()
    server.stop()
    try:
        rec = await w.running_job()  # submit, schedule (run creation fails), pod running
        assert rec["state"] == "RUNNING" and rec["mlflow_run_id"] is None
        assert await w.life.handle(UPDATE, labelled(fixture("job-succeeded.yaml"), rec)) == "succeeded"
        assert (await w.get(rec["id"]))["state"] == "SUCCEEDED"
        assert rec["id"] in w.life.owed_mlflow
        assert await w.life.catch_up() == 0  # still down: nothing lost, still owed
    finally:
        server.start()
    # the lifecycle function restarted meanwhile: a new instance learns what is owed from the Board
    w.life = LifecycleService(w.jobs, w.queue, w.history, w.sink, w.cluster, w.life.clock, tracker=tracker,
                              board=w.life.board)
    assert await w.life.catch_up() == 1
    done = await w.get(rec["id"])
    assert done["state"] == "SUCCEEDED" and done["mlflow"]["synced_state"] == SUCCEEDED
    run = tracker._client().get_run(done["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["sentinels.job_id"] == rec["id"]
    assert not w.life.owed_mlflow


def test_fail_fast_settings_are_the_process_defaults_set_once_at_wiring(tmp_path, monkeypatch):
    """MLflow reads its timeout and retries from the environment: the function's wiring sets
    them once (no per-call change of os.environ under a lock); an operator's values win."""
    from sentinels import wiring
    from sentinels.adapters import mlflow_tracker
    from sentinels.settings import Settings

    for key in mlflow_tracker.FAIL_FAST:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    settings = Settings.load(env={"SENTINELS_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert wiring.tracker_for(settings) is not None
    assert (os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"], os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) == ("30", "0")
    assert not hasattr(mlflow_tracker, "_ENV_LOCK") and not hasattr(mlflow_tracker.MlflowTracker, "_fail_fast")


class Peaks:
    """The PeakUsage port as Prometheus would answer for one job (the real adapter is tested
    against a real Prometheus in test_prometheus_e2e.py)."""

    def __init__(self, answer):
        self.answer, self.asked = answer, []

    async def peaks(self, job_id, seconds):
        self.asked.append((job_id, seconds))
        if isinstance(self.answer, Exception):
            raise self.answer
        return dict(self.answer)


@pytest.mark.parametrize("answer", [{"peak_memory_bytes": 3 << 30, "peak_cpu_cores": 1.5, "cpu_seconds": 42.0},
                                    Unavailable("Prometheus at http://p:9090 is unreachable")])
async def test_on_kubernetes_a_finished_jobs_peaks_reach_its_run(tracker, answer):
    from tests.test_lifecycle import UPDATE, World, fixture, labelled

    w = World()
    w.life.tracker, w.life.peaks = tracker, Peaks(answer)
    rec = await w.running_job()
    w.cluster.finish(rec["id"])
    assert await w.life.handle(UPDATE, labelled(fixture("job-succeeded.yaml"), rec)) == "succeeded"
    done = await w.get(rec["id"])
    metrics = tracker._client().get_run(done["mlflow_run_id"]).data.metrics
    assert w.life.peaks.asked and w.life.peaks.asked[0][0] == rec["id"]
    if isinstance(answer, Exception):  # the run is finished all the same, without peaks
        assert done["usage"] == {} and not [k for k in metrics if k.startswith("system/")]
        return
    assert done["usage"]["peak_memory_bytes"] == 3 << 30 and done["usage"]["gpu_seconds"] == 0
    assert metrics["system/peak_memory_bytes"] == 3 << 30 and metrics["system/cpu_seconds"] == 42.0
    assert metrics["system/peak_cpu_cores"] == 1.5 and "duration_seconds" in metrics
    await w.life.sync_mlflow(done)
    assert len(w.life.peaks.asked) == 1  # asked once per job
