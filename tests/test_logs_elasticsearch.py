"""Job logs from Elasticsearch through the real `elasticsearch` client against a local server
speaking its API (tests/fake_elasticsearch.py; no Elasticsearch can run here), with the
fallback to the local files; the Fluent Bit Lua filter run by a real LuaJIT (lupa); and
`sentinels logs` as a process through the read API (the submit function on a real
nats-server) with Elasticsearch configured."""

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sentinels.adapters import jetstream
from sentinels.adapters.elasticsearch_logs import ElasticsearchLogs
from sentinels.adapters.logs import FallbackLogs, LocalLogs
from sentinels.domain import states
from sentinels.domain.errors import InvalidSpec, Unavailable
from sentinels.domain.times import since_iso
from sentinels.embedded import natsd
from tests.conftest import FunctionServer, post_ce
from tests.fake_elasticsearch import FakeElasticsearch

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "helm/sentinels/files/fluent-bit/sentinels.lua"
JOB, OTHER = "ab2cd3ef4g", "zz2zz3zz4z"


def ship(fake, job_id, n, attempt=1, start_ms=0, same_instant_every=3):
    """n lines as Fluent Bit ships them: several share a millisecond, days split indices."""
    for i in range(n):
        ms = start_ms + i // same_instant_every
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1764547200 + ms / 1000)) + f".{ms % 1000:03d}Z"
        index = "sentinels-logs-2025.12.01" if i < n // 2 else "sentinels-logs-2025.12.02"
        fake.add(index, {"@timestamp": ts, "log": f"{job_id} attempt {attempt} line {i}\n", "stream": "stdout",
                         "sentinels_job_id": job_id, "sentinels_attempt": attempt,
                         "sentinels_seq": len(fake.docs) + 1, "kubernetes": {"pod_name": f"sentinels-{job_id}-x"}})


@pytest.fixture
def es():
    with FakeElasticsearch() as server:
        yield server


async def read_all(src, record, since=None):
    lines, position = await src.lines(record, None, since)
    while True:
        more, position = await src.more(record, position)
        if not more:
            return lines
        lines += more


async def test_pages_in_time_order_with_search_after(es):
    ship(es, JOB, 2500)
    ship(es, OTHER, 10)
    got = await read_all(ElasticsearchLogs(es.url), {"id": JOB})
    assert got == [f"{JOB} attempt 1 line {i}" for i in range(2500)]  # ties kept in order
    assert len(es.searches) == 4 and es.searches[1]["search_after"] is not None
    assert es.searches[0]["query"]["bool"]["filter"] == [{"term": {"sentinels_job_id": JOB}}]


async def test_tail_is_the_newest_lines_in_order(es):
    ship(es, JOB, 30)
    src = ElasticsearchLogs(es.url)
    lines, position = await src.lines({"id": JOB}, 3)
    assert lines == [f"{JOB} attempt 1 line {i}" for i in (27, 28, 29)]
    ship(es, JOB, 1, start_ms=60_000)
    assert (await src.more({"id": JOB}, position))[0] == [f"{JOB} attempt 1 line 0"]  # following goes on from there


async def test_attempt_and_since_filters(es):
    ship(es, JOB, 10, attempt=1)
    ship(es, JOB, 5, attempt=2, start_ms=60_000)
    src = ElasticsearchLogs(es.url)
    assert await read_all(src, {"id": JOB, "log_generation": 2}) == [f"{JOB} attempt 2 line {i}" for i in range(5)]
    assert len(await read_all(src, {"id": JOB}, since="2025-12-01T00:00:30Z")) == 5


def test_since_reads_durations_and_iso_times():
    assert since_iso("2025-12-01T00:00:30Z", 0) == "2025-12-01T00:00:30.000Z"
    assert since_iso("2025-12-01T00:00:30", 0) == "2025-12-01T00:00:30.000Z"  # zone-less is UTC
    assert since_iso("10m", 1_000_000.0) == "1970-01-12T13:36:40.000Z"
    with pytest.raises(InvalidSpec, match="since: 'yesterday'"):
        since_iso("yesterday", 0)


@pytest.mark.parametrize("mode, says", [
    ("error", "answered 500 (all shards failed)"),
    ("auth", "answered 401 (missing authentication credentials)"),
    ("not-elastic", "is not Elasticsearch"),
])
async def test_errors_become_one_line(es, mode, says):
    es.mode = mode
    with pytest.raises(Unavailable) as e:
        await ElasticsearchLogs(es.url).lines({"id": JOB}, None)
    assert says in e.value.message and "\n" not in e.value.message


async def test_unreachable_and_missing_index(es):
    with pytest.raises(Unavailable, match="unreachable"):
        await ElasticsearchLogs(f"http://127.0.0.1:{natsd.free_port()}", timeout=2).lines({"id": JOB}, None)
    es.mode = "no-index"
    assert (await ElasticsearchLogs(es.url).lines({"id": JOB}, None))[0] == []


