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


def free_block(n=6):
    return natsd.free_block(n)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    base = free_block()
    env = {**os.environ, "SENTINELS_HOME": str(home), "SENTINELS_URL": f"http://127.0.0.1:{base}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "SENTINELS_TICK": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db"}
    up = subprocess.run([sys.executable, "-m", "sentinels.cli.main", "up", "-d"], env=env, capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stderr + up.stdout
    yield env
    subprocess.run([sys.executable, "-m", "sentinels.cli.main", "down"], env=env, capture_output=True, timeout=60)


def cli(env, *args, check=True, timeout=60):
    r = subprocess.run([sys.executable, "-m", "sentinels.cli.main", *args], env=env, capture_output=True, text=True, timeout=timeout)
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
    assert status["state"] == "SUCCEEDED" and status["spec"]["params"] == {"lr": "0.1"}
    for _ in range(50):  # MLflow is brought up to date after the transition, not before it
        if status.get("mlflow", {}).get("synced_state") == "SUCCEEDED":
            break
        time.sleep(0.2)
        status = json.loads(cli(env, "status", job_id, "-o", "json").stdout)
    assert status["mlflow_run_id"] and status["mlflow"]["synced_state"] == "SUCCEEDED"
    assert "hello from the job" in cli(env, "logs", job_id).stdout
    assert "kubernetes job" not in cli(env, "status", job_id).stdout  # a local run has no Kubernetes Job
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
    assert "can never fit" in table and "position:" in table and re.search(r"waits for: +never_fits \(cpu\)", table)
    assert "huge" in cli(env, "queue").stdout
    row = next(r for r in json.loads(cli(env, "ls", "-o", "json").stdout)["jobs"] if r["id"] == job_id)
    queued = json.loads(cli(env, "queue", "-o", "json").stdout)["jobs"][0]
    assert row["reason"] == queued["reason"] == status["reason"]  # one source for ls, queue and status
    assert row["reason_code"] == queued["reason_code"] == status["reason_code"] == "never_fits"
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
    for args in (["submit", "python:3.11", "--", "true"], ["queue"], ["ls"], ["status", "aaaaaaaaaa"],
                 ["logs", "aaaaaaaaaa", "-f"]):
        r = cli(env, *args, check=False)
        assert r.returncode == 1 and r.stderr.count(f"http://127.0.0.1:{port}") == 1 and "sentinels up" in r.stderr


@pytest.mark.parametrize("args", [["queue", "-n", "0"], ["queue", "-n", "-3"], ["ls", "-n", "0"],
                                  ["events", "--dead", "-n", "0"], ["logs", "aaaaaaaaaa", "-n", "-1"],
                                  ["logs", "aaaaaaaaaa", "--attempt", "0"], ["queue", "-n", "x"]])
def test_counts_below_their_least_are_refused_before_any_request(tmp_path, args):
    port = natsd.free_port()  # nothing listens: a refusal must come before any request
    env = {**os.environ, "SENTINELS_HOME": str(tmp_path), "SENTINELS_URL": f"http://127.0.0.1:{port}"}
    r = cli(env, *args, check=False)
    assert r.returncode == 2 and "cannot reach" not in r.stderr
    assert "is not a whole number of at least" in r.stderr.strip().splitlines()[-1]  # after argparse's usage


def test_every_attempt_has_its_log_and_its_exit_code_in_history(env):
    script = ("import os, sys; n = len([f for f in os.listdir('.') if f.startswith('ran-')]); open(f'ran-{n}', 'w').close(); "
              "print(f'attempt {n + 1} here'); sys.exit(10 + n)")
    r = cli(env, "submit", "python:3.11", "--name", "twice", "--retries", "1", "--wait", "--",
            sys.executable, "-c", script, check=False, timeout=180)
    job_id = r.stdout.strip()
    assert r.returncode == 1, r.stderr
    assert cli(env, "logs", job_id).stdout == "attempt 2 here\n"  # the last by default
    assert cli(env, "logs", job_id, "--attempt", "1").stdout == "attempt 1 here\n"
    assert cli(env, "logs", job_id, "--attempt", "2").stdout == "attempt 2 here\n"
    r = cli(env, "logs", job_id, "--attempt", "3", check=False)
    assert r.returncode == 1 and "has made 2 attempt(s)" in r.stderr
    hist = yaml.safe_load(cli(env, "history", job_id, "-o", "yaml").stdout)
    assert [(h["attempts"], h.get("exit_code")) for h in hist if h.get("exit_code") is not None] == [(1, 10), (2, 11)]
    table = cli(env, "history", job_id).stdout.splitlines()
    assert "EXIT" in table[0].split() and table[-1].split()[3:5] == ["2", "11"]


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
    ("registries: {ghcr.io: {secret: Bad_Name}}\n", "registries.ghcr.io.secret: 'Bad_Name' is not a DNS-1123 name"),
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
])
def test_up_refuses_a_bad_tokens_file(tmp_path, tokens, words):
    (tmp_path / "tokens.yaml").write_text(tokens)
    (tmp_path / "config.yaml").write_text(f"tokens_file: {tmp_path / 'tokens.yaml'}\n")
    env = {**os.environ, "SENTINELS_HOME": str(tmp_path), "SENTINELS_URL": f"http://127.0.0.1:{free_block()}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}"}
    r = cli(env, "up", "-d", check=False, timeout=120)
    assert r.returncode != 0 and "tokens file" in r.stderr and words in r.stderr, r.stderr


