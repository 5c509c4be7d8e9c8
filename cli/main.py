"""`sentinels`: submit, inspect and cancel experiments.

Writes go as CloudEvents to the submit function; reads go to JetStream directly.
Every command takes `-o table|json|yaml`; errors go to stderr with a non-zero exit.
"""

import sys
from typing import List, Optional

import typer

from .client import CliError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="sentinels: a priority job queue for ML experiments.")
Output = typer.Option("table", "--output", "-o", help="table, json or yaml")


def _settings():
    from sentinels.domain.errors import ConfigError
    from sentinels.settings import Settings

    if "aiohttp" not in sys.modules:  # nats only needs aiohttp for websockets; skip its 150 ms import
        sys.modules["aiohttp"] = None
    try:
        return Settings.load()
    except ConfigError as e:
        raise CliError(e.message) from None


def _fmt(output: str) -> str:
    from .output import FORMATS

    if output not in FORMATS:
        raise CliError(f"-o {output!r}: choose one of {', '.join(FORMATS)}", 2)
    return output


def _me(settings) -> str:
    import getpass
    import os

    return settings.user() or getpass.getuser()


def _ago(iso: str | None) -> str:
    if not iso:
        return ""
    from sentinels.domain.times import parse as parse_iso
    from sentinels.domain.duration import human
    import time

    return human(max(0.0, time.time() - parse_iso(iso)))


def _res(spec: dict) -> str:
    r = spec.get("resources", {})
    gpu = f" gpu={r['gpu']}" if r.get("gpu") else ""
    return f"cpu={r.get('cpu')} mem={r.get('memory')}{gpu}"


