"""`sentinels`: submit, inspect and cancel experiments.

Every command but `up`/`down` talks to the HTTP API at SENTINELS_URL (reads `GET /v1/...`,
writes CloudEvents on `POST /`) through the standard library: argparse, urllib, json.
Nothing heavy is imported for the common commands, so each starts in a blink (Typer
alone took 0.2 s to import). Every listing takes `-o table|json|yaml`; errors go to
stderr with a non-zero exit.
"""

import argparse
import sys
from collections.abc import Callable

from .client import Api, CliError

FORMATS = ("table", "json", "yaml")
EVENTS = {"submit": "io.sentinels.job.submit", "cancel": "io.sentinels.job.cancel",
          "priority": "io.sentinels.job.reprioritize"}
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
COMMANDS = ("submit", "status", "ls", "queue", "share", "cancel", "priority", "logs", "history", "whoami", "events", "up",
            "down")


def _settings():
    from sentinels.domain.errors import ConfigError
    from sentinels.settings import Settings

    try:
        return Settings.load()
    except ConfigError as e:
        raise CliError(e.message) from None


def _api() -> Api:
    s = _settings()
    return Api(s.url, s.token)


def _ago(iso: str | None) -> str:
    if not iso:
        return ""
    import time

    from sentinels.domain.duration import human
    from sentinels.domain.times import parse as parse_iso

    return human(max(0.0, time.time() - parse_iso(iso)))


def _res(res: dict) -> str:
    gpu = f" gpu={res['gpu']}" if res.get("gpu") else ""
    return f"cpu={res.get('cpu')} mem={res.get('memory')}{gpu}"


def _emit(data, fmt, columns=None, rows=None):
    from .output import emit

    emit(data, fmt, columns, rows)


# --- commands ---------------------------------------------------------------------------
def cmd_submit(a) -> int:
    from . import jobspec

    if a.dockerfile is None and a.context is not None:
        raise CliError("--context goes with --dockerfile", 2)
    if a.dockerfile is not None and a.image is not None:  # everything after `--` is the command
        a.command, a.image = [a.image, *(a.command or [])], None
    if a.dockerfile is None and a.image is None:
        raise CliError("give an IMAGE, or --dockerfile to build one", 2)
    spec = jobspec.build(a.image, a.config, a.command or [], name=a.name, priority=a.priority, cpu=a.cpu,
                         memory=a.memory, gpu=a.gpu, data=a.data, env=a.env, params=a.param,
                         experiment=a.experiment, timeout=a.timeout, retries=a.retries)
    body = {"spec": spec}
    if a.dockerfile is not None:
        body["build"] = jobspec.build_source(a.dockerfile, a.context)
    if a.sweep:
        body["sweep"] = jobspec.sweep_values(a.sweep)
    if a.array:
        body["array"] = a.array
    api = _api()
    got = api.post_event(EVENTS["submit"], body)
    if "sweep" in got and "jobs" in got and "id" not in got:
        if a.output == "table":
            print(got["sweep"])
            print(f"{got['size']} jobs: {', '.join(got['jobs'][:5])}{' ...' if got['size'] > 5 else ''}",
                  file=sys.stderr)
        else:
            _emit(got, a.output)
        return 0
    print(got["id"]) if a.output == "table" else _emit(got, a.output)
    if got.get("runtime"):  # which runtime it gets; the process runtime says that the image is not used
        print(f"sentinels: runtime {got['runtime']}" + (f": {got['runtime_note']}" if got.get("runtime_note") else ""),
              file=sys.stderr)
    return _follow(api, got["id"], quiet=a.output != "table") if a.wait else 0


def _follow(api: Api, job_id: str, quiet: bool = False) -> int:
    """Print each transition as the server streams it; exit 0 only if the job succeeded."""
    import json

    last = None
    for line in api.lines(f"/v1/jobs/{job_id}/history", follow="true"):
        if not line:
            continue
        entry = json.loads(line)
        last = entry.get("to")
        if not quiet:
            print(f"{job_id}: {last}" + (f" ({entry['reason']})" if entry.get("reason") else ""), file=sys.stderr)
    return 0 if last == "SUCCEEDED" else 1


def _mlflow_ui(settings) -> str | None:
    if not settings.run_dir.exists():  # no embedded default was started from this home
        return None
    from sentinels.embedded.supervisor import running_info

    return running_info(settings).get("mlflow_ui")


