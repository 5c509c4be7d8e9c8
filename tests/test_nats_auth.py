"""NATS authentication in the embedded default: nobody on the machine acts without the
submit function's checks.

A real nats-server with the generated users: anonymous clients are refused, the reader
can only look, only the scheduler may ask the executor to launch, only the executor
hears those requests, and nobody reads another user's replies. Then a whole `up` stack
runs a job with no permission violation in the server's log, secrets mode 0600.
"""

import asyncio
import json
import os
import stat
import sys
import urllib.request

import pytest

from sentinels.adapters import jetstream
from sentinels.domain.errors import Unavailable
from sentinels.embedded import natsauth, natsd
from tests.conftest import post_ce
from tests.test_cli_e2e import cli, free_block


@pytest.fixture
def secured(tmp_path):
    home = tmp_path / "home"
    port = natsd.free_port()
    proc = natsd.start(tmp_path / "js", port, auth=natsauth.config_block(natsauth.ensure(home)))
    yield home, f"nats://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


async def as_user(home, url, user):
    login = jetstream.credentials(str(natsauth.credentials_file(home, user)))
    return await jetstream.connect(url, f"test-{user}", login=login)


async def test_anonymous_and_wrong_passwords_are_refused(secured):
    home, url = secured
    with pytest.raises(Unavailable, match="refused the connection without credentials"):
        await jetstream.connect(url, login={})
    with pytest.raises(Unavailable, match="refused the connection as submit"):
        await jetstream.connect(url, login={"user": "submit", "password": "guess"})


async def test_the_reader_reads_but_cannot_write_or_delete(secured):
    home, url = secured
    admin = await as_user(home, url, "admin")
    await jetstream.ensure(admin.jetstream())
    jobs = await jetstream.JetStreamJobs.open(admin.jetstream())
    await jobs.create({"id": "aaaaaaaaaa", "owner": "alice"})
    reader = await as_user(home, url, "reader")
    try:
        js = reader.jetstream(timeout=1)
        rjobs = await jetstream.JetStreamJobs.open(js)
        assert (await rjobs.get("aaaaaaaaaa"))[0]["owner"] == "alice"
        assert [r["id"] for r in await rjobs.all()] == ["aaaaaaaaaa"]
        assert await jetstream.JetStreamQueue(js).counts() == {}
        with pytest.raises(Exception):
            await rjobs.update({"id": "aaaaaaaaaa", "owner": "mallory"}, 1)
        with pytest.raises(Exception):
            await js.delete_stream(jetstream.QUEUE_STREAM)
        with pytest.raises(Exception):
            await js.delete_key_value(jetstream.JOBS_BUCKET)
        assert (await jobs.get("aaaaaaaaaa"))[0]["owner"] == "alice"
        assert (await admin.jetstream().stream_info(jetstream.QUEUE_STREAM)).config.name == jetstream.QUEUE_STREAM
    finally:
        await reader.close()
        await admin.close()


async def test_only_the_scheduler_launches_and_only_the_executor_listens(secured):
    home, url = secured
    conns = {u: await as_user(home, url, u) for u in ("executor", "schedule", "submit", "alert", "reader")}
    heard = []

    async def answer(msg):
        heard.append(msg.data)
        await msg.respond(b'{"ok": true}')

    try:
        await conns["executor"].subscribe("sentinels.local.launch", cb=answer)
        spy = []

        async def listen(msg):
            spy.append(msg)

        await conns["submit"].subscribe("sentinels.local.>", cb=listen)  # refused by the server
        await conns["executor"].flush()
        reply = await conns["schedule"].request("sentinels.local.launch", b"from-scheduler", timeout=2)
        assert json.loads(reply.data) == {"ok": True}
        for user in ("submit", "alert", "reader"):
            with pytest.raises(Exception):  # the server drops the publish: nobody answers
                await conns[user].request("sentinels.local.launch", f"from-{user}".encode(), timeout=0.5)
        await asyncio.sleep(0.2)
        assert heard == [b"from-scheduler"] and spy == []
    finally:
        for nc in conns.values():
            await nc.close()


async def test_nobody_reads_another_users_replies(secured):
    home, url = secured
    reader = await as_user(home, url, "reader")
    schedule = await as_user(home, url, "schedule")
    admin = await as_user(home, url, "admin")
    try:
        stolen = []

        async def steal(msg):
            stolen.append(msg)

        await reader.subscribe("_INBOX_schedule.>", cb=steal)
        await reader.flush()
        await jetstream.ensure(admin.jetstream())
        await schedule.jetstream().stream_info(jetstream.QUEUE_STREAM)  # its reply goes to _INBOX_schedule
        await asyncio.sleep(0.2)
        assert stolen == []
    finally:
        for nc in (reader, schedule, admin):
            await nc.close()


