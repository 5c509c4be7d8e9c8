"""The adversarial run, kept as a suite: `make chaos` (CI runs it after `make test`).

A burst of trivial jobs (1,000 by default) into a real embedded stack while each part is
killed with SIGKILL in turn (submit, schedule, on_job_event, alert, router, executor,
nats-server), and every CloudEvent is delivered twice (a duplicator re-publishes each one
with a new message id). Each job appends a line to its own marker file. Then:

  lost     accepted ids (the submit function answered 2xx) with no record
  twice    jobs whose marker has more than one line (ran more than once)
  stuck    jobs not terminal within the bound after the last kill

It prints those counts, the states, and the time from the last kill to the last job
reaching a terminal state, and exits non-zero unless lost = twice = stuck = 0.
"""

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sentinels.adapters import jetstream  # noqa: E402
from sentinels.domain import events, states  # noqa: E402
from sentinels.embedded import natsauth, natsd  # noqa: E402

VICTIMS = ("submit", "schedule", "on_job_event", "alert", "router", "executor", "nats")
DUP = "Sentinels-Chaos-Duplicate"


def children(pid: int) -> dict[str, int]:
    """The supervisor's children by part name."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            if int(stat[stat.rfind(")") + 2:].split()[1]) != pid:
                continue
            cmd = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        text = [c.decode(errors="replace") for c in cmd]
        if any("nats-server" in c for c in text):
            out["nats"] = int(entry)
        elif "sentinels.embedded.serve" in text:
            out[text[text.index("sentinels.embedded.serve") + 1]] = int(entry)
        elif "sentinels.embedded.executor" in text:
            out["executor"] = int(entry)
        elif "sentinels.embedded.router" in text:
            out["router"] = int(entry)
    return out


async def admin(env):
    login = jetstream.credentials(str(natsauth.credentials_file(Path(env["SENTINELS_HOME"]), "admin")))
    return await jetstream.connect(env["SENTINELS_NATS_URL"], "chaos", reconnect=True, login=login, timeout=10)


async def duplicator(env, stop: asyncio.Event, counter: list) -> None:
    """Re-publish every CloudEvent once more under a new message id: every event twice."""
    while not stop.is_set():
        try:
            nc = await admin(env)
            break
        except Exception:
            await asyncio.sleep(0.5)
    js = nc.jetstream(timeout=10)

    async def again(msg):
        if (msg.headers or {}).get(DUP) or "deadletter" in msg.subject:
            return
        for _ in range(50):
            try:
                await js.publish(msg.subject, msg.data, stream=jetstream.EVENTS_STREAM,
                                 headers={DUP: "1", "Nats-Msg-Id": f"dup:{uuid.uuid4()}"})
                counter[0] += 1
                return
            except Exception:
                await asyncio.sleep(0.5)

    await nc.subscribe("sentinels.events.>", cb=again)
    await stop.wait()
    await nc.close()


async def submit_all(url: str, n: int, markers: Path, accepted: dict, clients: int = 16) -> None:
    """Submit n jobs like the CLI: a fresh CloudEvent id, reused on every retry."""
    import httpx

    work = asyncio.Queue()
    for i in range(n):
        work.put_nowait(i)

    async def client(http):
        while not work.empty():
            i = work.get_nowait()
            ce_id = str(uuid.uuid4())
            spec = {"image": "python:3.11", "name": f"chaos-{i}", "resources": {"cpu": "10m", "memory": "16Mi"},
                    "command": ["/bin/sh", "-c", f'echo ran >> "{markers}/$SENTINELS_JOB_ID"']}
            headers = {"content-type": "application/json", "ce-specversion": "1.0", "ce-type": events.JOB_SUBMIT,
                       "ce-source": "chaos", "ce-id": ce_id}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    r = await http.post(url + "/", content=json.dumps({"spec": spec}).encode(), headers=headers)
                    if r.status_code in (200, 201):
                        accepted[r.json()["id"]] = ce_id
                        break
                    if r.status_code < 500:
                        raise SystemExit(f"submit refused a valid job: {r.status_code} {r.text}")
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.3)
            else:
                print(f"chaos: job {i} never accepted (not counted as lost: the client was never told yes)")

    async with httpx.AsyncClient(timeout=15) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))


async def killer(sup_pid: int, every: float, log: list) -> float:
    """SIGKILL each part in turn; returns the monotonic time of the last kill."""
    last = time.monotonic()
    for name in VICTIMS:
        await asyncio.sleep(every)
        for _ in range(100):  # the supervisor may be restarting it right now
            pid = children(sup_pid).get(name)
            if pid:
                break
            await asyncio.sleep(0.1)
        else:
            raise SystemExit(f"chaos: no {name} to kill")
        os.kill(pid, signal.SIGKILL)
        last = time.monotonic()
        log.append((round(last, 1), name, pid))
        print(f"chaos: killed {name} (pid {pid})", flush=True)
    return last


async def states_of(env, ids) -> dict[str, str | None]:
    nc = await admin(env)
    try:
        jobs = await jetstream.JetStreamJobs.open(nc.jetstream(timeout=10))
        out = {}
        for record in await jobs.all():
            out[record["id"]] = (record["state"], record.get("updated_at"), record.get("reason") or "")
        return {i: out.get(i) for i in ids}
    finally:
        await nc.close()


async def run(n: int, every: float, bound: float) -> int:
    home = Path(tempfile.mkdtemp(prefix="sentinels-chaos-"))
    os.chmod(home, 0o755)  # as root, jobs run as `nobody`: it must reach its job directories
    markers = home / "markers"
    markers.mkdir()
    os.chmod(markers, 0o777)
    (home / "config.yaml").write_text(yaml.safe_dump({
        "local": {"cpu": 8, "memory": "8Gi", "slots": 24, "stop_grace": "2s"},
        "lifecycle": {"reconcile_seconds": 3}, "events": {"max_backoff": "2s"}}))
    base = natsd.free_block(4)
    env = {**os.environ, "SENTINELS_HOME": str(home), "SENTINELS_URL": f"http://127.0.0.1:{base}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "SENTINELS_TICK": "1",
           "MLFLOW_TRACKING_URI": "none", "SENTINELS_RUNTIME": "process"}  # trivial commands, no images
    env.pop(jetstream.CREDENTIALS_ENV, None)
    up = subprocess.run([sys.executable, "-m", "sentinels.cli.main", "up", "-d"], env=env, capture_output=True, text=True,
                        cwd=ROOT, timeout=180)
    if up.returncode:
        print(up.stderr, file=sys.stderr)
        return 2
    sup_pid = json.loads((home / "run" / "up.pid").read_text())["pid"]
    accepted: dict[str, str] = {}
    kills: list = []
    stop, dups = asyncio.Event(), [0]
    t0 = time.monotonic()
    try:
        dup_task = asyncio.create_task(duplicator(env, stop, dups))
        submitting = asyncio.create_task(submit_all(env["SENTINELS_URL"], n, markers, accepted))
        last_kill = await killer(sup_pid, every, kills)
        await submitting
        print(f"chaos: {len(accepted)} of {n} jobs accepted in {time.monotonic() - t0:.0f} s; waiting for the ends",
              flush=True)
        ids = list(accepted)
        deadline = last_kill + bound
        snapshot = {}
        while time.monotonic() < deadline:
            try:
                snapshot = await states_of(env, ids)
            except Exception as e:  # NATS restarting or the machine busy: look again
                print(f"chaos: could not read the records yet ({type(e).__name__})", flush=True)
                await asyncio.sleep(2)
                continue
            if all(s and s[0] in states.TERMINAL for s in snapshot.values()):
                break
            await asyncio.sleep(2)
        done_at = time.monotonic()
        stop.set()
        await dup_task
    finally:
        subprocess.run([sys.executable, "-m", "sentinels.cli.main", "down"], env=env, capture_output=True, cwd=ROOT, timeout=120)
    lost = [i for i, s in snapshot.items() if s is None]
    stuck = [i for i, s in snapshot.items() if s and s[0] not in states.TERMINAL]
    twice = [p.name for p in markers.iterdir() if len(p.read_text().splitlines()) > 1]
    by_state: dict[str, int] = {}
    for s in snapshot.values():
        if s:
            by_state[s[0]] = by_state.get(s[0], 0) + 1
    print(f"chaos: kills in turn: {', '.join(k[1] for k in kills)}; {dups[0]} events delivered twice")
    print(f"chaos: {len(accepted)} accepted, states {by_state}")
    print(f"chaos: lost {len(lost)}, ran twice {len(twice)}, stuck {len(stuck)}   [target 0, 0, 0]")
    ended_otherwise: dict[str, list[str]] = {}  # every job here is trivial: any end but SUCCEEDED is explained
    for i, s in snapshot.items():
        if s and s[0] != states.SUCCEEDED:
            ended_otherwise.setdefault(f"{s[0]}: {s[2]}", []).append(i)
    for why, which in sorted(ended_otherwise.items()):
        print(f"chaos: {len(which)} {why} ({' '.join(which[:5])})")
    if not stuck:
        print(f"chaos: last kill to last job terminal: {done_at - last_kill:.1f} s   [bound {bound:.0f} s]")
    for name, ids in (("lost", lost), ("twice", twice), ("stuck", stuck)):
        if ids:
            print(f"chaos: {name}: {' '.join(ids[:20])}" + (" ..." if len(ids) > 20 else ""))
    print(f"chaos: logs in {home / 'logs'}")
    return 1 if (lost or twice or stuck) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--every", type=float, default=4.0, help="seconds between kills")
    parser.add_argument("--bound", type=float, default=300.0, help="seconds after the last kill for every job to end")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    sys.exit(asyncio.run(run(args.jobs, args.every, args.bound)))


if __name__ == "__main__":
    main()
