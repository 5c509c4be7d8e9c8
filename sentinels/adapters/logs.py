"""`LogSource` adapters: the local executor's per-job log file and the cluster's pod log API.

The file is read from its end for a tail (never read whole), and followed by offset.
Pod logs have no offset in the API, so following re-reads and skips what was sent.
"""

import asyncio
import os
from pathlib import Path

BLOCK = 64 * 1024


def tail_lines(path: Path, n: int | None) -> tuple[list[str], int]:
    """The last `n` lines of a file (all when None) and the size read up to, reading backwards."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return [], 0
    with f:
        end = f.seek(0, os.SEEK_END)
        if n is None:
            f.seek(0)
            data = f.read(end)
        else:
            data, pos = b"", end
            while pos > 0 and data.count(b"\n") <= n:
                step = min(BLOCK, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
        lines = data.decode(errors="replace").splitlines()
        return (lines[-n:] if n is not None else lines) if n != 0 else [], end


def read_from(path: Path, offset: int) -> tuple[list[str], int]:
    """Complete lines written after `offset`, and the offset after them."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    cut = data.rfind(b"\n") + 1
    return data[:cut].decode(errors="replace").splitlines(), offset + cut


class LocalLogs:
    """The embedded default: `$SENTINELS_HOME/jobs/<id>/log`, written by the local executor."""

    def __init__(self, jobs_dir: Path):
        self.jobs_dir = Path(jobs_dir)

    def path(self, record: dict) -> Path:
        return self.jobs_dir / record["id"] / (record.get("log_file") or "log")  # build.log for an image build

    async def lines(self, record, tail):
        return await asyncio.to_thread(tail_lines, self.path(record), tail)

    async def more(self, record, position):
        return await asyncio.to_thread(read_from, self.path(record), int(position or 0))


class PodLogs:
    """Kubernetes: the newest pod's log through the cluster port."""

    def __init__(self, cluster):
        self.cluster = cluster

    async def lines(self, record, tail):
        got = await self.cluster.logs(record, tail)
        total = len(await self.cluster.logs(record, None)) if tail else len(got)
        return got, total

    async def more(self, record, position):
        got = await self.cluster.logs(record, None)
        return got[int(position or 0):], len(got)
