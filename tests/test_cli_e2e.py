"""The `sentinels` command against a running embedded default (`sentinels up -d`):
NATS JetStream, the four functions, the router and the local executor, all real."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from sentinels.embedded import natsd


def free_block(n=4):
    return natsd.free_block(n)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    base = free_block()
    env = {**os.environ, "SENTINELS_HOME": str(home), "SENTINELS_URL": f"http://127.0.0.1:{base}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "SENTINELS_TICK": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db"}
    up = subprocess.run([sys.executable, "-m", "cli.main", "up", "-d"], env=env, capture_output=True, text=True, timeout=400)
    assert up.returncode == 0, up.stderr + up.stdout
    yield env
    subprocess.run([sys.executable, "-m", "cli.main", "down"], env=env, capture_output=True, timeout=60)


def cli(env, *args, check=True, timeout=60):
    r = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in r.stderr, r.stderr
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_submit_runs_to_the_end_with_status_logs_and_history(env):
    r = cli(env, "submit", "python:3.11", "--name", "hello", "--param", "lr=0.1", "--wait", "--",
            sys.executable, "-c", "print('hello from the job')", timeout=120)
    job_id = r.stdout.strip()
    assert "SUCCEEDED" in r.stderr
    status = json.loads(cli(env, "status", job_id, "-o", "json").stdout)
    assert status["state"] == "SUCCEEDED" and status["spec"]["params"] == {"lr": 0.1}
    for _ in range(50):  # MLflow is brought up to date after the transition, not before it
        if status.get("mlflow", {}).get("synced_state") == "SUCCEEDED":
            break
        time.sleep(0.2)
        status = json.loads(cli(env, "status", job_id, "-o", "json").stdout)
    assert status["mlflow_run_id"] and status["mlflow"]["synced_state"] == "SUCCEEDED"
    assert "hello from the job" in cli(env, "logs", job_id).stdout
    hist = yaml.safe_load(cli(env, "history", job_id, "-o", "yaml").stdout)
    assert [h["to"] for h in hist] == ["QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED"]
    assert job_id in cli(env, "ls", "--all").stdout and job_id not in cli(env, "ls").stdout


def test_failed_job_keeps_exit_code_and_log_lines(env):
    r = cli(env, "submit", "python:3.11", "--name", "boom", "--wait", "--", sys.executable, "-c",
            "import sys; print('about to fail'); sys.exit(3)", check=False, timeout=120)
    assert r.returncode == 1
    status = json.loads(cli(env, "status", r.stdout.strip(), "-o", "json").stdout)
    assert status["state"] == "FAILED" and "exit code 3" in status["reason"]
    assert any("about to fail" in line for line in status.get("log_tail", []))


def test_waiting_job_says_why_and_can_be_reprioritized_and_cancelled(env):
    job_id = cli(env, "submit", "python:3.11", "--cpu", "60", "--name", "huge", "--", "true").stdout.strip()
    for _ in range(50):
        status = json.loads(cli(env, "status", job_id, "-o", "json").stdout)
        if "can never fit" in status["reason"]:
            break
        time.sleep(0.2)
    assert status["state"] == "QUEUED" and status["position"] == 1
    table = cli(env, "status", job_id).stdout
    assert "can never fit" in table and "position:" in table
    assert "huge" in cli(env, "queue").stdout
    assert "high" in cli(env, "priority", job_id, "high").stdout
    q = json.loads(cli(env, "queue", "-o", "json").stdout)
    assert q["by_class"] == {"high": 1} and q["jobs"][0]["id"] == job_id
    assert "CANCELLED" in cli(env, "cancel", job_id).stdout
    assert json.loads(cli(env, "queue", "-o", "json").stdout)["total"] == 0
    r = cli(env, "cancel", "zzzzzzzzzz", check=False)
    assert r.returncode == 1 and "not found" in r.stderr


@pytest.mark.parametrize("content,words", [
    ("name: [unclosed", "not valid YAML"),
    ("!!python/object/apply:os.system ['echo pwned']", "construct objects"),
    ("- a\n- b\n", "mapping of fields"),
    ("gpus: 2\n", "unknown field(s): gpus"),
    ("resources: {cpu: -1}\n", "must not be negative"),
    ("resources: {memory: 10Zi}\n", "unknown unit"),
    ("data: /etc/shadow\n", "outside the data roots"),
    ("priority: ultra\n", "unknown class"),
    ("#" * 70_000, "over the 64 KiB limit"),
])
def test_bad_config_files_are_clear_errors_and_write_nothing(env, tmp_path, content, words):
    before = json.loads(cli(env, "queue", "-o", "json").stdout)["total"]
    path = tmp_path / "job.yaml"
    path.write_text(content)
    r = cli(env, "submit", "python:3.11", "--config", str(path), "--", "true", check=False)
    assert r.returncode != 0 and words in r.stderr
    assert json.loads(cli(env, "queue", "-o", "json").stdout)["total"] == before


def test_bad_flags(env):
    r = cli(env, "submit", "python:3.11", "--env", "NOEQUALS", "--", "true", check=False)
    assert r.returncode != 0 and "KEY=VALUE" in r.stderr
    r = cli(env, "ls", "-o", "xml", check=False)
    assert r.returncode == 2 and "choose one of" in r.stderr
    r = cli(env, "status", "not-an-id", check=False)
    assert r.returncode != 0 and "not a job id" in r.stderr


def test_second_up_refuses(env):
    r = cli(env, "up", "-d", check=False)
    assert r.returncode == 1 and "already running" in r.stderr


def test_nothing_listening_names_the_address(tmp_path):
    port = natsd.free_port()
    env = {**os.environ, "SENTINELS_HOME": str(tmp_path), "SENTINELS_URL": f"http://127.0.0.1:{port}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{port}"}
    r = cli(env, "submit", "python:3.11", "--", "true", check=False)
    assert r.returncode == 1 and f"127.0.0.1:{port}" in r.stderr and "sentinels up" in r.stderr
    r = cli(env, "queue", check=False)
    assert r.returncode == 1 and f"nats://127.0.0.1:{port}" in r.stderr and "sentinels up" in r.stderr


def test_cancel_a_running_job_stops_its_process(env):
    job_id = cli(env, "submit", "python:3.11", "--name", "sleeper", "--", sys.executable, "-c",
                 "import time; print('started', flush=True); time.sleep(120)").stdout.strip()
    for _ in range(100):
        if json.loads(cli(env, "status", job_id, "-o", "json").stdout)["state"] == "RUNNING":
            break
        time.sleep(0.2)
    assert "cancel requested" in cli(env, "cancel", job_id).stdout
    for _ in range(100):
        status = json.loads(cli(env, "status", job_id, "-o", "json").stdout)
        if status["state"] == "CANCELLED":
            break
        time.sleep(0.2)
    assert status["state"] == "CANCELLED" and status["reason"].startswith("cancel")
    assert "job-id" not in json.loads(cli(env, "queue", "-o", "json").stdout)
    hist = [h["to"] for h in json.loads(cli(env, "history", job_id, "-o", "json").stdout)]
    assert hist[-1] == "CANCELLED" and "RUNNING" in hist


@pytest.mark.parametrize("config,words", [
    ("priorities: {classes: {High: 1}}\n", "class name 'High'"),
    ("scheduler: {strategy: Random}\n", "strategy must be one of"),
    ("colour: blue\n", "unknown key(s) colour"),
    ("limits: {cpu: lots}\n", "bad limits"),
    ("local: {slots: 0}\n", "local.slots"),
    ("scheduler: {tick: 0}\n", "scheduler.tick: must be a number of seconds more than 0"),
    ("scheduler: {tick: -5}\n", "scheduler.tick"),
    ("backend: local\nnats_sync: 1s\nbackend: kubernetes\n", "line 3, column 1: not valid YAML: duplicate key 'backend'"),
    ("notify:\n  on: [failed]\n  on: [succeeded]\n", "line 3, column 3: not valid YAML: duplicate key 'on'"),
    ("scheduler: {tick: 10\nlimits: {}\n", "line 2, column 7: not valid YAML"),
])
def test_up_refuses_a_bad_configuration_at_start(tmp_path, config, words):
    (tmp_path / "config.yaml").write_text(config)
    env = {**os.environ, "SENTINELS_HOME": str(tmp_path), "SENTINELS_URL": f"http://127.0.0.1:{free_block()}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}"}
    r = cli(env, "up", "-d", check=False, timeout=120)
    assert r.returncode != 0 and words in r.stderr, r.stderr
    assert not (tmp_path / "run" / "up.pid").exists()


@pytest.mark.parametrize("tokens,words", [
    ("users: [{team: vision, token: abc}]\n", "needs a user name"),
    ("users: [{user: alice}]\n", "needs token or token_sha256"),
    ("!!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ("users: [{user: bob, role: amdin, token: abc}]\n", "users[0] (bob): unknown role 'amdin'"),
    ("users:\n  - {user: bob, token: abc}\n  - {user: eve, token: abc, token: def}\n",
     "line 3, column 29: not valid YAML: duplicate key 'token'"),
])
def test_up_refuses_a_bad_tokens_file(tmp_path, tokens, words):
    (tmp_path / "tokens.yaml").write_text(tokens)
    (tmp_path / "config.yaml").write_text(f"tokens_file: {tmp_path / 'tokens.yaml'}\n")
    env = {**os.environ, "SENTINELS_HOME": str(tmp_path), "SENTINELS_URL": f"http://127.0.0.1:{free_block()}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}"}
    r = cli(env, "up", "-d", check=False, timeout=120)
    assert r.returncode != 0 and "tokens file" in r.stderr and words in r.stderr, r.stderr
    assert r.stderr.startswith("sentinels: up: tokens file") and r.stderr.count("sentinels") == 1, r.stderr


def test_bad_counts_are_refused_before_anything_is_asked(tmp_path):
    env = {**os.environ, "SENTINELS_HOME": str(tmp_path), "SENTINELS_URL": f"http://127.0.0.1:{free_block()}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}"}
    for n in ("0", "-3"):
        r = cli(env, "queue", "-n", n, check=False)
        assert r.returncode == 2 and "must be at least 1" in r.stderr and "sentinels up" not in r.stderr, r.stderr


def test_up_refuses_a_bad_tick_in_the_environment(tmp_path):
    env = {**os.environ, "SENTINELS_HOME": str(tmp_path), "SENTINELS_URL": f"http://127.0.0.1:{free_block()}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "SENTINELS_TICK": "0"}
    r = cli(env, "up", "-d", check=False, timeout=120)
    assert r.returncode != 0 and "SENTINELS_TICK" in r.stderr, r.stderr
    assert not (tmp_path / "run" / "up.pid").exists()


def test_a_job_without_command_is_refused_for_the_local_runtime(env):
    r = cli(env, "submit", "python:3.11", check=False)
    assert r.returncode != 0 and "command: required here" in r.stderr and "-- python train.py" in r.stderr, r.stderr
    assert r.stdout == ""


def test_the_job_sees_its_configuration_as_written_and_mlflow_the_same_values(env, tmp_path):
    """Numbers stay numbers and nesting is kept from the YAML to the job (examples/train.py
    does not cast) and to MLflow; SENTINELS_CONFIG is not the internal record."""
    from pathlib import Path

    from sentinels import yamlfile

    train = Path(__file__).resolve().parents[1] / "examples" / "train.py"
    cfg = tmp_path / "job.yaml"
    cfg.write_text("name: typed\nimage: python:3.11\nresources: {cpu: 1, memory: 512Mi}\n"
                   "params: {lr: 0.25, epochs: 3, n: 200, seed: 1, opt: {name: sgd, betas: [0.9, 0.99]}}\n"
                   "notify: {on: [failed]}\n")
    r = cli(env, "submit", "python:3.11", "--config", str(cfg), "--param", "features=4", "--wait", "--",
            sys.executable, str(train), timeout=180)
    job_id = r.stdout.strip()
    assert "SUCCEEDED" in r.stderr, r.stderr
    job_dir = Path(env["SENTINELS_HOME"]) / "jobs" / job_id
    seen = yamlfile.parse((job_dir / "job.yaml").read_text(), "job.yaml")
    assert seen["params"] == {"lr": 0.25, "epochs": 3, "n": 200, "seed": 1, "features": 4,
                              "opt": {"name": "sgd", "betas": [0.9, 0.99]}}
    assert seen["resources"] == {"cpu": "1", "memory": "512Mi", "gpu": 0} and seen["notify"] == {"on": ["failed"]}
    assert seen["name"] == "typed" and seen["priority"] == "normal" and "cpu_millis" not in str(seen)
    model = json.loads((job_dir / "outputs" / "model.json").read_text())
    assert model["params"]["lr"] == 0.25 and model["params"]["epochs"] == 3 and len(model["weights"]) == 4
    status = json.loads(cli(env, "status", job_id, "-o", "json").stdout)
    from mlflow.tracking import MlflowClient

    params = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(status["mlflow_run_id"]).data.params
    assert params["lr"] == "0.25" and params["opt.name"] == "sgd" and params["opt.betas"] == "[0.9, 0.99]"
    assert params["features"] == "4"


def test_a_timeout_says_it_timed_out(env):
    r = cli(env, "submit", "python:3.11", "--timeout", "3s", "--wait", "--", sys.executable, "-c",
            "import time; time.sleep(120)", check=False, timeout=180)
    job_id = r.stdout.strip()
    assert r.returncode == 1 and "FAILED" in r.stderr, r.stderr
    status = json.loads(cli(env, "status", job_id, "-o", "json").stdout)
    assert status["reason"] == "timed out: deadline of 3s exceeded", status["reason"]


def test_retries_show_every_attempt_with_its_exit_code_and_its_output(env):
    script = ("import os, sys; n = len(os.listdir('.')) + 1; open(f'run{n}', 'w').close(); "
              "print(f'this is run {n}', flush=True); sys.exit(2 + n)")
    r = cli(env, "submit", "python:3.11", "--retries", "1", "--wait", "--", sys.executable, "-c", script,
            check=False, timeout=180)
    job_id = r.stdout.strip()
    assert r.returncode == 1, r.stderr
    status = json.loads(cli(env, "status", job_id, "-o", "json").stdout)
    assert status["reason"] == "exit code 4 (attempt 2 of 2)", status["reason"]
    assert re.search(r"^attempts:\s+2$", cli(env, "status", job_id).stdout, re.M)
    history = json.loads(cli(env, "history", job_id, "-o", "json").stdout)
    assert [(h["attempts"], h["exit_code"]) for h in history if "exit_code" in h] == [(1, 3), (2, 4)]
    assert cli(env, "logs", job_id).stdout.strip() == "this is run 2"
    assert cli(env, "logs", job_id, "--attempt", "1").stdout.strip() == "this is run 1"
    missing = cli(env, "logs", job_id, "--attempt", "3", check=False)
    assert missing.returncode == 1 and "no attempt 3 (attempts: 1, 2)" in missing.stderr


def test_ls_queue_and_status_give_the_same_reason_and_local_status_has_no_kubernetes_line(env):
    r = cli(env, "submit", "python:3.11", "--cpu", "60", "--name", "too-big", "--", "true")
    job_id = r.stdout.strip()
    deadline = time.monotonic() + 60
    while True:  # the scheduler's next pass (tick 1 s) records why it waits
        status = json.loads(cli(env, "status", job_id, "-o", "json").stdout)
        if "can never fit" in status["reason"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "can never fit as the cluster is now: needs 60 CPU" in status["reason"], status["reason"]
    rows = [x for x in json.loads(cli(env, "queue", "-o", "json").stdout)["jobs"] if x["id"] == job_id]
    assert rows[0]["reason"] == status["reason"]
    line = [x for x in cli(env, "ls").stdout.splitlines() if x.startswith(job_id)][0]
    assert line.endswith(status["reason"]) and "waiting for the scheduler" not in line
    assert "kubernetes job" not in cli(env, "status", job_id).stdout
    cli(env, "cancel", job_id)