def _waits_for(r: dict) -> str | None:
    """A queued job's reason code (and the resource that is short), as the scheduler gave it."""
    code = r.get("reason_code")
    return None if not code else code + (f" ({r['short']})" if r.get("short") else "")


def cmd_status(a) -> int:
    settings = _settings()
    r = Api(settings.url, settings.token).get(f"/v1/jobs/{a.job_id}")
    if a.output != "table":
        _emit(r, a.output)
        return 0
    from .output import pairs

    spec = r.get("spec") or {}
    pairs([
        ("job", f"{r['id']}  ({r.get('name')})"),
        ("state", r["state"] + (" (cancel requested)" if r.get("cancel_requested") else "")),
        ("reason", r.get("reason")),
        ("waits for", _waits_for(r)),
        ("position", r.get("position")),
        ("priority", r.get("priority")),
        ("owner", r["owner"] + (f" / {r['team']}" if r.get("team") else "")),
        ("sweep", (r.get("sweep") or {}).get("id")),
        ("image", (spec.get("image") or "") + (" (not used: runtime process)" if r.get("runtime") == "process" else "")),
        ("runtime", r.get("runtime")),
        ("command", " ".join((spec.get("command") or []) + (spec.get("args") or []))),
        ("resources", _res(spec.get("resources") or {})),
        ("attempts", r.get("attempts", 0)),
        ("submitted", f"{r['submitted_at']} ({_ago(r['submitted_at'])} ago)"),
        *[(s.lower(), t) for s, t in (r.get("timestamps") or {}).items() if s != "QUEUED"],
        ("kubernetes job", r.get("k8s_job") if r["state"] != "QUEUED" and not r.get("runtime") else None),  # local: none
        ("mlflow run", r.get("mlflow_run_id")),
        ("mlflow ui", _mlflow_ui(settings)),
        *[(label.lower(), url) for label, url in (r.get("links") or {}).items()],
        ("hidden", r.get("hidden")),
    ])
    return 0


def cmd_ls(a) -> int:
    api = _api()
    if a.state and a.state.upper() not in ("QUEUED", "SCHEDULED", "RUNNING", *TERMINAL):
        raise CliError(f"--state {a.state!r}: choose one of QUEUED, SCHEDULED, RUNNING, {', '.join(TERMINAL)}", 2)
    owner = None if a.all_users or a.sweep else (a.user or api.get("/v1/whoami")["user"])
    state = a.state.upper() if a.state else (None if a.all or a.sweep else "active")
    page = api.get("/v1/jobs", owner=owner, state=state, sweep=a.sweep, limit=a.limit, cursor=a.cursor)
    rows = page["jobs"]
    if a.output != "table":
        _emit(page, a.output)
        return 0
    view = [dict(r, age=_ago(r.get("submitted_at"))) for r in rows]
    _emit(view, "table", [("ID", "id"), ("NAME", "name"), ("STATE", "state"), ("PRIORITY", "priority"),
                          ("OWNER", "owner"), ("AGE", "age"), ("TRIES", "attempts"), ("REASON", "reason")])
    if page.get("next"):
        print(f"(more: --cursor {page['next']})")
    return 0


def cmd_queue(a) -> int:
    q = _api().get("/v1/queue", limit=a.limit, **{"class": a.klass})
    if a.output != "table":
        _emit(q, a.output)
        return 0
    view = [dict(r, wait=_ago(r["submitted_at"]), resources=_res(r["resources"]), share=_share(r.get("share")))
            for r in q["jobs"]]
    _emit(view, "table", [("POS", "position"), ("ID", "id"), ("NAME", "name"), ("CLASS", "class"),
                          ("OWNER", "owner"), ("SHARE", "share"), ("WAIT", "wait"), ("RESOURCES", "resources"),
                          ("REASON", "reason")])
    counts = q["by_class"]
    summary = ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n)
    print(f"{q['total']} queued" + (f" ({summary})" if summary else ""))
    return 0


def _share(share: dict | None) -> str:
    """The fair share that ordered a queued job: whose, and its part of all recent usage."""
    return f"{share['key']} {share['fraction'] * 100:.0f}%" if share else ""


