"""Races with a user-visible effect, each replayed on purpose.

A cancel landing while the job already exited 0; five concurrent deliveries of one
alert; old events replayed after the dedupe window; `logs -n` on a huge log; YAML alias bombs in `--config`.
"""

import asyncio
import json
import subprocess
import sys
import time

import pytest

from sentinels.cli.client import CliError
from sentinels.cli.jobspec import load_file
from sentinels import clock, logfiles
from sentinels.domain import events, states
from sentinels.embedded import machine
from sentinels.embedded.kubelet import Kubelet
from sentinels.adapters import logs
from sentinels.adapters.memory import MemorySink
from tests.test_alert_function import function, put  # noqa: F401 (fixture)
from tests.test_alert_notify import record
from tests.test_lifecycle import ADMIN, UPDATE, World, fixture, labelled
from tests.test_local_executor import finish, job_outcome, kill_leftovers, make_record


async def test_cancel_after_the_job_exited_0_records_success_not_cancelled():
    w = World()
    rec = await w.running_job()
    w.cluster.finish(rec["id"])  # exited 0; its events are still on their way
    await w.submitter.cancel({"job": rec["id"]}, ADMIN)
    assert await w.life.cancel(rec["id"]) == "succeeded"
    assert (await w.get(rec["id"]))["state"] == states.SUCCEEDED
    assert not w.events("job.cancelled")


async def test_cancel_of_a_job_that_failed_on_its_own_keeps_its_failure():
    w = World()
    rec = await w.running_job()
    w.cluster.finish(rec["id"], "Failed")
    await w.submitter.cancel({"job": rec["id"]}, ADMIN)
    assert await w.life.cancel(rec["id"]) == "failed"


async def test_executor_stop_after_an_unnoticed_exit_0_reports_complete(tmp_path):
    sink = MemorySink()
    kubelet = Kubelet(tmp_path / "jobs", machine.capacity({"cpu": 8, "memory": "8Gi", "stop_grace": 1}), sink)
    kubelet.recover()
    try:
        kubelet.launch(make_record("qqqqqqqqqq", [sys.executable, "-c", "pass"]), {})
        popen = kubelet.children["qqqqqqqqqq"]
        popen.wait(timeout=30)  # exited 0, but no poll has noticed it yet
        reply = kubelet.stop("qqqqqqqqqq")
        assert reply["stopping"] is False and reply["state"] == "succeeded"
        await kubelet.flush()
        assert job_outcome(sink.events[-1])[0] == "Complete"
    finally:
        kill_leftovers(tmp_path)


