"""The embedded default with real containers: the stack `sentinels up` runs, with the Podman
runtime and the MLflow server it starts for a local store; jobs pulled from a docker-registry
on loopback reach that server over HTTP from inside their container (host networking), and
their outputs come back as the run's artifacts."""

import http.client
import json
import time
import urllib.request

import pytest

from tests import engines
from tests.test_cli_e2e import cli
from tests.test_container_runtime import containers

PROBLEM = engines.engine_problem()
pytestmark = [pytest.mark.engine, pytest.mark.skipif(PROBLEM is not None, reason=f"no container engine: {PROBLEM}")]
MLFLOW_START = 600  # seconds: the stack and `mlflow server` start slowly on a loaded machine


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctr")
    reg = engines.Registry(root / "registry")
    local = engines.unique_tag()
    image = f"{reg.host}/sentinels-e2e:1"
    env = engines.stack_env(root / "home", {
        "local": {"runtime": "podman", "insecure_registries": [reg.host], "stop_grace": "2s"},
        "lifecycle": {"image_pull_grace_seconds": 3}}, SENTINELS_MLFLOW_SERVER="on")
    env.pop("MLFLOW_TRACKING_URI", None)
    supervisor = None
    try:
        reg.push(engines.build(root, local), "sentinels-e2e:1")
        ui = f"http://127.0.0.1:{int(env['SENTINELS_URL'].rsplit(':', 1)[1]) + 5}"
        supervisor = engines.supervise(env, f"MLflow UI at {ui}", MLFLOW_START)
        assert "runtime: podman" in (root / "home" / "up.log").read_text()
        yield env, image, ui
    finally:
        engines.stop(supervisor)
        engines.podman("rmi", "--force", local, image, check=False)
        reg.stop()


def wait_state(env, job_id: str, states=("SUCCEEDED", "FAILED", "CANCELLED"), timeout=180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = json.loads(cli(env, "status", job_id, "-o", "json").stdout)
        if status["state"] in states:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.3)


def mlflow(ui: str, path: str) -> dict:
    with urllib.request.urlopen(f"{ui}/api/2.0/mlflow/{path}", timeout=10) as answer:
        return json.loads(answer.read())


def test_an_unknown_tag_fails_with_err_image_pull_after_the_grace(stack):
    env, image, _ = stack
    job_id = cli(env, "submit", image.rsplit(":", 1)[0] + ":no-such-tag", "--name", "notag", "--", "true").stdout.strip()
    status = wait_state(env, job_id)
    assert status["state"] == "FAILED"
    assert "ErrImagePull" in status["reason"] or "ImagePullBackOff" in status["reason"]
    assert "manifest unknown" in status["reason"]  # the engine's words
    assert containers(job_id) == []


def test_cancel_stops_a_running_container(stack):
    env, image, _ = stack
    job_id = cli(env, "submit", image, "--name", "sleeper", "--", "sh", "-c", "echo started; sleep 300").stdout.strip()
    wait_state(env, job_id, ("RUNNING",))
    assert containers(job_id)
    assert "cancel requested" in cli(env, "cancel", job_id).stdout
    status = wait_state(env, job_id, timeout=60)
    assert status["state"] == "CANCELLED"
    deadline = time.monotonic() + 30
    while containers(job_id):
        assert time.monotonic() < deadline, "the cancelled container is still there"
        time.sleep(0.3)


def test_a_dockerfile_submit_builds_then_runs_and_a_broken_one_fails_with_its_words(stack, tmp_path):
    env, _, _ = stack
    ctx = engines.context_dir(tmp_path)
    (ctx / "Dockerfile").write_text(engines.CONTAINERFILE)
    job_id = cli(env, "submit", "--dockerfile", str(ctx / "Dockerfile"), "--name", "built", "--",
                 "cat", "/MARKER").stdout.strip()
    try:
        status = wait_state(env, job_id, timeout=300)
        assert status["state"] == "SUCCEEDED", status
        hist = [h["to"] for h in json.loads(cli(env, "history", job_id, "-o", "json").stdout)]
        assert hist[:3] == ["BUILDING", "QUEUED", "SCHEDULED"]
        assert status["spec"]["image"] == f"localhost/sentinels/built:{job_id}" and status["image_id"].startswith("sha256:")
        assert "sentinels build:" in cli(env, "logs", job_id, "--build").stdout
        assert engines.MARKER in cli(env, "logs", job_id).stdout
    finally:
        engines.podman("rmi", "--force", f"localhost/sentinels/built:{job_id}", check=False)
    (ctx / "Broken").write_text("FROM scratch\nCOPY nothing-here /x\n")
    broken = cli(env, "submit", "--dockerfile", str(ctx / "Broken"), "--name", "broken", "--", "true").stdout.strip()
    status = wait_state(env, broken, timeout=300)
    assert status["state"] == "FAILED" and status["reason"].startswith("build failed") and "nothing-here" in status["reason"]
    r = cli(env, "submit", "--dockerfile", str(ctx / "Nowhere"), "--", "true", check=False)
    assert r.returncode != 0 and "no such file" in r.stderr


def test_a_container_job_logs_to_mlflow_over_http_and_its_outputs_become_artifacts(stack):
    env, image, ui = stack
    deadline = time.monotonic() + MLFLOW_START
    while True:  # `mlflow server` is not awaited by `up`: it takes minutes to start on a loaded machine
        try:
            with urllib.request.urlopen(f"{ui}/health", timeout=2):
                break
        except (OSError, http.client.HTTPException):  # not listening yet (a connect can even meet itself)
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(1)
    script = ("cat /MARKER; echo mlflow=$(wget -q -O- $MLFLOW_TRACKING_URI/health); "
              "echo weights > $SENTINELS_OUTPUTS/model.txt")
    r = cli(env, "submit", image, "--name", "boxed", "--", "sh", "-c", script)
    job_id = r.stdout.strip()
    assert "runtime podman" in r.stderr and "not used" not in r.stderr
    status = wait_state(env, job_id)
    assert status["state"] == "SUCCEEDED", status
    assert status["runtime"] == "podman"
    table = cli(env, "status", job_id).stdout
    assert "podman" in table and ui in table  # the runtime and the MLflow UI
    lines = cli(env, "logs", job_id).stdout.splitlines()
    assert engines.MARKER in lines and "mlflow=OK" in lines  # the container reached the stack's MLflow server
    deadline = time.monotonic() + MLFLOW_START
    while True:  # the run and its artifacts are brought up to date after the transition (slowly when loaded)
        status = json.loads(cli(env, "status", job_id, "-o", "json").stdout)
        run_id = status.get("mlflow_run_id")
        files = (mlflow(ui, f"artifacts/list?run_id={run_id}").get("files") or []) if run_id else []
        if files:
            break
        assert time.monotonic() < deadline, f"no artifacts: {status}"
        time.sleep(0.5)
    assert "model.txt" in json.dumps(files)
    run = mlflow(ui, f"runs/get?run_id={run_id}")["run"]
    assert {t["key"]: t["value"] for t in run["data"]["tags"]}["sentinels.runtime"] == "podman"