@app.command()
def submit(
    image: Optional[str] = typer.Argument(None, help="container image, e.g. ghcr.io/acme/resnet:1.4 "
                                                   "(none with --dockerfile)"),
    command: Optional[List[str]] = typer.Argument(None, help="after --: the command and its arguments"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="job spec YAML (flags override it)"),
    name: Optional[str] = typer.Option(None, "--name", help="DNS-1123 name (default: from the image)"),
    priority: Optional[str] = typer.Option(None, "--priority", "-p", help="priority class, e.g. high"),
    cpu: Optional[str] = typer.Option(None, "--cpu", help="CPU request, e.g. 2 or 500m"),
    memory: Optional[str] = typer.Option(None, "--memory", help="memory request, e.g. 16Gi"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="number of GPUs"),
    data: Optional[str] = typer.Option(None, "--data", help="data path under a data root, mounted read-only"),
    env: Optional[List[str]] = typer.Option(None, "--env", "-e", help="KEY=VALUE, repeatable"),
    param: Optional[List[str]] = typer.Option(None, "--param", help="k=v MLflow param, repeatable"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment (default: name)"),
    timeout: Optional[str] = typer.Option(None, "--timeout", help="hard deadline, e.g. 2h"),
    retries: Optional[int] = typer.Option(None, "--retries", help="re-runs after the job's own failure"),
    wait: bool = typer.Option(False, "--wait", help="follow the job until it ends"),
    dockerfile: Optional[str] = typer.Option(None, "--dockerfile", help="build the image from this Dockerfile "
                                             "(path or http(s) URL); the job starts BUILDING"),
    context: Optional[str] = typer.Option(None, "--context", help="build context (directory or tar URL; "
                                          "default: the Dockerfile's directory)"),
    output: str = Output,
):
    """Push an experiment to the queue and print its job id."""
    from sentinels.domain import events

    from . import client, jobspec

    fmt = _fmt(output)
    settings = _settings()
    if dockerfile is None and context is not None:
        raise CliError("--context goes with --dockerfile", 2)
    if dockerfile is not None and image is not None:  # everything after `--` is the command
        command, image = [image, *(command or [])], None
    if dockerfile is None and image is None:
        raise CliError("give an IMAGE, or --dockerfile to build one", 2)
    spec = jobspec.build(image, config, command or [], name=name, priority=priority, cpu=cpu, memory=memory,
                         gpu=gpu, data=data, env=env, params=param, experiment=experiment, timeout=timeout,
                         retries=retries)
    body: dict = {"spec": spec}
    if dockerfile is not None:
        body["build"] = jobspec.build_source(dockerfile, context)
    record = client.post_event(settings, events.JOB_SUBMIT, body)
    if fmt == "table":
        print(record["id"])
    else:
        from .output import emit

        emit(record, fmt)
    if record.get("runtime"):  # which runtime it gets; the process runtime says that the image is not used
        print(f"sentinels: runtime {record['runtime']}" + (f": {record['runtime_note']}" if record.get("runtime_note")
                                                             else ""), file=sys.stderr)
    if wait:
        raise typer.Exit(_follow(settings, record["id"], quiet=fmt != "table"))


def _follow(settings, job_id: str, quiet: bool = False) -> int:
    """Print state changes until the job ends (one connection); exit 0 only if it succeeded."""
    import asyncio

    from sentinels.domain import states

    from .client import Reader

    async def follow(js, jobs, queue, history):
        last = None
        while True:
            got = await jobs.get(job_id)
            record = got[0] if got else None
            if record and record["state"] != last:
                last = record["state"]
                if not quiet:
                    print(f"{job_id}: {last}" + (f" ({record['reason']})" if record.get("reason") else ""),
                          file=sys.stderr)
                if last in states.TERMINAL:
                    return 0 if last == states.SUCCEEDED else 1
            await asyncio.sleep(0.3)

    return Reader(settings).run(follow)


@app.command()
def status(job_id: str = typer.Argument(...), output: str = Output):
    """State, reason, queue position, attempts, timings and links of one job."""
    fmt = _fmt(output)
    settings = _settings()
    from sentinels.domain import job as jobmod
    from sentinels.domain import states

    from .client import Reader
    from .output import emit, pairs

    if not jobmod.is_job_id(job_id):
        raise CliError(f"{job_id!r} is not a job id (10 characters, a-z and 2-7)", 2)

    async def look(js, jobs, queue, history):
        got = await jobs.get(job_id)
        if got is None:
            return None
        record = got[0]
        if record["state"] == states.QUEUED:
            from .client import waiting_doc

            record["reason"] = states.reason_now(record, await waiting_doc(js))
            prio = settings.priorities()
            record["position"] = await queue.position(prio.ordered(), record["priority"], record["queue_seq"],
                                                        record.get("queue_front", False))
        return record

    record = Reader(settings).run(look)
    if record is None:
        raise CliError(f"job {job_id} not found")
    if fmt != "table":
        emit(record, fmt)
        return
    from sentinels.domain.notify import job_links

    ts = record.get("timestamps", {})
    spec = record["spec"]
    links = job_links(record, settings.notify())
    pairs([
        ("job", f"{record['id']}  ({record['name']})"),
        ("state", record["state"] + (" (cancel requested)" if record.get("cancel_requested") else "")),
        ("reason", record.get("reason")),
        ("position", record.get("position")),
        ("priority", record["priority"]),
        ("owner", record["owner"] + (f" / {record['team']}" if record.get("team") else "")),
        ("image", spec["image"] + (" (not used: runtime process)" if record.get("runtime") == "process" else "")),
        ("runtime", record.get("runtime")),
        ("built from", (record.get("build") or {}).get("dockerfile")),
        ("image id", record.get("image_id")),
        ("command", " ".join(spec.get("command", []) + spec.get("args", []))),
        ("resources", _res(spec)),
        ("attempts", states.runs_made(record)),
        ("submitted", f"{record['submitted_at']} ({_ago(record['submitted_at'])} ago)"),
        *[(s.lower(), t) for s, t in ts.items() if s != states.QUEUED],
        ("kubernetes job", record.get("k8s_job") if record["state"] != states.QUEUED and settings.backend() == "kubernetes"
         else None),
        ("mlflow run", record.get("mlflow_run_id")),
        ("mlflow ui", _mlflow_ui(settings)),
        *[(label.lower(), url) for label, url in links],
    ])


def _mlflow_ui(settings) -> str | None:
    from sentinels.embedded.supervisor import running_info

    return running_info(settings).get("mlflow_ui")


@app.command("ls")
def ls(
    all_: bool = typer.Option(False, "--all", "-a", help="include finished jobs"),
    state: Optional[str] = typer.Option(None, "--state", help="only this state"),
    user: Optional[str] = typer.Option(None, "--user", help="only this user's jobs"),
    all_users: bool = typer.Option(False, "--all-users", "-A", help="every user's jobs"),
    output: str = Output,
):
    """Your queued and running jobs (--all for finished ones, --all-users for everyone's)."""
    fmt = _fmt(output)
    settings = _settings()
    from sentinels.domain import states

    from .client import Reader
    from .output import emit

    if state and state.upper() not in states.STATES:
        raise CliError(f"--state {state!r}: choose one of {', '.join(states.STATES)}", 2)
    async def look(js, jobs, q, h):
        from .client import waiting_doc

        return await jobs.all(), await waiting_doc(js)

    records, waiting = Reader(settings).run(look)
    owner = None if all_users else (user or _me(settings))
    rows = [r for r in records
            if (owner is None or r["owner"] == owner)
            and (r["state"] == state.upper() if state else (all_ or r["state"] not in states.TERMINAL))]
    rows.sort(key=lambda r: r["submitted_at"])
    view = [{"id": r["id"], "name": r["name"], "state": r["state"], "priority": r["priority"], "owner": r["owner"],
             "age": _ago(r["submitted_at"]), "attempts": states.runs_made(r), "reason": states.reason_now(r, waiting)}
            for r in rows]
    emit(rows if fmt != "table" else view, fmt,
         [("ID", "id"), ("NAME", "name"), ("STATE", "state"), ("PRIORITY", "priority"), ("OWNER", "owner"),
          ("AGE", "age"), ("TRIES", "attempts"), ("REASON", "reason")], view)


@app.command()
def queue(limit: int = typer.Option(50, "--limit", "-n", help="how many to show"), output: str = Output):
    """The next jobs to run, in order: position, class, wait time, resources."""
    fmt = _fmt(output)
    if limit < 1:
        raise CliError(f"-n {limit}: how many jobs to show must be at least 1", 2)
    settings = _settings()
    from sentinels.domain import states

    from .client import Reader
    from .output import emit

    prio = settings.priorities()

    async def look(js, jobs, q, history):
        import asyncio

        from sentinels.domain import states

        from .client import waiting_doc

        heads = await q.heads(prio.ordered(), limit)
        counts = await q.counts()
        waiting = await waiting_doc(js)
        got = await asyncio.gather(*(jobs.get(e["id"]) for _, e in heads))
        rows = []
        for (seq, entry), rec in zip(heads, got):
            record = rec[0] if rec else None
            if record is None or record["state"] != states.QUEUED or record.get("queue_seq") != seq:
                continue  # being scheduled/cancelled right now, or a stale copy
            rows.append({"position": len(rows) + 1, "id": entry["id"], "name": record["name"], "class": entry["class"],
                         "owner": record["owner"], "wait": _ago(entry["submitted"]), "resources": _res(record["spec"]),
                         "reason": states.reason_now(record, waiting)})
        return rows, counts

    rows, counts = Reader(settings).run(look)
    if fmt != "table":
        emit({"total": sum(counts.values()), "by_class": counts, "jobs": rows}, fmt)
        return
    emit(rows, fmt, [("POS", "position"), ("ID", "id"), ("NAME", "name"), ("CLASS", "class"), ("OWNER", "owner"),
                     ("WAIT", "wait"), ("RESOURCES", "resources"), ("REASON", "reason")])
    total = sum(counts.values())
    summary = ", ".join(f"{k} {counts[k]}" for k in prio.ordered() if counts.get(k))
    print(f"{total} queued" + (f" ({summary})" if summary else ""))


@app.command()
def cancel(job_ids: List[str] = typer.Argument(..., help="one or more job ids"), output: str = Output):
    """Cancel queued or running jobs."""
    fmt = _fmt(output)
    settings = _settings()
    from sentinels.domain import events, states

    from . import client
    from .output import emit

    failed, done = 0, []
    for job_id in job_ids:
        try:
            record = client.post_event(settings, events.JOB_CANCEL, {"job": job_id})
            done.append(record)
            if fmt == "table":
                note = "cancel requested" if record.get("cancel_requested") and record["state"] != states.CANCELLED else record["state"]
                print(f"{job_id}: {note}")
        except CliError as e:
            failed += 1
            print(f"sentinels: {job_id}: {e.message}", file=sys.stderr)
    if fmt != "table":
        emit(done, fmt)
    if failed:
        raise typer.Exit(1)


@app.command()
def priority(job_id: str = typer.Argument(...), klass: str = typer.Argument(..., metavar="CLASS"), output: str = Output):
    """Move a queued job to another priority class (if your role allows it)."""
    fmt = _fmt(output)
    settings = _settings()
    from sentinels.domain import events

    from . import client
    from .output import emit

    record = client.post_event(settings, events.JOB_REPRIORITIZE, {"job": job_id, "priority": klass})
    if fmt == "table":
        print(f"{job_id}: {record['priority']}")
    else:
        emit(record, fmt)


@app.command()
def history(job_id: str = typer.Argument(...), output: str = Output):
    """Every state transition of a job."""
    fmt = _fmt(output)
    settings = _settings()
    from .client import Reader
    from .output import emit

    rows = Reader(settings).run(lambda js, jobs, q, h: h.of(job_id))
    if not rows:
        raise CliError(f"no history for job {job_id}")
    emit(rows, fmt, [("AT", "at"), ("FROM", "from"), ("TO", "to"), ("ATTEMPT", "attempts"), ("EXIT", "exit_code"),
                     ("REASON", "reason")])


@app.command("events")
def events_cmd(dead: bool = typer.Option(False, "--dead", help="list the events the broker gave up on"),
               replay: Optional[str] = typer.Option(None, "--replay", metavar="SEQ|all",
                                                    help="deliver a dead letter again (its SEQ, or all)"),
               limit: int = typer.Option(100, "--limit", "-n", help="how many to list or replay"),
               output: str = Output):
    """Dead letters: events no function accepted within the retry horizon (count, list, replay)."""
    fmt = _fmt(output)
    if not dead and replay is None:
        raise CliError("say what to show: `sentinels events --dead` or `sentinels events --replay SEQ|all`", 2)
    if replay is not None and replay != "all" and not replay.isdigit():
        raise CliError(f"--replay {replay!r}: give the SEQ of a dead letter (from `events --dead`) or all", 2)
    settings = _settings()
    from sentinels.adapters import deadletters

    from .client import Reader
    from .output import emit

    async def look(js, jobs, q, h):
        return await deadletters.count(js), await deadletters.listing(js, limit)

    async def again(js, jobs, q, h):
        seqs = [d["seq"] for d in await deadletters.listing(js, limit)] if replay == "all" else [int(replay)]
        return [(seq, await deadletters.replay(js, seq)) for seq in seqs]

    if replay is not None:
        done = Reader(settings, "admin").run(again)
        missing = [seq for seq, ce_id in done if ce_id is None]
        if missing and replay != "all":
            raise CliError(f"no dead letter {replay}; `sentinels events --dead` lists them")
        emit([{"seq": seq, "event": ce_id} for seq, ce_id in done], fmt, [("SEQ", "seq"), ("REPLAYED", "event")])
        return
    total, letters = Reader(settings).run(look)
    rows = [{"seq": d["seq"], "trigger": d.get("trigger"), "type": (d.get("event") or {}).get("type"),
             "id": (d.get("event") or {}).get("id"), "attempts": d.get("attempts"), "dead_at": d.get("dead_at"),
             "reason": d.get("reason")} for d in letters]
    if fmt == "table":
        print(f"{total} dead letter{'s' if total != 1 else ''}" + (f" (first {len(rows)})" if total > len(rows) else ""))
    emit({"count": total, "letters": letters} if fmt != "table" else rows, fmt,
         [("SEQ", "seq"), ("TRIGGER", "trigger"), ("TYPE", "type"), ("ID", "id"), ("TRIES", "attempts"),
          ("DEAD AT", "dead_at"), ("REASON", "reason")], rows)


@app.command()
def logs(job_id: str = typer.Argument(...), follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the job ends"),
         tail: Optional[int] = typer.Option(None, "--tail", "-n", help="only the last N lines"),
         build: bool = typer.Option(False, "--build", help="the log of the image build (Dockerfile submits)"),
         attempt: Optional[int] = typer.Option(None, "--attempt", help="this attempt's output (1, 2, ...; default: the last)")):
    """The job's output (local log file in the embedded default, pod logs on Kubernetes)."""
    settings = _settings()
    from .logs import show

    raise typer.Exit(show(settings, job_id, follow, tail, build=build, attempt=attempt))


@app.command()
def up(detach: bool = typer.Option(False, "--detach", "-d", help="run in the background")):
    """Start the embedded default: NATS JetStream, the functions, the router."""
    settings = _settings()
    from sentinels.domain.errors import ConfigError
    from sentinels.embedded import supervisor

    pid = supervisor.running_pid(settings)
    if pid:
        raise CliError(f"sentinels is already running (pid {pid}, home {settings.home}); `sentinels down` stops it")
    try:
        for note in supervisor.check_config(settings):
            print(f"sentinels: {note}", file=sys.stderr)
        if not detach:
            raise typer.Exit(supervisor.run_foreground(settings))
        pid = supervisor.start_background(settings)
    except ConfigError as e:
        raise CliError(f"up: {e.message}") from None
    ui = supervisor.running_info(settings).get("mlflow_ui")
    print(f"sentinels up (pid {pid}): submit at {settings.url}, JetStream at {settings.nats_url}, data in {settings.home}"
          + (f", MLflow UI at {ui}" if ui else ""))


@app.command()
def down():
    """Stop the embedded default started with `sentinels up -d`."""
    settings = _settings()
    from sentinels.embedded import supervisor

    if not supervisor.stop_background(settings):
        raise CliError(f"sentinels is not running (home {settings.home})")
    print("sentinels: stopped")


def main() -> None:
    try:
        app()
    except CliError as e:
        print(f"sentinels: {e.message}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
