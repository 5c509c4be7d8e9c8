"""Runs one attempt of a local job and writes how it ended to a result file.

The executor starts `python -I runner.py RESULT -- COMMAND ARGS...` as the leader of a new
process group, so the job outlives an executor restart; the result file then tells the
next executor the exit code it could not wait for. SIGTERM/SIGINT reach the whole group:
the runner only waits for its child and records the code (128 + signal, like a shell).
Deliberately standalone (stdlib only) so it starts fast and never imports the project.
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


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: runner.py RESULT_FILE -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    result, command = argv[0], argv[2:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)  # a handler, not SIG_IGN: the child must not inherit "ignore"
    try:
        child = subprocess.Popen(command)
    except OSError as e:
        print(f"sentinels: cannot run {command[0]!r}: {e.strerror}", file=sys.stderr, flush=True)
        code = 127 if isinstance(e, FileNotFoundError) else 126
    else:
        rc = child.wait()  # a signal to the runner interrupts nothing: the wait is retried
        code = rc if rc >= 0 else 128 - rc
    _write(result, code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