def _amounts(amounts: dict | None, only: dict | None = None) -> str:
    if amounts is None:
        return "-"
    from sentinels.domain.quantity import format_cpu, format_memory

    shown: dict[str, tuple[str, Callable[[int], str]]] = {
        "gpu": ("gpu", str), "cpu_millis": ("cpu", format_cpu), "memory_bytes": ("mem", format_memory),
        "jobs": ("jobs", str)}
    return " ".join(f"{label}={fmt(amounts[k])}" for k, (label, fmt) in shown.items()
                    if k in amounts and (only is None or k in only or amounts[k])) or "-"


def cmd_share(a) -> int:
    got = _api().get("/v1/share")
    if a.output != "table":
        _emit(got, a.output)
        return 0
    view = [{"who": r["name"] if r["kind"] == "team" else f"user {r['name']}",
             "usage": "" if r["usage"] is None else f"{r['usage']:.0f}",
             "share": "" if r["share"] is None else f"{r['share'] * 100:.0f}%",
             "holds": _amounts(r["holds"], r["nominal"] or {}), "nominal": _amounts(r["nominal"]),
             "borrowing": _amounts(r["borrowing_limit"]),
             "borrowed": _amounts({k: v for k, v in r["borrowed"].items() if v}) if r["borrowed"] else "-"}
            for r in got["rows"]]
    _emit(view, "table", [("TEAM", "who"), ("USAGE", "usage"), ("SHARE", "share"), ("HOLDS", "holds"),
                          ("QUOTA", "nominal"), ("MAY BORROW", "borrowing"), ("BORROWED", "borrowed")])
    fair = got["fair_share"]
    notes = [f"fair share by {fair['by']}" + (f", half-life {_human(fair['half_life_seconds'])}" if fair["by"] != "off" else ""),
             "quotas on" if got["quotas"] else "no quotas",
             f"preemption by {', '.join(got['preemption'])}" if got["preemption"] else "preemption off"]
    print("; ".join(notes))
    return 0


def _human(seconds: float) -> str:
    from sentinels.domain.duration import human

    return human(seconds)


def cmd_cancel(a) -> int:
    api = _api()
    failed, done = 0, []
    for target in a.job_ids:
        data = {"sweep": target} if target.startswith("sw-") else {"job": target}
        try:
            got = api.post_event(EVENTS["cancel"], data)
        except CliError as e:
            if e.message.startswith("cannot reach"):
                raise
            failed += 1
            print(f"sentinels: {target}: {e.message}", file=sys.stderr)
            continue
        done.append(got)
        if a.output != "table":
            continue
        if "sweep" in data:
            print(f"{target}: {len(got['jobs'])} job(s) cancelled or being cancelled")
        else:
            note = "cancel requested" if got.get("cancel_requested") and got["state"] != "CANCELLED" else got["state"]
            print(f"{target}: {note}")
    if a.output != "table":
        _emit(done, a.output)
    return 1 if failed else 0


def cmd_priority(a) -> int:
    got = _api().post_event(EVENTS["priority"], {"job": a.job_id, "priority": a.klass})
    print(f"{a.job_id}: {got['priority']}") if a.output == "table" else _emit(got, a.output)
    return 0


def cmd_history(a) -> int:
    rows = _api().get(f"/v1/jobs/{a.job_id}/history")["history"]
    _emit(rows, a.output, [("AT", "at"), ("FROM", "from"), ("TO", "to"), ("ATTEMPTS", "attempts"),
                           ("EXIT", "exit_code"), ("REASON", "reason")])
    return 0


def _notes(headers: dict) -> None:
    for note in filter(None, (headers.get("x-sentinels-note") or "").split(" | ")):
        print(f"sentinels: {note}", file=sys.stderr, flush=True)


def cmd_logs(a) -> int:
    out = sys.stdout
    if a.attempt is not None and a.build:
        raise CliError("--attempt and --build do not go together: a build has one log", 2)
    for line in _api().lines(f"/v1/jobs/{a.job_id}/logs", on_headers=_notes, tail=a.tail,
                             follow="true" if a.follow else None, build="true" if a.build else None,
                             since=a.since, attempt=a.attempt):
        out.write(line + "\n")
        if a.follow:
            out.flush()
    return 0


def cmd_top(a) -> int:
    from . import top

    path = f"/v1/jobs/{a.job_id}/usage" if a.job_id else "/v1/usage"
    return top.show(_api().get(path)["jobs"], a.job_id, a.output, _emit)