def test_tail_of_a_1_gib_log_reads_only_its_end(tmp_path):
    log = tmp_path / "log"
    with open(log, "wb") as f:
        f.truncate(2**30)  # sparse: 1 GiB of NULs without a newline, then the real lines
        f.seek(0, 2)
        f.write(b"".join(b"line %d\n" % i for i in range(10)))
    # VmHWM (peak RSS of this process image; ru_maxrss would include the forking parent's)
    code = ("import re, sys; from pathlib import Path; from sentinels import logfiles; "
            "lines, size = logfiles.tail(Path(sys.argv[1]), 5, 64 * 2**20); "
            "print(lines, size, re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    out = subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True, text=True, timeout=60)
    lines, size, rss_kib = out.stdout.rsplit(" ", 2)
    assert lines == str([f"line {i}" for i in range(5, 10)])
    assert int(size) == 2**30 + 70
    assert int(rss_kib) < 200 * 1024, f"peak RSS {rss_kib} KiB"


def test_tail_edge_cases(tmp_path):
    log = tmp_path / "log"
    log.write_bytes(b"a\nb\nc")
    assert logfiles.tail(log, 2, 1024)[0] == ["b", "c"]
    assert logfiles.tail(log, None, 1024)[0] == ["a", "b", "c"]
    assert logfiles.tail(log, 0, 1024)[0] == []
    assert logfiles.tail(log, 10, 3)[0] == ["c"]  # cut at max_bytes; the partial first line is dropped
    # the read API's file source: every line when no tail is asked for, nothing for no file
    assert logs.tail_lines(log, None) == (["a", "b", "c"], 5) and logs.tail_lines(log, 1) == (["c"], 5)
    assert logs.tail_lines(tmp_path / "never-written", 3) == ([], 0)


def test_yaml_alias_bomb_is_refused_before_expansion(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    rows = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    rows += [f'{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]'
             for i in range(9)]
    bomb.write_text("\n".join(rows) + "\n")
    t0 = time.monotonic()
    with pytest.raises(CliError, match="aliases"):
        load_file(str(bomb))
    assert time.monotonic() - t0 < 5
    plain = tmp_path / "plain.yaml"
    plain.write_text("image: python:3.11\nenv: {A: '&not-an-anchor'}\n")
    assert load_file(str(plain))["env"] == {"A": "&not-an-anchor"}


async def test_five_concurrent_deliveries_send_one_slack_message(function, fake, js, logs):
    post, _ = function
    rec = await put(js, record())
    results = await asyncio.gather(*(post(events.JOB_SUCCEEDED, {"job": rec["id"]}, event_id="same")
                                     for _ in range(5)))
    assert all(status == 200 for status, _ in results)
    assert sorted(m["channel"] for m in fake.messages) == ["#alerts", "#vision"]
    assert sum(len(body["sent"]) for _, body in results) == 2


async def test_a_claim_left_by_a_crashed_delivery_is_taken_over_later(js):
    from sentinels.adapters.jetstream import JetStreamSentLog

    CLAIM_SECONDS = JetStreamSentLog.CLAIM_SECONDS
    clock = [1000.0]
    sent = await JetStreamSentLog.open(js)
    sent.now = lambda: clock[0]
    assert await sent.claim("k") is True  # ... and the process died before sending
    assert await sent.claim("k") is False  # a fresh claim is respected
    clock[0] += CLAIM_SECONDS + 1
    assert await sent.claim("k") is True  # a stale one is taken over
    await sent.done("k")
    clock[0] += 10 * CLAIM_SECONDS
    assert await sent.claim("k") is False  # sent stays sent
    assert await sent.claim("other") is True
    await sent.release("other")  # the send failed: the redelivery may try again
    assert await sent.claim("other") is True


async def test_replaying_an_old_event_after_the_dedupe_window_adds_no_history():
    w = World()
    rec = await w.running_job()
    done = labelled(fixture("job-succeeded.yaml"), rec)
    assert await w.life.handle(UPDATE, done) == "succeeded"
    w.history.window_passed()
    assert await w.life.handle(UPDATE, done) == "redelivered"
    assert [e["to"] for e in await w.history.of(rec["id"])] == ["QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED"]


async def test_a_lost_history_entry_is_written_by_the_redelivery():
    w = World()
    rec = await w.running_job()
    done = labelled(fixture("job-succeeded.yaml"), rec)
    real = w.history.append

    async def crash(entry, msg_id, first=False):  # the process died after the CAS, before its effects
        raise ConnectionError("killed")

    w.history.append = crash
    with pytest.raises(ConnectionError):
        await w.life.handle(UPDATE, done)
    w.history.append = real
    w.history.window_passed()
    assert await w.life.handle(UPDATE, done) == "redelivered"
    assert [e["to"] for e in await w.history.of(rec["id"])] == ["QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED"]


async def test_a_submit_retried_after_the_dedupe_window_records_queued_once(js):
    from sentinels.functions.submit.service import SubmitService
    from sentinels.adapters import jetstream
    from sentinels.domain.priority import PriorityConfig
    from sentinels.domain.spec import Limits
    from sentinels.adapters.memory import MemorySink

    for name in (jetstream.HISTORY_STREAM, jetstream.QUEUE_STREAM):  # a short window, so the test can outwait it
        info = await js.stream_info(name)
        info.config.duplicate_window = 0.5
        await js.update_stream(info.config)
    history = jetstream.JetStreamHistory(js)
    svc = SubmitService(await jetstream.JetStreamJobs.open(js), jetstream.JetStreamQueue(js), history, MemorySink(),
                        PriorityConfig.from_dict(None), Limits(), clock.now_iso)
    spec = {"spec": {"image": "python:3.11", "command": ["true"]}}
    status, rec = await svc.submit(spec, ADMIN, "t", "retried")
    await asyncio.sleep(1.0)
    again, same = await svc.submit(spec, ADMIN, "t", "retried")
    assert (status, again, same["id"]) == (201, 200, rec["id"])
    assert [e["to"] for e in await history.of(rec["id"])] == ["QUEUED"]
    assert await jetstream.JetStreamQueue(js).counts() == {"normal": 1}


def _as_saved_before_the_spawn(jobs, job_id: str) -> None:
    """The executor killed between starting a run and saving its pid: the state on disk
    has the pod Pending without a pid."""
    path = jobs / job_id / "state.json"
    state = json.loads(path.read_text())
    state["pod"].update(phase="Pending", pid=None, pgid=None, proc_start=None, started=None)
    path.write_text(json.dumps(state))


@pytest.mark.parametrize("still_running", [False, True])
async def test_a_run_whose_pid_was_never_saved_keeps_its_real_end(tmp_path, still_running):
    """Chaos showed a job that had exited 0 reported FAILED ContainerStatusUnknown: the
    executor died before saving the runner's pid, and its restart ignored the result file."""
    cap = machine.capacity({"cpu": 8, "memory": "8Gi", "stop_grace": 1})
    first = Kubelet(tmp_path / "jobs", cap, MemorySink())
    first.recover()
    command = [sys.executable, "-c", "import time; time.sleep(1.5)" if still_running else "pass"]
    try:
        first.launch(make_record("pppppppppp", command), {})
        if not still_running:
            first.children["pppppppppp"].wait(timeout=30)
        _as_saved_before_the_spawn(tmp_path / "jobs", "pppppppppp")
        sink = MemorySink()
        second = Kubelet(tmp_path / "jobs", cap, sink)  # the restarted executor
        second.recover()
        assert (await finish(second, "pppppppppp"))["outcome"] == "Complete"
        assert job_outcome(sink.events[-1])[0] == "Complete"
    finally:
        kill_leftovers(tmp_path)


async def test_a_job_log_rotates_at_its_size_cap(tmp_path):
    cap = machine.capacity({"cpu": 8, "memory": "8Gi", "stop_grace": 1, "log_max": "4Ki"})
    kubelet = Kubelet(tmp_path / "jobs", cap, MemorySink())
    kubelet.recover()
    script = "import sys\nfor i in range(2000): print(f'line {i:05d}', flush=i % 100 == 0)"
    try:
        kubelet.launch(make_record("llllllllll", [sys.executable, "-c", script]), {})
        await finish(kubelet, "llllllllll")
        job_dir = tmp_path / "jobs" / "llllllllll"
        current, older = job_dir / "attempt-1.log", job_dir / "attempt-1.log.1"
        assert current.stat().st_size <= 4096 + 200 and older.stat().st_size <= 4096 + 200
        assert kubelet.logs("llllllllll", 1) == ["line 01999"]  # the newest part holds the end
        assert "log reached its size cap" in current.read_text()
        assert kubelet.runs["llllllllll"]["outcome"] == "Complete"
    finally:
        kill_leftovers(tmp_path)