async def test_falls_back_to_the_local_file(es, tmp_path):
    (tmp_path / JOB).mkdir()
    (tmp_path / JOB / "log").write_text("from the file\nsecond\nthird\n")
    chain = FallbackLogs(ElasticsearchLogs(es.url), LocalLogs(tmp_path))
    notes: list = []
    es.mode = "error"
    lines, position = await chain.lines({"id": JOB}, None, None, notes)
    assert lines == ["from the file", "second", "third"]
    assert len(notes) == 1 and "answered 500" in notes[0] and "reading the local log file instead" in notes[0]
    with open(tmp_path / JOB / "log", "a") as f:
        f.write("next\n")
    assert (await chain.more({"id": JOB}, position))[0] == ["next"]
    es.mode = "ok"  # Elasticsearch answers but has nothing yet (shipping lags): the file still wins
    notes = []
    lines, _ = await chain.lines({"id": JOB}, None, "2025-12-01T00:00:00Z", notes)
    assert len(lines) == 4 and notes == ["--since needs Elasticsearch (the local log file has no time per line): "
                                         "showing every line"]
    ship(es, JOB, 2)  # once it has lines, Elasticsearch answers
    lines, position = await chain.lines({"id": JOB}, None)
    assert lines == [f"{JOB} attempt 1 line {i}" for i in range(2)]
    es.mode = "error"  # gone while followed: nothing for now, and the same place afterwards
    assert await chain.more({"id": JOB}, position) == ([], position)
    es.mode = "ok"
    ship(es, JOB, 1, start_ms=60_000)
    assert (await chain.more({"id": JOB}, position))[0] == [f"{JOB} attempt 1 line 0"]


# --- the Fluent Bit Lua filter, in LuaJIT as Fluent Bit runs it ------------------------------

@pytest.fixture
def lua():
    lupa = pytest.importorskip("lupa.luajit21", reason="lupa (LuaJIT for Python) is not installed")
    rt = lupa.LuaRuntime(unpack_returned_tuples=True)
    rt.execute(LUA.read_text())
    return rt


def record_for(lua, labels, annotations=None):
    table = lua.eval("function(t) return t end")
    k8s = {"pod_name": "p", "labels": lua.table_from(labels), "annotations": lua.table_from(annotations or {})}
    return table(lua.table_from({"log": "hello\n", "kubernetes": lua.table_from(k8s)}))


def test_lua_filter_lifts_the_job_id(lua):
    f = lua.globals().sentinels_job
    code, ts, rec = f("kube.x", 1.5, record_for(lua, {"sentinels.io/job-id": JOB, "sentinels.io/owner": "ada"},
                                                {"sentinels.io/attempt": "2"}))
    assert code == 2 and ts == 1.5
    assert rec["sentinels_job_id"] == JOB and rec["sentinels_attempt"] == 2 and rec["sentinels_owner"] == "ada"
    _, _, second = f("kube.x", 1.5, record_for(lua, {"sentinels_io/job-id": JOB}))  # Replace_Dots spelling
    assert second["sentinels_job_id"] == JOB and second["sentinels_seq"] == rec["sentinels_seq"] + 1


@pytest.mark.parametrize("labels", [{}, {"app": "other"}, {"sentinels.io/job-id": "NOT-AN-ID"}])
def test_lua_filter_leaves_other_records_alone(lua, labels):
    code, _, rec = lua.globals().sentinels_job("kube.x", 1.0, record_for(lua, labels))
    assert code == 0 and rec["sentinels_job_id"] is None


# --- `sentinels logs` as a process, through the read API ------------------------------------

@pytest.fixture
def stack(tmp_path, es):
    """nats-server and the submit function (single-user) with Elasticsearch configured."""
    port = natsd.free_port()
    nats = natsd.start(tmp_path / "js", port)
    nats_url = f"nats://127.0.0.1:{port}"
    env = {"SENTINELS_HOME": str(tmp_path / "home"), "SENTINELS_NATS_URL": nats_url,
           "SENTINELS_ELASTICSEARCH_URL": es.url}
    try:
        fn = FunctionServer("submit", env, tmp_path)
        try:
            yield fn, nats_url, tmp_path / "home"
        finally:
            fn.stop()
    finally:
        nats.terminate()
        nats.wait()


def submit(fn) -> str:
    status, rec = post_ce(fn.url, "io.sentinels.job.submit", {"spec": {"image": "python:3.11", "command": ["true"]}})
    assert status == 201, rec
    return rec["id"]


def set_record(nats_url, job_id, **fields):
    async def go():
        nc = await jetstream.connect(nats_url)
        jobs = await jetstream.JetStreamJobs.open(nc.jetstream())
        record, rev = await jobs.get(job_id)
        await jobs.update({**record, **fields}, rev)
        await nc.close()
    asyncio.run(go())