def test_credentials_are_generated_once_and_private(tmp_path):
    first = natsauth.ensure(tmp_path)
    assert natsauth.ensure(tmp_path) == first and len(set(first.values())) == len(natsauth.USERS)
    assert stat.S_IMODE(os.stat(tmp_path / "secrets").st_mode) == 0o700
    for user in natsauth.USERS:
        assert stat.S_IMODE(os.stat(natsauth.credentials_file(tmp_path, user)).st_mode) == 0o600
    assert natsauth.permissions("admin") is None
    assert "sentinels.local.launch" in natsauth.permissions("schedule")["publish"]["allow"]
    assert not any(s.startswith("sentinels.local") for s in natsauth.permissions("on_job_event")["publish"]["allow"]
                   if s.endswith("launch"))


def test_a_whole_stack_runs_with_authentication_and_no_violation(tmp_path):
    import subprocess

    base = free_block()
    env = {**os.environ, "SENTINELS_HOME": str(tmp_path), "SENTINELS_URL": f"http://127.0.0.1:{base}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "SENTINELS_TICK": "1",
           "MLFLOW_TRACKING_URI": "none", "SENTINELS_TOKEN": "the-admin-token", "SLACK_CHANNEL": "#only-alert"}
    env.pop(jetstream.CREDENTIALS_ENV, None)
    up = subprocess.run([sys.executable, "-m", "sentinels.cli.main", "up", "-d"], env=env, capture_output=True, text=True,
                        timeout=120)
    assert up.returncode == 0, up.stderr
    try:
        job = cli(env, "submit", "python:3.11", "--name", "authed", "--wait", "--", "true", timeout=120).stdout.strip()
        assert json.loads(cli(env, "status", job, "-o", "json").stdout)["state"] == "SUCCEEDED"
        cancelled = cli(env, "submit", "python:3.11", "--", "sleep", "60").stdout.strip()
        cli(env, "queue")
        cli(env, "logs", job)
        cli(env, "history", job)
        cli(env, "cancel", cancelled)
        assert stat.S_IMODE(os.stat(tmp_path / "jetstream" / "nats.conf").st_mode) == 0o600
        # forged events to the internal functions are refused; their health stays open
        for offset in (1, 2, 3):
            url = f"http://127.0.0.1:{base + offset}"
            status, body = post_ce(url, "dev.knative.apiserver.resource.update", {"kind": "Job"})
            assert status == 403 and "only from the sentinels broker" in body["error"]
            if offset != 1:  # schedule (CloudEvent signature) has no GET
                assert urllib.request.urlopen(url + "/", timeout=10).status == 200
        # each function sees only the environment it needs
        environs = {}
        for pid in os.listdir("/proc"):
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                if b"sentinels.embedded.serve" in cmd and str(tmp_path).encode() in open(f"/proc/{pid}/environ", "rb").read():
                    environs[cmd[cmd.index(b"sentinels.embedded.serve") + 1].decode()] = \
                        open(f"/proc/{pid}/environ", "rb").read()
            except (OSError, ValueError):
                continue
        assert set(environs) == {"submit", "schedule", "on_job_event", "alert"}
        assert not any(b"the-admin-token" in e for e in environs.values())
        assert [n for n, e in environs.items() if b"#only-alert" in e] == ["alert"]

        async def anonymous():
            with pytest.raises(Unavailable, match="refused"):
                await jetstream.connect(env["SENTINELS_NATS_URL"], login={})

        asyncio.run(anonymous())
    finally:
        subprocess.run([sys.executable, "-m", "sentinels.cli.main", "down"], env=env, capture_output=True, timeout=60)
    log = (tmp_path / "logs" / "nats.log").read_text()
    assert "Permissions Violation" not in log, [line for line in log.splitlines() if "Violation" in line][:5]


def test_each_executor_verb_is_published_by_the_component_that_calls_it():
    # the scheduler starts Dockerfile builds as well as launches (a build asked without this
    # permission was dropped by the server and the job stayed BUILDING)
    from sentinels.adapters.local import VERBS
    from sentinels.embedded.natsauth import permissions

    callers = {"launch": "schedule", "build": "schedule", "nodes": "schedule", "active": "schedule",
               "jobs": "on_job_event", "stop": "on_job_event", "logs": "on_job_event"}
    assert set(callers) == set(VERBS)
    for verb, user in callers.items():
        assert f"sentinels.local.{verb}" in permissions(user)["publish"]["allow"], (verb, user)
