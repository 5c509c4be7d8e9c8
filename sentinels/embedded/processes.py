"""Process plumbing for the local executor: start a job attempt, tell whether it still runs,
signal its process group, read how it ended.

Every attempt runs under `runner.py` as the leader of its own session, so it survives an
executor restart. A pid is trusted only together with the process start time recorded
when it was started (pids are reused); a zombie counts as ended.
"""

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .runner import descendants

RUNNER = Path(__file__).with_name("runner.py")


@dataclass
class Started:
    pid: int
    pgid: int
    proc_start: Optional[int]  # start time in clock ticks since boot (Linux), None elsewhere
    popen: Optional[subprocess.Popen] = None  # only for processes this executor started


def _stat_fields(pid: int) -> Optional[list[str]]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()  # fields from "state" on; the name may hold spaces


def proc_start(pid: int) -> Optional[int]:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22 of stat, counted from "state" (field 3)


def find_by_argument(argument: str) -> Optional[int]:
    """The pid of a live process with `argument` on its command line (Linux /proc), else None."""
    wanted = argument.encode()
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if wanted in entry.read_bytes().split(b"\0"):
                pid = int(entry.parent.name)
                if alive(pid, None):
                    return pid
        except (OSError, ValueError):
            continue
    return None


def alive(pid: int, started: Optional[int]) -> bool:
    """True when `pid` runs and is the process that was started at `started`."""
    if not pid:
        return False
    fields = _stat_fields(pid)
    if fields is not None:
        return fields[0] not in ("Z", "X") and (started is None or int(fields[19]) == started)
    if Path("/proc/self/stat").exists():
        return False  # Linux and no /proc entry: gone
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def spawn(command: list[str], *, env: dict, cwd: Path, log: Path, result: Path, run_as: Optional[str] = None,
          log_max: Optional[int] = None) -> Started:
    """Start `command` under the runner in a new session; stdout and stderr go to `log`
    (rotated at `log_max` bytes by the runner). With `run_as`, the command runs as that
    user (the runner stays with the executor's)."""
    who = (["--as", run_as] if run_as else []) + (["--log", str(log), str(int(log_max))] if log_max else [])
    with open(log, "ab", buffering=0) as out:
        popen = subprocess.Popen([sys.executable, "-I", str(RUNNER), str(result), *who, "--", *command],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 env=env, cwd=cwd, start_new_session=True, close_fds=True)
    return Started(pid=popen.pid, pgid=popen.pid, proc_start=proc_start(popen.pid), popen=popen)


def signal_tree(pid: int, pgid: int, sig: int = signal.SIGTERM) -> bool:
    """Signal the job's whole process tree (also what left its group with setsid: the runner
    is a subreaper, so orphans of the job stay below it), then its group."""
    for child in descendants(pid):
        try:
            os.kill(child, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return signal_group(pgid, sig)


def signal_group(pgid: int, sig: int = signal.SIGTERM) -> bool:
    """Signal a whole process group; False if it is already gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def exit_code(popen: Optional[subprocess.Popen]) -> Optional[int]:
    """The exit status of a child this executor started (reaping it), else None."""
    if popen is None:
        return None
    rc = popen.poll()
    if rc is None:
        return None
    return rc if rc >= 0 else 128 - rc


def read_result(path: Path) -> Optional[dict]:
    """What the runner wrote when its command ended: {"exit_code", "finished"}, or None."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("exit_code"), int):
        return None
    return data