def logs(fn, *args, timeout=60):
    env = {**os.environ, "SENTINELS_URL": fn.url, "SENTINELS_HOME": "/nonexistent"}
    r = subprocess.run([sys.executable, "-m", "sentinels.cli.main", "logs", *args], env=env, capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_cli_reads_elasticsearch(stack, es):
    fn, nats_url, _ = stack
    job = submit(fn)
    ship(es, job, 1500)
    r = logs(fn, job)
    assert r.returncode == 0 and r.stdout.splitlines() == [f"{job} attempt 1 line {i}" for i in range(1500)]
    assert r.stderr == ""
    r = logs(fn, job, "-n", "2")
    assert r.stdout.splitlines() == [f"{job} attempt 1 line {i}" for i in (1498, 1499)]
    r = logs(fn, job, "--since", "2025-12-01T00:00:00.400Z")
    assert r.stdout.splitlines() == [f"{job} attempt 1 line {i}" for i in range(1200, 1500)]


def test_cli_attempt(stack, es):
    fn, nats_url, home = stack
    job = submit(fn)
    r = logs(fn, job, "--attempt", "2")
    assert r.returncode == 1 and f"job {job} has made 1 attempt(s) so far (1 to 1)" in r.stderr
    ship(es, job, 3, attempt=1)
    ship(es, job, 2, attempt=2, start_ms=60_000)
    set_record(nats_url, job, attempts=2, state=states.FAILED,
               runs=[{"run": 1, "generation": 1, "exit_code": 1}, {"run": 2, "generation": 2, "exit_code": 1}])
    assert logs(fn, job, "--attempt", "2").stdout.splitlines() == [f"{job} attempt 2 line {i}" for i in range(2)]
    assert len(logs(fn, job).stdout.splitlines()) == 5
    r = logs(fn, job, "--attempt", "3")
    assert r.returncode == 1 and "(1 to 2)" in r.stderr
    es.mode = "error"  # without Elasticsearch, the attempt's own local file
    (home / "jobs" / job).mkdir(parents=True)
    (home / "jobs" / job / "attempt-1.log").write_text("first run\n")
    (home / "jobs" / job / "attempt-2.log").write_text("second run\n")
    r = logs(fn, job, "--attempt", "1")
    assert r.returncode == 0 and r.stdout == "first run\n" and "answered 500" in r.stderr


def test_cli_falls_back_with_one_line(stack, es):
    fn, _, home = stack
    job = submit(fn)
    (home / "jobs" / job).mkdir(parents=True)
    (home / "jobs" / job / "log").write_text("local line\n")
    es.mode = "error"
    r = logs(fn, job)
    assert r.returncode == 0 and r.stdout == "local line\n"
    assert r.stderr.count("\n") == 1 and "answered 500" in r.stderr and "local log file" in r.stderr


def test_cli_no_logs_yet_says_so_and_follow_waits(stack, es):
    fn, nats_url, _ = stack
    job = submit(fn)
    r = logs(fn, job)
    assert r.returncode == 0 and f"no output yet: job {job} is QUEUED (it has not started)" in r.stderr
    env = {**os.environ, "SENTINELS_URL": fn.url, "SENTINELS_HOME": "/nonexistent"}
    proc = subprocess.Popen([sys.executable, "-m", "sentinels.cli.main", "logs", job, "-f"], cwd=ROOT, text=True, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first: list = []
        reader = threading.Thread(target=lambda: first.append(proc.stderr.readline()), daemon=True)
        reader.start()
        reader.join(60)
        assert first and "waiting for its first lines" in first[0]  # it says so, and waits
        time.sleep(1)
        assert proc.poll() is None
        set_record(nats_url, job, state=states.RUNNING)
        ship(es, job, 3)
        time.sleep(2)
        set_record(nats_url, job, state=states.SUCCEEDED)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and out.splitlines() == [f"{job} attempt 1 line {i}" for i in range(3)]
    assert "Traceback" not in err


@pytest.mark.parametrize("args, says, code", [
    (["--since", "last tuesday"], "since: 'last tuesday'", 1),
    (["--attempt", "0"], "is not a whole number of at least 1", 2),
    (["--tail", "-3"], "is not a whole number of at least 0", 2),
])
def test_cli_bad_flags(stack, args, says, code):
    fn, _, _ = stack
    r = logs(fn, submit(fn), *args)
    assert r.returncode == code and any(says in line for line in r.stderr.splitlines())


def test_cli_unknown_job(stack):
    fn, _, _ = stack
    r = logs(fn, "qq2qq3qq4q")
    assert r.returncode == 1 and "job qq2qq3qq4q not found" in r.stderr
