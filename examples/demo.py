"""`make demo`: the embedded default end to end, on a fresh machine, in about a minute.

Starts `sentinels up -d` in a private home (free ports, so it never touches a stack you
already run), pushes the example experiment six times with different priorities onto
two job slots, shows the queue draining in priority order and why jobs wait, waits for
every job to end, prints each final state with its MLflow run, then stops everything.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sentinels.embedded import natsd  # noqa: E402
HOME = ROOT / ".sentinels-demo"
JOBS = [("low", "0.05"), ("normal", "0.1"), ("high", "0.5"), ("low", "1.0"), ("critical", "2.0"), ("normal", "0.2")]


def sentinels(*args, show=True, check=True):
    cmd = [sys.executable, "-m", "sentinels.cli.main", *args]
    if show:
        print(f"\n$ sentinels {' '.join(args)}", flush=True)
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, cwd=ROOT)
    if show:
        print((r.stdout + r.stderr).rstrip(), flush=True)
    if check and r.returncode:
        raise SystemExit(f"demo: `sentinels {' '.join(args)}` failed:\n{r.stderr}")
    return r.stdout


shutil.rmtree(HOME, ignore_errors=True)
HOME.mkdir()
(HOME / "config.yaml").write_text("local:\n  slots: 2\n  runtime: process\n")  # the example runs on the host
base = natsd.free_block(6)
ENV = {**os.environ, "SENTINELS_HOME": str(HOME), "SENTINELS_URL": f"http://127.0.0.1:{base}",
       "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "SENTINELS_TICK": "2"}
t0 = time.monotonic()
print("== starting the embedded default (NATS JetStream, submit, schedule, on_job_event, alert, router, local executor)")
sentinels("up", "-d")
try:
    ids = {}
    print("\n== pushing the example experiment six times; two job slots, so most of them wait")
    for i, (prio, lr) in enumerate(JOBS):
        out = sentinels("submit", "python:3.11-slim", "--config", "examples/train.yaml", "--name", f"logreg-{i}-{prio}",
                        "--priority", prio, "--param", f"lr={lr}", "--", sys.executable, str(ROOT / "examples" / "train.py"))
        ids[out.strip()] = prio
    print("\n== the queue, in the order jobs will start (class first, then submission order)")
    sentinels("queue")
    waiting = json.loads(sentinels("queue", "-o", "json", show=False))["jobs"]
    if waiting:
        sentinels("status", waiting[-1]["id"])
    started = []
    while True:
        records = json.loads(sentinels("ls", "--all", "--all-users", "-o", "json", show=False))["jobs"]
        if len(records) < len(ids):
            raise SystemExit(f"demo: expected {len(ids)} jobs, the store lists {len(records)}")
        for r in reversed(records):  # newest first: oldest first reads better
            if r["state"] != "QUEUED" and r["id"] not in started:
                started.append(r["id"])
                print(f"   started {r['name']:<22} ({r['priority']})", flush=True)
        if all(r["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") for r in records):
            break
        if time.monotonic() - t0 > 170:
            raise SystemExit("demo: jobs did not finish within 3 minutes")
        time.sleep(1)
    print("\n== every job ended")
    sentinels("ls", "--all", "--all-users")
    print("\n== MLflow runs (metrics logged by the experiment itself; outputs stored as artifacts)")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{HOME / 'mlflow' / 'mlflow.db'}")
    for job_id in ids:
        rec = json.loads(sentinels("status", job_id, "-o", "json", show=False))
        run = client.get_run(rec["mlflow_run_id"])
        arts = [a.path for a in client.list_artifacts(run.info.run_id)]
        acc = run.data.metrics.get("test_accuracy")
        print(f"   {rec['name']:<22} {rec['state']:<9} run {run.info.run_id[:12]} {run.info.status:<8} "
              f"test_accuracy={acc if acc is None else round(acc, 3)} artifacts={arts}")
    first = next(iter(ids))
    sentinels("history", first)
    sentinels("logs", first, "--tail", "3")
finally:
    sentinels("down", check=False)
print(f"\n== demo finished in {time.monotonic() - t0:.0f} s; data kept in {HOME.relative_to(ROOT)}/")
print(f"""
== to look at what it did
   export SENTINELS_HOME={HOME}
   .venv/bin/sentinels up -d && .venv/bin/sentinels ls --all --all-users    # every job, finished ones too
   .venv/bin/mlflow ui --backend-store-uri sqlite:///{HOME / 'mlflow' / 'mlflow.db'}   # the MLflow runs, then http://127.0.0.1:5000
   ls {HOME / 'jobs'}/<id>/    # a job's attempt-<n>.log, outputs/ and job.yaml; components log to {HOME / 'logs'}/
   .venv/bin/sentinels down""")
