"""How a child without an HTTP port tells `sentinels up` that it serves.

The functions answer on their ports; the router and the executor only talk NATS. Once
they have subscribed (the router to every trigger, the executor to its verbs) they write
`$SENTINELS_HOME/run/<name>.ready` holding their pid, and `up` counts a component as
started only when the file names the process it started (a stale file from an earlier
run never does).
"""

import os
from pathlib import Path


def path(home: Path, name: str) -> Path:
    return Path(home) / "run" / f"{name}.ready"


def mark(home: Path, name: str) -> None:
    """Say that this process (`name`) serves; written whole (rename), so never read half."""
    target = path(home, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, target)


def clear(home: Path, name: str) -> None:
    path(home, name).unlink(missing_ok=True)


def ready(home: Path, name: str, pid: int) -> bool:
    try:
        return path(home, name).read_text().strip() == str(pid)
    except OSError:
        return False