def cmd_whoami(a) -> int:
    who = _api().get("/v1/whoami")
    if a.output != "table":
        _emit(who, a.output)
    else:
        print(who["user"] + (f" (team {who['team']})" if who.get("team") else "") + f", role {who.get('role')}"
              + (", single-user stack" if who.get("single_user") else ""))
    return 0


def cmd_events(a) -> int:
    from . import operator

    return operator.cmd_events(a, _settings(), _emit)


def cmd_up(a) -> int:
    settings = _settings()
    from sentinels.domain.errors import ConfigError
    from sentinels.embedded import supervisor

    pid = supervisor.running_pid(settings)
    if pid:
        raise CliError(f"sentinels is already running (pid {pid}, home {settings.home}); `sentinels down` stops it")
    try:
        for note in supervisor.check_config(settings):
            print(f"sentinels: {note}", file=sys.stderr)
        if not a.detach:
            return supervisor.run_foreground(settings)
        pid = supervisor.start_background(settings)
    except ConfigError as e:
        raise CliError(f"up: {e.message}") from None
    ui = supervisor.running_info(settings).get("mlflow_ui")
    metrics = f"http://127.0.0.1:{settings.function_port(4)}/metrics"  # the exporter (sentinels.exporter)
    print(f"sentinels up (pid {pid}): submit at {settings.url}, JetStream at {settings.nats_url}, data in {settings.home}"
          + (f", MLflow UI at {ui}" if ui else "") + f", metrics at {metrics}")
    return 0


def cmd_down(a) -> int:
    settings = _settings()
    from sentinels.embedded import supervisor

    if not supervisor.stop_background(settings):
        raise CliError(f"sentinels is not running (home {settings.home})")
    print("sentinels: stopped")
    return 0


# --- the parser -------------------------------------------------------------------------
def _format(value: str) -> str:
    if value not in FORMATS:
        raise argparse.ArgumentTypeError(f"{value!r}: choose one of {', '.join(FORMATS)}")
    return value


