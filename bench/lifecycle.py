"""Issue 4 and 5 numbers: 500 trivial jobs through the embedded default with 2 slots
(throughput, submit -> SUCCEEDED), terminal state -> Slack message received by a local
server that answers like Slack, and the lifecycle function's time per Kubernetes event.
"""

import asyncio
import json
import re
import sys
import tempfile
import time

from common import ROOT, ms, nats_server, pct, stack, submit_load

sys.path.insert(0, str(ROOT))
from tests.fake_slack import FakeSlack  # noqa: E402

from sentinels.functions.on_job_event.service import LifecycleService  # noqa: E402
from sentinels.domain.scheduler_config import SchedulerConfig  # noqa: E402
from sentinels.functions.schedule.service import ScheduleService  # noqa: E402
from sentinels.functions.submit.service import SubmitService  # noqa: E402
from sentinels import clock  # noqa: E402
from sentinels.adapters import jetstream  # noqa: E402
from sentinels.adapters.memory import MemoryCluster  # noqa: E402
from sentinels.domain.times import parse as parse_iso  # noqa: E402
from sentinels.domain.placement import Node  # noqa: E402
from sentinels.domain.priority import PriorityConfig  # noqa: E402
from sentinels.domain.spec import Limits  # noqa: E402

import yaml  # noqa: E402

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


async def all_records(url):
    nc = await jetstream.connect(url)
    try:
        return await (await jetstream.JetStreamJobs.open(nc.jetstream())).all()
    finally:
        await nc.close()


def trivial_jobs(n=500):
    with FakeSlack() as fake:
        env_extra = {"SLACK_WEBHOOK_URL": fake.webhook_url, "SENTINELS_TICK": "5", "MLFLOW_TRACKING_URI": "none"}
        with stack(env_extra, config={"local": {"slots": 2}}) as env:
            spec = {"image": "python:3.11", "command": ["true"], "resources": {"cpu": "100m", "memory": "64Mi"}}
            t0 = time.time()
            asyncio.run(submit_load(env["SENTINELS_URL"], n, 4, spec))
            while True:
                records = asyncio.run(all_records(env["SENTINELS_NATS_URL"]))
                if len(records) >= n and all(r["state"] in TERMINAL for r in records):
                    break
                if time.time() - t0 > 900:
                    raise SystemExit("jobs did not finish in 15 minutes")
                time.sleep(0.5)
            last = max(parse_iso(r["updated_at"]) for r in records)
            states = {s: sum(r["state"] == s for r in records) for s in TERMINAL}
            lat = [parse_iso(r["timestamps"][r["state"]]) - parse_iso(r["submitted_at"]) for r in records]
            print(f"500 trivial jobs (`true`), 2 slots: {n / (last - t0):.1f} jobs/s from first submit to last end "
                  f"({last - t0:.1f} s; {states}); submit -> end p50 {lat and f'{pct(lat, 50):.1f} s'}, "
                  f"p99 {pct(lat, 99):.1f} s   [target >= 10 jobs/s; Slurm here: 0.75]")
            fake.wait_messages(n, timeout=30)
            ends = {r["id"]: parse_iso(r["timestamps"][r["state"]]) for r in records}
            slack = []
            for m in fake.messages:
                found = re.search(r"\(([a-z2-7]{10})\)", m.get("text", ""))
                if found and found.group(1) in ends:
                    slack.append(m["received"] - ends[found.group(1)])
            print(f"terminal state -> Slack message received (local webhook server): p50 {ms(pct(slack, 50))}, "
                  f"p99 {ms(pct(slack, 99))} over {len(slack)} messages   [target p50 <= 200 ms]")


async def event_handling(url, n=300):
    nc = await jetstream.connect(url)
    js = nc.jetstream(timeout=10)
    await jetstream.ensure(js)
    jobs, queue, history = await jetstream.JetStreamJobs.open(js), jetstream.JetStreamQueue(js), jetstream.JetStreamHistory(js)
    sink = jetstream.JetStreamSink(js)
    prio = PriorityConfig.from_dict(None)
    cluster = MemoryCluster([Node("n1", 10**6, 2**50, 0, 10**6, 2**50, 0)])
    submit = SubmitService(jobs, queue, history, sink, prio, Limits(), clock.now_iso)
    sched = ScheduleService(jobs, queue, history, sink, cluster, prio, SchedulerConfig(window=n), clock.now_iso)
    life = LifecycleService(jobs, queue, history, sink, cluster, clock.now_iso)
    fixtures = ROOT / "tests" / "fixtures" / "kubernetes"
    running, done = (yaml.safe_load((fixtures / f).read_text()) for f in ("pod-running.yaml", "job-succeeded.yaml"))
    ids = []
    for i in range(n):
        _, rec = await submit.submit({"spec": {"image": "python:3.11", "command": ["true"]}}, {"user": "b", "role": "admin"}, "b", str(i))
        ids.append(rec["id"])
    await sched.run_pass()
    times = []
    for job_id in ids:
        rec = (await jobs.get(job_id))[0]
        for obj, kind in ((running, "update"), (done, "update")):
            obj = json.loads(json.dumps(obj))
            obj["metadata"].setdefault("labels", {})["sentinels.io/job-id"] = job_id
            obj["metadata"].setdefault("annotations", {})["sentinels.io/attempt"] = str(rec["attempts"])
            if obj["kind"] == "Job":
                obj["metadata"]["name"] = rec["k8s_job"]
            t = time.perf_counter()
            await life.handle(f"dev.knative.apiserver.resource.{kind}", obj)
            times.append(time.perf_counter() - t)
    final = [(await jobs.get(j))[0]["state"] for j in ids]
    assert final == ["SUCCEEDED"] * n, final
    print(f"on_job_event, per Kubernetes event (observe + CAS + history + events, no MLflow): p50 {ms(pct(times, 50))}, "
          f"p99 {ms(pct(times, 99))} over {len(times)} events   [target p50 <= 20 ms]")
    await nc.close()
    return ids


def mlflow_time(n=50):
    from sentinels.adapters.mlflow_tracker import MlflowTracker
    from sentinels.domain import job
    from sentinels.domain.spec import validate

    tracker = MlflowTracker(f"sqlite:///{tempfile.mkdtemp()}/mlflow.db")
    tracker.warm()
    spec = validate({"image": "python:3.11", "command": ["true"], "params": {"lr": 0.1}})
    times = []
    for i in range(n):
        rec = job.new_record(job_id=job.job_id_for("b", "b", str(i)), spec=spec, who={"user": "b"}, klass="normal",
                             now=clock.now_iso(), queue_seq=i + 1)
        rec["timestamps"]["SCHEDULED"] = rec["timestamps"]["RUNNING"] = rec["timestamps"]["SUCCEEDED"] = clock.now_iso()
        rec["state"] = "SUCCEEDED"
        t = time.perf_counter()
        tracker.sync(rec)
        times.append(time.perf_counter() - t)
    print(f"MLflow time per job, reported separately (local sqlite store: create run, params, metrics, finish): "
          f"p50 {ms(pct(times, 50))}, p99 {ms(pct(times, 99))}")


def main():
    sys.stdout.reconfigure(line_buffering=True)
    with nats_server() as url:
        asyncio.run(event_handling(url))
    mlflow_time()
    trivial_jobs()


if __name__ == "__main__":
    main()
