"""Children that die with the process that started them (Linux parent-death signal).

`sentinels up` starts nats-server, the functions, the router and the executor. If the
supervisor is killed with SIGKILL it cannot stop them, and the next `up` would report
success over orphans still holding the ports. `die_with_parent` (a `preexec_fn`) asks
the kernel to send the child SIGTERM when its parent dies. Jobs are not started this
way: they outlive an executor restart on purpose.
"""

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


def preexec(sig: int = signal.SIGTERM):
    """A `preexec_fn` for Popen: the child gets `sig` when the parent dies (None off Linux)."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm
