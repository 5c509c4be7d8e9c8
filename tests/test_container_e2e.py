"""The embedded default with real containers: `sentinels up -d` with the Podman runtime and
the MLflow server it runs for a local store; jobs pulled from a docker-registry on loopback
log to MLflow over HTTP from inside their container (host networking)."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from sentinels.embedded import natsd
from tests import engines
from tests.test_cli_e2e import cli
from tests.test_container_runtime import containers

PROBLEM = engines.engine_problem()
pytestmark = [pytest.mark.engine, pytest.mark.skipif(PROBLEM is not None, reason=f"no container engine: {PROBLEM}")]
MLFLOW_START = 240  # seconds: `mlflow server` imports and opens its store slowly on a loaded machine


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctr")
    reg = engines.Registry(root / "registry")
    local = engines.unique_tag()
    image = f"{reg.host}/sentinels-e2e:1"
    home = root / "home"
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump({
        "local": {"runtime": "podman", "insecure_registries": [reg.host], "stop_grace": "2s"},
        "lifecycle": {"image_pull_grace_seconds": 3}}))
    base = natsd.free_block(6)
    env = {**os.environ, "SENTINELS_HOME": str(home), "SENTINELS_URL": f"http://127.0.0.1:{base}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "SENTINELS_TICK": "1",
           "SENTINELS_MLFLOW_SERVER": "on"}
    env.pop("SENTINELS_RUNTIME", None)  # the configuration says podman
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        reg.push(engines.build(root, local), "sentinels-e2e:1")
        up = subprocess.run([sys.executable, "-m", "cli.main", "up", "-d"], env=env, capture_output=True, text=True,
                            timeout=180)
        assert up.returncode == 0, up.stderr + up.stdout
        ui = f"http://127.0.0.1:{base + 5}"
        assert f"MLflow UI at {ui}" in up.stdout and "runtime: podman" in up.stderr
        deadline = time.monotonic() + MLFLOW_START
        while True:
            try:
                with urllib.request.urlopen(f"{ui}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, (home / "logs" / "mlflow.log").read_text()[-3000:]
                time.sleep(0.5)
        yield env, image, ui
    finally:
        subprocess.run([sys.executable, "-m", "cli.main", "down"], env=env, capture_output=True, timeout=60)
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


def test_a_container_job_logs_to_mlflow_over_http_and_its_outputs_become_artifacts(stack):
    env, image, ui = stack
    script = ("cat /MARKER; wget -q -O- --header 'Content-Type: application/json' --post-data "
              "\"{\\\"run_id\\\": \\\"$MLFLOW_RUN_ID\\\", \\\"key\\\": \\\"acc\\\", \\\"value\\\": 0.93, "
              "\\\"timestamp\\\": 0, \\\"step\\\": 1}\" $MLFLOW_TRACKING_URI/api/2.0/mlflow/runs/log-metric; "
              "echo; echo weights > $SENTINELS_OUTPUTS/model.txt")
    r = cli(env, "submit", image, "--name", "boxed", "--", "sh", "-c", script)
    job_id = r.stdout.strip()
    assert "runtime podman" in r.stderr and "not used" not in r.stderr
    status = wait_state(env, job_id)
    assert status["state"] == "SUCCEEDED", status
    assert status["runtime"] == "podman"
    table = cli(env, "status", job_id).stdout
    assert "podman" in table and ui in table  # the runtime and the MLflow UI
    assert engines.MARKER in cli(env, "logs", job_id).stdout
    run_id = status["mlflow_run_id"]
    deadline = time.monotonic() + 60
    while True:  # artifacts are logged after the transition
        files = mlflow(ui, f"artifacts/list?run_id={run_id}").get("files") or []
        if files:
            break
        assert time.monotonic() < deadline, "no artifacts"
        time.sleep(0.5)
    assert "model.txt" in json.dumps(files)
    run = mlflow(ui, f"runs/get?run_id={run_id}")["run"]
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]}.get("acc") == 0.93  # logged from the container
    assert {t["key"]: t["value"] for t in run["data"]["tags"]}["sentinels.runtime"] == "podman"


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
