"""Runs one attempt of a local job and writes how it ended to a result file.

The executor starts `python -I runner.py RESULT [--as USER] -- COMMAND ARGS...` as the
leader of a new process group, so the job outlives an executor restart; the result file
then tells the next executor the exit code it could not wait for.

The runner is a child subreaper (Linux): a process of the job that leaves the group
(`setsid`) and loses its parent is re-parented to the runner, not to init, so it stays
in the job's process tree. A SIGTERM/SIGINT to the runner is passed to that whole tree;
when the job's main process ends, whatever it left behind is killed (as in a pod). With
`--as USER` (the executor runs as root) the command runs as that unprivileged user while
the runner keeps the rights to write the result. With `--log FILE MAX_BYTES` the runner
copies the job's output into FILE itself and rotates it at MAX_BYTES (one older part,
FILE.1), so a chatty job cannot fill the disk. Deliberately standalone (stdlib only) so
it starts fast and never imports the project.
"""

import json
import os
import signal
import subprocess
import sys
import time


def _write(path: str, code: int) -> None:
    finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"exit_code": code, "finished": finished}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


PR_SET_CHILD_SUBREAPER = 36


def _subreaper() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the process group is all we have
        pass


def descendants(root: int) -> list[int]:
    """Every live process below `root`, from /proc (empty where there is no /proc)."""
    parent_of = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
            parent_of[int(entry)] = int(text[text.rfind(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parent_of.items() if pp == pid]
        found += kids
        todo += kids
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap_leftovers() -> None:
    """Kill and reap what the job left behind (double-forked or setsid daemons)."""
    for _ in range(50):
        left = descendants(os.getpid())
        if not left:
            return
        _signal_all(left, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        time.sleep(0.02)


def _drop_to(user: str) -> dict:
    import pwd

    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


class CappedLog:
    """The job's output into `path`, at most `cap` bytes per part: a full part becomes
    `path.1` (replacing the previous one) and writing starts again in `path`."""

    def __init__(self, path: str, cap: int):
        self.path, self.cap = path, cap
        self.out = open(path, "ab", buffering=0)

    def write(self, chunk: bytes) -> None:
        while chunk:
            room = self.cap - self.out.tell()
            if room <= 0:
                self.out.close()
                os.replace(self.path, self.path + ".1")
                self.out = open(self.path, "ab", buffering=0)
                self.out.write(b"[sentinels: the log reached its size cap; the part before is in "
                               + os.path.basename(self.path + ".1").encode() + b"]\n")
                continue
            self.out.write(chunk[:room])
            chunk = chunk[room:]


def _copy_output(child, log: CappedLog) -> int:
    """Copy the child's output into the log until it exits; return its exit status.

    A daemon the job left behind may keep the pipe open: once the main process is gone,
    only what is already in the pipe is copied (the leftovers are then killed)."""
    import selectors

    fd = child.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    while True:
        ready = sel.select(timeout=0.2)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            log.write(chunk)
        elif child.poll() is not None:
            break
    rc = child.wait()
    os.set_blocking(fd, False)
    try:
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            log.write(chunk)
    except BlockingIOError:
        pass
    return rc


def main(argv: list[str]) -> int:
    result, rest = (argv[0], argv[1:]) if argv else ("", [])
    run_as, log_path, log_cap = None, None, 0
    while rest[:1] in (["--as"], ["--log"]) and len(rest) >= 2:
        if rest[0] == "--as":
            run_as, rest = rest[1], rest[2:]
        elif len(rest) >= 3 and rest[2].isdigit():
            log_path, log_cap, rest = rest[1], int(rest[2]), rest[3:]
        else:
            break
    if not result or len(rest) < 2 or rest[0] != "--":
        print("usage: runner.py RESULT_FILE [--as USER] [--log FILE MAX_BYTES] -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    command = rest[1:]
    _subreaper()
    child = None

    def forward(sig, _frame):  # to the whole tree, including processes that left the group
        _signal_all(descendants(os.getpid()), sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)  # a handler, not SIG_IGN: the child must not inherit "ignore"
    how: dict = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT} if log_path else {}
    try:
        how.update(_drop_to(run_as) if run_as else {})
        child = subprocess.Popen(command, **how)
    except (OSError, KeyError) as e:
        why = getattr(e, "strerror", None) or f"no user {run_as!r}"
        print(f"sentinels: cannot run {command[0]!r}: {why}", file=sys.stderr, flush=True)
        code = 127 if isinstance(e, FileNotFoundError) else 126
    else:
        # a signal to the runner interrupts nothing: reads and the wait are retried
        rc = _copy_output(child, CappedLog(log_path, log_cap)) if log_path else child.wait()
        code = rc if rc >= 0 else 128 - rc
    _reap_leftovers()
    _write(result, code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