def _job_id(value: str) -> str:
    from sentinels.domain.names import is_job_id

    if not is_job_id(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a job id (10 characters, a-z and 2-7)")
    return value


def _count(least: int):
    """An argparse type: a whole number of at least `least` (a count of rows, lines or an attempt)."""
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            n = None
        if n is None or n < least:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least {least}")
        return n
    return parse


def _output(p):
    p.add_argument("-o", "--output", default="table", type=_format, help="table, json or yaml")


class _Skipped:
    """Stands in for the parser of a command not being run: its arguments cost nothing."""

    def add_argument(self, *args, **kwargs) -> None:
        pass


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (`only`) just the command being run: building every
    subcommand's parser is a tenth of a command's start-up."""
    top = argparse.ArgumentParser(prog="sentinels", description="sentinels: a priority job queue for ML experiments.")
    # an explicit prog spares argparse a help formatter (and its terminal-size probe) up front
    sub = top.add_subparsers(dest="command_name", metavar="COMMAND", prog="sentinels")

    def command(name, fn, help_):
        if only is not None and name != only:
            return _Skipped()
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        return p

    p = command("submit", cmd_submit, "Push an experiment to the queue and print its job id.")
    p.add_argument("image", nargs="?", help="container image, e.g. ghcr.io/acme/resnet:1.4 (none with --dockerfile)")
    p.add_argument("command", nargs="*", help="after --: the command and its arguments")
    p.add_argument("-c", "--config", help="job spec YAML (flags override it)")
    p.add_argument("--name", help="DNS-1123 name (default: from the image)")
    p.add_argument("-p", "--priority", help="priority class, e.g. high")
    p.add_argument("--cpu", help="CPU request, e.g. 2 or 500m")
    p.add_argument("--memory", help="memory request, e.g. 16Gi")
    p.add_argument("--gpu", help="number of GPUs")
    p.add_argument("--data", help="data path under a data root, mounted read-only")
    p.add_argument("-e", "--env", action="append", help="KEY=VALUE, repeatable")
    p.add_argument("--param", action="append", help="k=v MLflow param, repeatable")
    p.add_argument("--experiment", help="MLflow experiment (default: name)")
    p.add_argument("--timeout", help="hard deadline, e.g. 2h")
    p.add_argument("--retries", type=_count(0), help="re-runs after the job's own failure")
    p.add_argument("--sweep", action="append", metavar="K=V1,V2", help="one job per combination of values "
                   "(repeatable: the cartesian product), each value given as param K")
    p.add_argument("--array", metavar="1-100", help="one job per index (range or list), in SENTINELS_ARRAY_INDEX")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends (exit 0 only if it succeeded)")
    p.add_argument("--dockerfile", help="build the image from this Dockerfile (path or http(s) URL); the job starts BUILDING")
    p.add_argument("--context", help="build context (directory or tar URL; default: the Dockerfile's directory)")
    _output(p)

    p = command("status", cmd_status, "State, reason, queue position, attempts, timings and links of one job.")
    p.add_argument("job_id", type=_job_id)
    _output(p)

    p = command("ls", cmd_ls, "Your queued and running jobs (--all for finished ones, --all-users for everyone's).")
    p.add_argument("-a", "--all", action="store_true", help="include finished jobs")
    p.add_argument("--state", help="only this state")
    p.add_argument("--user", help="only this user's jobs")
    p.add_argument("-A", "--all-users", action="store_true", help="every user's jobs")
    p.add_argument("--sweep", help="the members of one sweep or array (sw-...)")
    p.add_argument("-n", "--limit", type=_count(1), default=50, help="how many (newest first)")
    p.add_argument("--cursor", help="continue a listing (printed after a full page)")
    _output(p)

    p = command("queue", cmd_queue, "The next jobs to run, in order: position, class, wait time, resources.")
    p.add_argument("-n", "--limit", type=_count(1), default=50, help="how many to show")
    p.add_argument("--class", dest="klass", help="only this priority class")
    _output(p)

    p = command("share", cmd_share, "How teams share the cluster: each team's recent usage, what it holds, its quota, "
                "how much it may borrow and borrows now.")
    _output(p)

    p = command("cancel", cmd_cancel, "Cancel queued or running jobs, or every member of a sweep (sw-...).")
    p.add_argument("job_ids", nargs="+", metavar="ID", help="job ids or sweep ids")
    _output(p)

    p = command("priority", cmd_priority, "Move a queued job to another priority class (if your role allows it).")
    p.add_argument("job_id", type=_job_id)
    p.add_argument("klass", metavar="CLASS")
    _output(p)

    p = command("logs", cmd_logs, "The job's output (Elasticsearch when configured; else the local log file in the "
                "embedded default, pod logs on Kubernetes).")
    p.add_argument("job_id", type=_job_id)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("-n", "--tail", type=_count(0), help="only the last N lines")
    p.add_argument("--attempt", type=_count(1), metavar="N", help="the output of attempt N (default: the last)")
    p.add_argument("--build", action="store_true", help="the image build's output (a --dockerfile job)")
    p.add_argument("--since", help="only lines since a duration ago (10m, 2h) or an ISO time (needs Elasticsearch)")

    p = command("top", cmd_top, "Current and peak CPU, memory and GPU use of running jobs (or of one job).")
    p.add_argument("job_id", nargs="?", type=_job_id, help="one job, also after it ended (default: every running job)")
    _output(p)

    p = command("history", cmd_history, "Every state transition of a job.")
    p.add_argument("job_id", type=_job_id)
    _output(p)

    p = command("whoami", cmd_whoami, "Who the API takes you for (your token's user, team and role).")
    _output(p)

    p = command("events", cmd_events, "Dead letters: events no function accepted within the retry horizon "
                "(count, list, replay).")
    p.add_argument("--dead", action="store_true", help="list the events the broker gave up on")
    p.add_argument("--replay", metavar="SEQ|all", help="deliver a dead letter again (its SEQ, or all)")
    p.add_argument("-n", "--limit", type=_count(1), default=100, help="how many to list or replay")
    _output(p)

    p = command("up", cmd_up, "Start the embedded default: NATS JetStream, the functions, the router.")
    p.add_argument("-d", "--detach", action="store_true", help="run in the background")
    command("down", cmd_down, "Stop the embedded default started with `sentinels up -d`.")
    return top


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    after: list[str] = []
    if "--" in argv:  # everything after `--` is the job's command, options included
        cut = argv.index("--")
        argv, after = argv[:cut], argv[cut + 1:]
    p = parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args = p.parse_args(argv)
    if after:
        if getattr(args, "fn", None) is not cmd_submit:
            p.error("only submit takes a command after --")
        args.command = (args.command or []) + after
    if not getattr(args, "fn", None):
        p.print_help()
        sys.exit(2)
    try:
        sys.exit(args.fn(args))
    except CliError as e:
        print(f"sentinels: {e.message}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
