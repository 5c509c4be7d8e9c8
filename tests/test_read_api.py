"""The HTTP read API on the submit function, over real HTTP on a real nats-server."""

import json
import urllib.request

import pytest
import yaml

from tests.conftest import TOKENS, api_get, post_ce, submit_stack

SUBMIT, CANCEL = "io.sentinels.job.submit", "io.sentinels.job.cancel"
SPEC = {"image": "python:3.11", "command": ["python", "-c", "print(1)"], "env": {"SECRET_PATH": "/x"},
        "params": {"lr": 0.1}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with submit_stack(home) as fn:
        yield fn, home


def submit(fn, who, **spec):
    status, rec = post_ce(fn.url, SUBMIT, {"spec": {**SPEC, **spec}}, token=TOKENS[who])
    assert status == 201, rec
    return rec


def test_whoami_and_tokens(stack):
    fn, _ = stack
    assert api_get(fn.url, "/v1/whoami", TOKENS["alice"]) == (
        200, {"user": "alice", "team": "vision", "role": "user", "single_user": False})
    status, body = api_get(fn.url, "/v1/whoami")
    assert status == 401 and "bearer token" in body["error"]
    assert api_get(fn.url, "/v1/jobs", "wrong")[0] == 401


def test_one_job_with_position_and_read_rules(stack):
    fn, _ = stack
    a = submit(fn, "alice", name="first")
    b = submit(fn, "alice", name="second")
    status, got = api_get(fn.url, f"/v1/jobs/{b['id']}", TOKENS["alice"])
    assert status == 200 and got["state"] == "QUEUED" and got["name"] == "second"
    assert got["position"] == got_position(fn, a["id"]) + 1 and "links" in got
    assert got["spec"]["env"] == {"SECRET_PATH": "/x"} and got["spec"]["params"] == {"lr": 0.1}
    # another team sees state, owner and reason, not env values or params
    status, seen = api_get(fn.url, f"/v1/jobs/{b['id']}", TOKENS["bob"])
    assert status == 200 and seen["owner"] == "alice" and seen["reason"]
    assert seen["spec"]["env"] == {"SECRET_PATH": "(hidden)"} and seen["spec"]["params"] == {"lr": "(hidden)"}
    assert "reads.details: team" in seen["hidden"]
    # the same team and admins see everything
    assert api_get(fn.url, f"/v1/jobs/{b['id']}", TOKENS["carol"])[1]["spec"]["env"] == {"SECRET_PATH": "/x"}
    assert api_get(fn.url, f"/v1/jobs/{b['id']}", TOKENS["root"])[1]["spec"]["params"] == {"lr": 0.1}


def got_position(fn, job_id):
    return api_get(fn.url, f"/v1/jobs/{job_id}", TOKENS["root"])[1]["position"]


def test_unknown_job_is_404_with_the_id(stack):
    fn, _ = stack
    for job_id in ("aaaaaaaaaa", "not-an-id"):
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/history", f"/v1/jobs/{job_id}/logs"):
            status, body = api_get(fn.url, path, TOKENS["alice"])
            assert status == 404 and job_id in body["error"], (path, body)
    assert api_get(fn.url, "/v1/nothing", TOKENS["alice"])[0] == 404


def test_a_tab_or_space_for_an_id_is_an_unknown_job_not_the_listing(stack):
    """A URL parser drops tabs: `/v1/jobs/%09` must not be answered as `/v1/jobs/`."""
    fn, _ = stack
    for job_id, shown in (("%09", "\t"), ("%20", " ")):
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/history"):
            status, body = api_get(fn.url, path, TOKENS["alice"])
            assert status == 404 and f"job {shown} not found" == body["error"], (path, body)


def test_listing_newest_first_paged_by_owner_and_state(stack):
    fn, _ = stack
    ids = [submit(fn, "bob", name=f"page-{i}")["id"] for i in range(5)]
    status, page = api_get(fn.url, "/v1/jobs?owner=bob&limit=2", TOKENS["alice"])
    assert status == 200 and [r["id"] for r in page["jobs"]] == ids[::-1][:2] and page["next"]
    seen = [r["id"] for r in page["jobs"]]
    while page["next"]:
        page = api_get(fn.url, f"/v1/jobs?owner=bob&limit=2&cursor={page['next']}", TOKENS["alice"])[1]
        seen += [r["id"] for r in page["jobs"]]
    assert seen == ids[::-1]
    assert post_ce(fn.url, CANCEL, {"job": ids[0]}, token=TOKENS["bob"])[0] == 200
    live = [r["id"] for r in api_get(fn.url, "/v1/jobs?owner=bob&state=active", TOKENS["bob"])[1]["jobs"]]
    done = api_get(fn.url, "/v1/jobs?owner=bob&state=finished", TOKENS["bob"])[1]["jobs"]
    assert ids[0] not in live and [(r["id"], r["state"]) for r in done] == [(ids[0], "CANCELLED")]
    everything = [r["id"] for r in api_get(fn.url, "/v1/jobs?owner=bob", TOKENS["bob"])[1]["jobs"]]
    assert everything == ids[1:][::-1] + [ids[0]]  # live first, then finished
    assert {r["owner"] for r in api_get(fn.url, "/v1/jobs?team=nlp", TOKENS["alice"])[1]["jobs"]} == {"bob"}


@pytest.mark.parametrize("query,field", [
    ("limit=0", "limit"), ("limit=abc", "limit"), ("limit=100000", "limit"), ("cursor=zz", "cursor"),
    ("cursor=a", "cursor"), ("state=sleeping", "state"), ("colour=red", "colour")])
def test_bad_listing_queries_are_400(stack, query, field):
    fn, _ = stack
    status, body = api_get(fn.url, f"/v1/jobs?{query}", TOKENS["alice"])
    assert status == 400 and body["field"] == field, body


def test_queue_in_order_with_positions(stack):
    fn, _ = stack
    hi = submit(fn, "alice", name="urgent", priority="high")
    status, q = api_get(fn.url, "/v1/queue?limit=3", TOKENS["bob"])
    assert status == 200 and q["jobs"][0]["id"] == hi["id"] and [r["position"] for r in q["jobs"]] == [1, 2, 3]
    assert q["total"] == sum(q["by_class"].values()) and q["by_class"]["high"] >= 1
    normal = api_get(fn.url, "/v1/queue?class=normal&limit=1", TOKENS["bob"])[1]["jobs"][0]
    assert normal["class"] == "normal" and normal["position"] == q["by_class"]["high"] + 1
    assert api_get(fn.url, "/v1/queue?class=urgent", TOKENS["bob"])[0] == 400
    assert api_get(fn.url, "/v1/queue?limit=-1", TOKENS["bob"])[0] == 400


def test_history_and_followed_history_end_with_the_job(stack):
    fn, _ = stack
    job = submit(fn, "alice", name="short")
    assert post_ce(fn.url, CANCEL, {"job": job["id"]}, token=TOKENS["alice"])[0] == 200
    status, h = api_get(fn.url, f"/v1/jobs/{job['id']}/history", TOKENS["bob"])
    assert status == 200 and [e["to"] for e in h["history"]] == ["QUEUED", "CANCELLED"]
    status, text = api_get(fn.url, f"/v1/jobs/{job['id']}/history?follow=true", TOKENS["alice"], raw=True)
    assert [json.loads(line)["to"] for line in text.splitlines()] == ["QUEUED", "CANCELLED"]
    assert api_get(fn.url, f"/v1/jobs/{job['id']}/history?follow=maybe", TOKENS["alice"])[0] == 400


def test_logs_tail_and_who_may_read_them(stack):
    fn, home = stack
    job = submit(fn, "alice", name="chatty")
    log = home / "jobs" / job["id"] / "log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    status, text = api_get(fn.url, f"/v1/jobs/{job['id']}/logs?tail=2", TOKENS["alice"], raw=True)
    assert status == 200 and text == "line 998\nline 999\n"
    assert api_get(fn.url, f"/v1/jobs/{job['id']}/logs", TOKENS["carol"], raw=True)[1].count("\n") == 1000
    status, body = api_get(fn.url, f"/v1/jobs/{job['id']}/logs", TOKENS["bob"])
    assert status == 403 and "reads.details: team" in body["error"]
    assert api_get(fn.url, f"/v1/jobs/{job['id']}/logs?tail=x", TOKENS["alice"])[0] == 400
    assert post_ce(fn.url, CANCEL, {"job": job["id"]}, token=TOKENS["alice"])[0] == 200
    with open(log, "a") as f:
        f.write("after the end\n")
    status, text = api_get(fn.url, f"/v1/jobs/{job['id']}/logs?tail=1&follow=true", TOKENS["root"], raw=True)
    assert status == 200 and text == "after the end\n"  # a finished job's follow ends by itself


def test_openapi_document_lists_every_read(stack):
    fn, _ = stack
    with urllib.request.urlopen(fn.url + "/openapi.json", timeout=10) as resp:
        doc = json.loads(resp.read())
    assert {"/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/history", "/v1/jobs/{id}/logs", "/v1/queue",
            "/v1/whoami", "/"} <= set(doc["paths"])
    assert yaml.safe_dump(doc)  # plain data all the way down


def test_a_retried_sweep_creates_nothing_twice_and_only_its_owner_cancels_it(stack):
    fn, _ = stack
    body = {"spec": {**SPEC, "name": "grid"}, "sweep": {"lr": [0.1, 0.2, 0.3]}, "array": "0-1"}
    first = post_ce(fn.url, SUBMIT, body, token=TOKENS["alice"], event_id="sweep-1")
    again = post_ce(fn.url, SUBMIT, body, token=TOKENS["alice"], event_id="sweep-1")
    assert first[0] == 201 and again[0] == 200 and first[1] == again[1] and first[1]["size"] == 6
    sweep_id = first[1]["sweep"]
    page = api_get(fn.url, f"/v1/jobs?sweep={sweep_id}", TOKENS["bob"])[1]
    assert sorted(r["id"] for r in page["jobs"]) == sorted(first[1]["jobs"])
    one = api_get(fn.url, f"/v1/jobs/{first[1]['jobs'][5]}", TOKENS["alice"])[1]
    assert one["sweep"]["index"] == 5 and one["spec"]["env"]["SENTINELS_ARRAY_INDEX"] == "1"
    assert one["name"] == "grid-5" and one["spec"]["params"]["lr"] == 0.3
    status, body = post_ce(fn.url, CANCEL, {"sweep": sweep_id}, token=TOKENS["bob"])
    assert status == 403 and "only its owner or an admin" in body["error"]
    assert post_ce(fn.url, CANCEL, {"sweep": "sw-aaaaaaaaaa"}, token=TOKENS["alice"])[0] == 404
    assert post_ce(fn.url, CANCEL, {"sweep": "nonsense"}, token=TOKENS["alice"])[0] == 400
    status, body = post_ce(fn.url, CANCEL, {"sweep": sweep_id}, token=TOKENS["alice"])
    assert status == 200 and {j["state"] for j in body["jobs"]} == {"CANCELLED"} and len(body["jobs"]) == 6


# What the CLI's common commands may not load: every one is a whole process, and each of
# these costs tens of milliseconds (or pulls in a client the CLI must not need).
HEAVY = ("nats", "kubernetes", "mlflow", "yaml", "pydantic", "httpx", "starlette", "functions_framework",
         "cloudevents", "urllib.request", "email", "dataclasses", "typing", "sentinels.adapters",
         "sentinels.embedded", "sentinels.wiring", "sentinels.domain.spec")
RUN_CLI = """
import atexit, json, sys
atexit.register(lambda: open(sys.argv[1], "w").write(json.dumps(sorted(sys.modules))))
from sentinels.cli.main import main
main(sys.argv[2:])
"""


def test_the_cli_common_commands_import_nothing_heavy(stack, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    fn, home = stack
    env = {**os.environ, "SENTINELS_URL": fn.url, "SENTINELS_TOKEN": TOKENS["alice"], "SENTINELS_HOME": str(home)}
    job_id = submit(fn, "alice")["id"]
    for argv in (["submit", "python:3.11", "--cpu", "1", "--", "true"], ["status", job_id], ["queue"], ["ls"],
                 ["ls", "--all", "--limit", "5"], ["history", job_id], ["share"], ["cancel", job_id]):
        dump = tmp_path / "modules.json"
        r = subprocess.run([sys.executable, "-c", RUN_CLI, str(dump), *argv], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (argv, r.stderr)
        loaded = json.loads(dump.read_text())
        assert "sentinels.cli.wire" in loaded  # it did talk to the API
        heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
        assert heavy == [], f"sentinels {' '.join(argv)} imported {heavy}"


async def test_logs_of_any_attempt_default_the_last(tmp_path):
    """`logs --attempt N`: the local executor keeps `attempt-<n>.log` per run, `log` links the last."""
    from sentinels.functions.submit.reads import ReadService
    from sentinels.adapters.logs import LocalLogs
    from sentinels.adapters.memory import MemoryBoard, MemoryHistory, MemoryJobs, MemoryQueue
    from sentinels.domain.errors import InvalidSpec
    from sentinels.domain.job import new_record
    from sentinels.domain.notify import NotifyConfig
    from sentinels.domain.priority import PriorityConfig
    from sentinels.domain.reads import ReadRules
    from sentinels.domain.spec import validate

    jobs = MemoryJobs()
    record = new_record(job_id="ab2cd3ef4g", spec=validate(SPEC), who={"user": "alice"}, klass="normal",
                        now="2026-11-28T05:10:28.102Z", queue_seq=1)
    record.update(state="FAILED", runs=[{"run": n, "generation": 1, "exit_code": n} for n in (1, 2)])
    await jobs.create(record)
    folder = tmp_path / record["id"]
    folder.mkdir()
    for n in (1, 2):
        (folder / f"attempt-{n}.log").write_text(f"attempt {n} ran\n")
    (folder / "log").symlink_to("attempt-2.log")
    svc = ReadService(jobs, MemoryQueue(), MemoryHistory(), MemoryBoard(), LocalLogs(tmp_path),
                      PriorityConfig.from_dict(None), ReadRules(), NotifyConfig.from_dict(None))
    alice = {"user": "alice", "role": "user"}

    async def read(attempt=None, follow=False):
        return [line async for line in svc.log_lines(record["id"], alice, None, follow, attempt=attempt)]

    assert await read() == ["attempt 2 ran"]
    assert await read(1) == ["attempt 1 ran"]
    assert await read(1, follow=True) == ["attempt 1 ran"]  # an earlier attempt has ended: not followed
    assert await read(2) == ["attempt 2 ran"]
    with pytest.raises(InvalidSpec, match="has made 2 attempt"):
        await read(3)


@pytest.mark.parametrize("query", ["attempt=0", "attempt=x", "attempt=-1", "attempt=1&build=true",
                                   "attempt=2"])  # a new job has one (to come)
def test_a_bad_attempt_is_400(stack, query):
    fn, _ = stack
    job = submit(fn, "alice", name="attempts")
    status, body = api_get(fn.url, f"/v1/jobs/{job['id']}/logs?{query}", TOKENS["alice"])
    assert status == 400 and "attempt" in body["error"], body


async def test_ls_queue_and_status_give_the_same_reason_and_code():
    """One source: the scheduler's last pass on the board, for every reader of a queued job."""
    from sentinels.functions.submit.reads import ReadService
    from sentinels.adapters.memory import MemoryBoard, MemoryHistory, MemoryJobs, MemoryQueue
    from sentinels.domain.job import new_record
    from sentinels.domain.names import WAITING_KEY
    from sentinels.domain.notify import NotifyConfig
    from sentinels.domain.priority import PriorityConfig
    from sentinels.domain.reads import ReadRules
    from sentinels.domain.spec import validate

    jobs, queue, board = MemoryJobs(), MemoryQueue(), MemoryBoard()
    seq = await queue.enqueue({"id": "ab2cd3ef4g", "class": "normal", "submitted": "2026-11-28T05:10:28.102Z"},
                              msg_id="ab2cd3ef4g")
    record = new_record(job_id="ab2cd3ef4g", spec=validate(SPEC), who={"user": "alice"}, klass="normal",
                        now="2026-11-28T05:10:28.102Z", queue_seq=seq)
    record["reason"] = "waiting for the scheduler"
    await jobs.create(record)
    text = "needs 2 GPU(s): 0 free now"
    await board.put(WAITING_KEY, {"reasons": {record["id"]: text}, "codes": {record["id"]: ["no_room", "gpu"]}})
    svc = ReadService(jobs, queue, MemoryHistory(), board, None, PriorityConfig.from_dict(None), ReadRules(),
                      NotifyConfig.from_dict(None))
    alice = {"user": "alice", "role": "user"}
    one = await svc.job(record["id"], alice)
    (row,) = (await svc.listing(owner="alice"))["jobs"]
    (queued,) = (await svc.queue_view())["jobs"]
    for seen in (one, row, queued):
        assert (seen["reason"], seen["reason_code"], seen["short"]) == (text, "no_room", "gpu"), seen


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A stack with quotas and fair share by team, and a usage ledger as the scheduler leaves it."""
    import asyncio
    import time as clock

    from sentinels.adapters import jetstream

    home = tmp_path_factory.mktemp("shared")
    (home / "config.yaml").write_text(yaml.safe_dump({
        "quotas": {"teams": {"vision": {"gpu": 4, "jobs": 2, "borrowing": {"gpu": 2}}}},
        "fair_share": {"by": "team", "half_life": "1d"}}))
    with submit_stack(home) as fn:
        async def ledger():
            nc = await jetstream.connect(fn.env["SENTINELS_NATS_URL"])
            board = await jetstream.JetStreamBoard.open(nc.jetstream())
            await board.put("usage", {"usage": {"vision": [3000.0, clock.time()], "nlp": [1000.0, clock.time()]},
                                      "marks": {}, "held": {"team": {"vision": {"gpu": 5, "jobs": 2, "cpu_millis": 2000,
                                                                                "memory_bytes": 2**30}}}})
            await nc.close()
        asyncio.run(ledger())
        yield fn


def test_share_shows_usage_quota_and_borrowing(shared):
    status, got = api_get(shared.url, "/v1/share", TOKENS["bob"])
    assert status == 200 and got["fair_share"]["by"] == "team" and got["quotas"] is True
    rows = {r["name"]: r for r in got["rows"]}
    assert set(rows) == {"vision", "nlp"}
    vision = rows["vision"]
    assert vision["usage"] == pytest.approx(3000.0, rel=1e-3) and vision["share"] == pytest.approx(0.75, rel=1e-3)
    assert vision["holds"]["gpu"] == 5 and vision["nominal"] == {"gpu": 4, "jobs": 2}
    assert vision["borrowing_limit"] == {"gpu": 2, "jobs": 0} and vision["borrowed"] == {"gpu": 1, "jobs": 0}
    assert rows["nlp"]["nominal"] is None and rows["nlp"]["holds"]["jobs"] == 0
    assert api_get(shared.url, "/v1/share?x=1", TOKENS["bob"])[0] == 400
    assert api_get(shared.url, "/v1/share")[0] == 401


def test_queue_is_in_fair_share_order_and_names_the_share(shared):
    a = post_ce(shared.url, SUBMIT, {"spec": {**SPEC, "name": "vis"}}, token=TOKENS["alice"])[1]
    b = post_ce(shared.url, SUBMIT, {"spec": {**SPEC, "name": "nl"}}, token=TOKENS["bob"])[1]
    status, q = api_get(shared.url, "/v1/queue", TOKENS["carol"])
    assert status == 200 and [r["id"] for r in q["jobs"]] == [b["id"], a["id"]]  # nlp used less: it goes first
    assert [r["position"] for r in q["jobs"]] == [1, 2]
    assert q["jobs"][0]["share"] == {"by": "team", "key": "nlp", "usage": pytest.approx(1000.0, rel=1e-3),
                                     "fraction": pytest.approx(0.25, rel=1e-3)}
    assert q["jobs"][1]["share"]["key"] == "vision"


def test_cli_share_and_queue_print_the_shares(shared):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "SENTINELS_URL": shared.url, "SENTINELS_TOKEN": TOKENS["bob"], "SENTINELS_HOME": shared.env["SENTINELS_HOME"]}

    def cli(*argv):
        r = subprocess.run([sys.executable, "-m", "sentinels.cli.main", *argv], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        return r.stdout

    out = cli("share").splitlines()
    assert out[0].split() == ["TEAM", "USAGE", "SHARE", "HOLDS", "QUOTA", "MAY", "BORROW", "BORROWED"]
    vision = next(line for line in out if line.startswith("vision"))
    assert vision.split() == ["vision", "3000", "75%", "gpu=5", "cpu=2", "mem=1Gi", "jobs=2", "gpu=4", "jobs=2", "gpu=2",
                             "jobs=0", "gpu=1"]
    assert out[-1] == "fair share by team, half-life 1d00h; quotas on; preemption off"
    assert json.loads(cli("share", "-o", "json"))["rows"][0]["kind"] == "team"
    queue = cli("queue").splitlines()
    assert "SHARE" in queue[0].split() and any("nlp 25%" in line for line in queue[1:])
