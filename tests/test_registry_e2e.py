"""A private registry with the embedded default: two `docker-registry` servers on loopback
ask for a password (htpasswd); the stack has an auth file for one of them only.

The job from the registry with credentials runs in its image; the job from the other
fails as an image pull failure in the engine's words ("unauthorized") after the grace;
and the password is nowhere: not in any file under SENTINELS_HOME (the JetStream store,
logs, job directories), nor in any record, history, log or listing the API gives.
"""

import base64
import json
from pathlib import Path

import pytest

from tests import engines
from tests.test_cli_e2e import cli
from tests.test_container_e2e import wait_state

PROBLEM = engines.engine_problem()
pytestmark = [pytest.mark.engine, pytest.mark.skipif(PROBLEM is not None, reason=f"no container engine: {PROBLEM}")]
PASSWORD = "pw-4c9e1f-never-shown"
OTHER_PASSWORD = "pw-77ab02-other-team"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("private")
    ours = engines.Registry(root / "ours", users={"ml-bot": PASSWORD})
    theirs = engines.Registry(root / "theirs", users={"other-bot": OTHER_PASSWORD})
    local = engines.unique_tag()
    supervisor, images = None, {}
    try:
        engines.build(root, local)
        images = {"ours": ours.push(local, "private:1"), "theirs": theirs.push(local, "private:1")}
        auth = ours.auth_file(root / "secrets" / "auth.json")  # outside SENTINELS_HOME, as a user keeps it
        env = engines.stack_env(root / "home", {
            "local": {"runtime": "podman", "insecure_registries": [ours.host, theirs.host], "stop_grace": "2s"},
            "lifecycle": {"image_pull_grace_seconds": 3},
            "registries": {ours.host: {"auth_file": str(auth)}}},
            SENTINELS_MLFLOW_SERVER="off", MLFLOW_TRACKING_URI="none")
        supervisor = engines.supervise(env, "sentinels up: submit at", 300)
        yield env, images
    finally:
        engines.stop(supervisor)
        engines.podman("rmi", "--force", local, *images.values(), check=False)
        ours.stop()
        theirs.stop()


def test_with_credentials_the_job_pulls_and_runs_without_them_it_fails_unauthorized(stack):
    env, images = stack
    engines.podman("rmi", "--force", *images.values(), check=False)  # every job pulls
    assert "registry credentials: 127.0.0.1:" in (Path(env["SENTINELS_HOME"]) / "up.log").read_text()
    ok = cli(env, "submit", images["ours"], "--name", "private", "--", "cat", "/MARKER").stdout.strip()
    denied = cli(env, "submit", images["theirs"], "--name", "borrowed", "--", "cat", "/MARKER").stdout.strip()
    status = wait_state(env, ok)
    assert status["state"] == "SUCCEEDED", status
    assert engines.MARKER in cli(env, "logs", ok).stdout
    status = wait_state(env, denied)
    assert status["state"] == "FAILED", status
    assert "ErrImagePull" in status["reason"] or "ImagePullBackOff" in status["reason"], status["reason"]
    assert "unauthorized" in status["reason"], status["reason"]  # the engine's own words
    history = json.loads(cli(env, "history", denied, "-o", "json").stdout)
    assert [h["to"] for h in history][-1] == "FAILED"

    # nowhere: files under SENTINELS_HOME (raw JetStream store included), records, listings, logs
    secrets = [PASSWORD, OTHER_PASSWORD] + [base64.b64encode(f"{u}:{p}".encode()).decode()
                                            for u, p in (("ml-bot", PASSWORD), ("other-bot", OTHER_PASSWORD))]
    found = [str(f) for f in Path(env["SENTINELS_HOME"]).rglob("*") if f.is_file() and not f.is_symlink()
             and any(s.encode() in f.read_bytes() for s in secrets)]
    assert found == []
    seen = [cli(env, "ls", "--all", "--all-users", "-o", "json").stdout, cli(env, "queue", "-o", "json").stdout]
    for job_id in (ok, denied):
        seen += [cli(env, "status", job_id, "-o", "json").stdout, cli(env, "status", job_id).stdout,
                 cli(env, "history", job_id, "-o", "json").stdout, cli(env, "logs", job_id).stdout]
    assert all(s not in text for s in secrets for text in seen)
    assert any(images["theirs"] in text for text in seen)  # the listings are not empty: the check can fail
