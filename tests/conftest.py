"""Shared fixtures: a real nats-server per test, the submit function over real HTTP."""

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from sentinels.adapters import jetstream
from sentinels.embedded import natsd

# Jobs in the suite run as host processes unless a test asks for an engine (tests/engines.py):
# with Podman installed, `local.runtime: auto` would otherwise pull every test's image.
os.environ.setdefault("SENTINELS_RUNTIME", "process")
# Stacks started by tests use their sqlite MLflow store directly unless a test asks for the
# server `sentinels up` runs by default (it takes tens of seconds to start on a loaded machine).
os.environ.setdefault("SENTINELS_MLFLOW_SERVER", "off")

ROOT = Path(__file__).resolve().parent.parent
# Markers (registered in pyproject.toml): `pytest -m fast` runs in seconds.
#   e2e   a whole stack (`sentinels up`, the CLI, the example): modules named *e2e* or listed
#         here, or marked with pytestmark
#   slow  a real server (nats-server, MLflow, kmock, a function process): tests using the
#         fixtures below, or marked; `fast` is every test that is neither
E2E_MODULES = {"test_up_lifecycle", "test_example_train"}
SLOW_FIXTURES = {"nats_url", "js", "twin", "server", "tracker", "blank_store", "stack", "api", "cluster", "function"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        if "e2e" in marks or "slow" in marks:
            continue
        if "engine" in marks:  # a real container engine
            item.add_marker(pytest.mark.slow)
            continue
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if "e2e" in module or module in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)
        elif SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        else:
            item.add_marker(pytest.mark.fast)
# As root, `sentinels up` runs jobs as `nobody`, who cannot reach this checkout's Python
# under /root: the tests run jobs as the test user (tests/test_job_isolation.py covers nobody).
os.environ.setdefault("SENTINELS_RUN_AS", "")


@pytest.fixture
def fake():
    """A local server that answers like Slack (Web API and incoming webhook)."""
    from tests.fake_slack import FakeSlack

    with FakeSlack() as server:
        yield server


@pytest.fixture
def logs(caplog):
    """Every log record, including the Slack SDK's debug output; none may hold a secret."""
    from tests.fake_slack import assert_no_secrets

    caplog.set_level(logging.DEBUG)
    yield caplog
    assert_no_secrets(caplog)


@pytest.fixture
def nats_url(tmp_path):
    port = natsd.free_port()
    proc = natsd.start(tmp_path / "js", port)
    yield f"nats://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
async def js(nats_url):
    nc = await jetstream.connect(nats_url)
    ctx = nc.jetstream(timeout=5)
    await jetstream.ensure(ctx)
    yield ctx
    await nc.close()


def wait_http(url: str, proc=None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=3):
                return
        except urllib.error.HTTPError:  # it answers (503: up, but JetStream is not reachable)
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


class FunctionServer:
    """A function served by functions-framework/uvicorn in a child process."""

    def __init__(self, name: str, env: dict, home: Path):
        self.port = natsd.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log = home / f"{name}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "sentinels.embedded.serve", name, str(self.port)],
                                     env={**os.environ, **env}, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_http(self.url + "/", self.proc)
        except RuntimeError:
            raise RuntimeError(self.log.read_text())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def post_ce(url: str, event_type: str, data, *, token=None, event_id=None, source="tests", structured=False,
            extra_headers=None, raw_body: bytes | None = None):
    """POST a CloudEvent; return (status, json body)."""
    event_id = event_id or str(uuid.uuid4())
    if structured:
        body = json.dumps({"specversion": "1.0", "type": event_type, "source": source, "id": event_id,
                           "datacontenttype": "application/json", "data": data}).encode()
        headers = {"content-type": "application/cloudevents+json"}
    else:
        body = json.dumps(data).encode()
        headers = {"content-type": "application/json", "ce-specversion": "1.0", "ce-type": event_type,
                   "ce-source": source, "ce-id": event_id}
    if raw_body is not None:
        body = raw_body
    if token:
        headers["authorization"] = f"Bearer {token}"
    headers.update(extra_headers or {})
    req = urllib.request.Request(url + "/", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def pytest_terminal_summary(terminalreporter):
    """Say how many tests ran on a real container engine (they skip, with the reason, without one)."""
    ran, skipped, why = 0, 0, set()
    for outcome in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(outcome, []):
            if "engine" not in getattr(rep, "keywords", {}):
                continue
            if outcome == "skipped":
                skipped += 1
                why.add(str(rep.longrepr[-1]) if isinstance(rep.longrepr, tuple) else "")
            elif rep.when == "call" or outcome == "error":
                ran += 1
    if ran or skipped:
        line = f"container engine tests: {ran} ran, {skipped} skipped"
        terminalreporter.write_line(line + (f" ({'; '.join(sorted(why))})" if why else ""))


TOKENS = {"alice": "tok-alice", "bob": "tok-bob", "carol": "tok-carol", "root": "tok-root"}


def tokens_file(home: Path) -> Path:
    """alice and carol in team vision, bob in nlp, root an admin."""
    import yaml

    path = home / "tokens.yaml"
    path.write_text(yaml.safe_dump({"users": [
        {"user": "alice", "team": "vision", "role": "user", "token": TOKENS["alice"]},
        {"user": "bob", "team": "nlp", "role": "user", "token": TOKENS["bob"]},
        {"user": "carol", "team": "vision", "role": "user", "token": TOKENS["carol"]},
        {"user": "root", "role": "admin", "token": TOKENS["root"]},
    ]}))
    return path


def api_get(url: str, path: str, token: str | None = None, raw: bool = False, timeout: float = 30):
    """GET a read API path; return (status, JSON body or text when raw)."""
    req = urllib.request.Request(url + path, headers={"authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
            return resp.status, (body.decode() if raw else json.loads(body))
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@contextlib.contextmanager
def submit_stack(home: Path, env: dict | None = None):
    """A real nats-server and the submit function over HTTP, with the tokens file above."""
    port = natsd.free_port()
    nats = natsd.start(home / "js", port)
    env = {"SENTINELS_HOME": str(home), "SENTINELS_NATS_URL": f"nats://127.0.0.1:{port}",
           "SENTINELS_TOKENS_FILE": str(tokens_file(home)), **(env or {})}
    try:
        fn = FunctionServer("submit", env, home)
        try:
            yield fn
        finally:
            fn.stop()
    finally:
        nats.terminate()
        nats.wait()