def test_sweep_and_array_submit_many_jobs_in_one_request(env):
    code = "import os; print('idx', os.environ['SENTINELS_ARRAY_INDEX'], os.environ['SENTINELS_SWEEP_ID'])"
    r = cli(env, "submit", "python:3.11", "--name", "sw", "--sweep", "lr=0.1,0.2", "--array", "3-4", "--",
            sys.executable, "-c", code)
    sweep_id = r.stdout.strip()
    assert sweep_id.startswith("sw-") and "4 jobs" in r.stderr
    for _ in range(300):
        members = json.loads(cli(env, "ls", "--sweep", sweep_id, "-o", "json").stdout)["jobs"]
        if len(members) == 4 and all(m["state"] == "SUCCEEDED" for m in members):
            break
        time.sleep(0.3)
    assert sorted(m["state"] for m in members) == ["SUCCEEDED"] * 4 and {m["sweep"] for m in members} == {sweep_id}
    records = [json.loads(cli(env, "status", m["id"], "-o", "json").stdout) for m in members]
    assert sorted((rec["spec"]["params"]["lr"], rec["sweep"]["array_index"]) for rec in records) == [
        (0.1, 3), (0.1, 4), (0.2, 3), (0.2, 4)]  # sweep values keep their types, as params do
    rec = records[0]
    assert cli(env, "logs", rec["id"]).stdout.strip() == f"idx {rec['sweep']['array_index']} {sweep_id}"


def test_a_sweep_is_cancelled_as_a_whole_and_a_big_one_is_refused(env):
    before = json.loads(cli(env, "queue", "-o", "json").stdout)["total"]
    r = cli(env, "submit", "python:3.11", "--cpu", "60", "--array", "1-1001", "--", "true", check=False)
    assert r.returncode == 1 and "over the maximum of 1000" in r.stderr and "HTTP 400" in r.stderr
    assert json.loads(cli(env, "queue", "-o", "json").stdout)["total"] == before
    sweep_id = cli(env, "submit", "python:3.11", "--cpu", "60", "--array", "1-3", "--", "true").stdout.strip()
    assert json.loads(cli(env, "queue", "-o", "json").stdout)["total"] == before + 3
    assert "3 job(s)" in cli(env, "cancel", sweep_id).stdout
    members = json.loads(cli(env, "ls", "--sweep", sweep_id, "-o", "json").stdout)["jobs"]
    assert [m["state"] for m in members] == ["CANCELLED"] * 3
    assert json.loads(cli(env, "queue", "-o", "json").stdout)["total"] == before


def test_logs_follow_streams_until_the_job_ends(env):
    code = "import time\nfor i in range(5):\n    print('tick', i, flush=True); time.sleep(0.3)"
    job_id = cli(env, "submit", "python:3.11", "--name", "ticker", "--", sys.executable, "-c", code).stdout.strip()
    r = cli(env, "logs", job_id, "-f", timeout=120)
    assert r.stdout.splitlines() == [f"tick {i}" for i in range(5)]
    assert json.loads(cli(env, "status", job_id, "-o", "json").stdout)["state"] == "SUCCEEDED"
    assert cli(env, "logs", job_id, "-n", "2").stdout.splitlines() == ["tick 3", "tick 4"]


def test_whoami_and_ls_default_to_the_local_user(env):
    import getpass

    who = json.loads(cli(env, "whoami", "-o", "json").stdout)
    assert who["user"] == getpass.getuser() and who["single_user"] is True
    page = json.loads(cli(env, "ls", "--all", "-n", "2", "-o", "json").stdout)
    assert len(page["jobs"]) == 2 and page["next"] and {j["owner"] for j in page["jobs"]} == {who["user"]}
    more = json.loads(cli(env, "ls", "--all", "-n", "2", "--cursor", page["next"], "-o", "json").stdout)
    assert not {j["id"] for j in more["jobs"]} & {j["id"] for j in page["jobs"]}
