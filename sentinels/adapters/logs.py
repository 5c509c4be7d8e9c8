"""`LogSource` adapters: the local executor's per-job log file, the cluster's pod log API,
and the chain that asks Elasticsearch first and falls back to one of those.

The file is read from its end for a tail (never read whole), and followed by offset.
Pod logs have no offset in the API, so following re-reads and skips what was sent.
Neither knows when a line was written, so `since` is a note there, not a filter.
"""

import asyncio
import logging
from pathlib import Path

from .. import logfiles

log = logging.getLogger("sentinels.logs")

WHOLE_FILE = 1 << 62  # no byte cap: `logs` without -n gets every line


def tail_lines(path: Path, n: int | None) -> tuple[list[str], int]:
    """The last `n` lines of a file (all when None) and its size, read backwards from its end."""
    try:
        return logfiles.tail(path, n, WHOLE_FILE)
    except FileNotFoundError:
        return [], 0


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


def _no_times(since, notes, where: str) -> None:
    if since and notes is not None:
        notes.append(f"--since needs Elasticsearch ({where} has no time per line): showing every line")


class LocalLogs:
    """The embedded default: `$SENTINELS_HOME/jobs/<id>/log`, written by the local executor
    (`attempt-<n>.log` per attempt, `log` links to the current one)."""

    def __init__(self, jobs_dir: Path):
        self.jobs_dir = Path(jobs_dir)

    def describe(self) -> str:
        return "the local log file"

    def path(self, record: dict) -> Path:
        return self.jobs_dir / record["id"] / (record.get("log_file") or "log")  # build.log for an image build

    async def lines(self, record, tail, since=None, notes=None):
        _no_times(since, notes, "the local log file")
        return await asyncio.to_thread(tail_lines, self.path(record), tail)

    async def more(self, record, position):
        return await asyncio.to_thread(read_from, self.path(record), int(position or 0))


class PodLogs:
    """Kubernetes: the newest pod's log through the cluster port."""

    def __init__(self, cluster):
        self.cluster = cluster

    def describe(self) -> str:
        return "the pod log API"

    async def lines(self, record, tail, since=None, notes=None):
        _no_times(since, notes, "pod logs")
        got = await self.cluster.logs(record, tail)
        total = len(await self.cluster.logs(record, None)) if tail else len(got)
        return got, total

    async def more(self, record, position):
        got = await self.cluster.logs(record, None)
        return got[int(position or 0):], len(got)


class FallbackLogs:
    """Elasticsearch first, then `fallback` (the local file or pod logs).

    Elasticsearch unreachable or answering an error: one note naming it and what is read
    instead. Elasticsearch answering with nothing yet (the shipper lags, or the job never
    ran where Fluent Bit collects): the fallback answers. The position remembers which one
    answered, so following stays with it.
    """

    def __init__(self, first, fallback):
        self.sources = (first, fallback)

    async def lines(self, record, tail, since=None, notes=None):
        from ..domain.errors import Unavailable

        first, fallback = self.sources
        try:
            got, position = await first.lines(record, tail, since, notes)
            if got:
                return got, (0, position, since, False)
        except Unavailable as e:
            if notes is not None:
                notes.append(f"{e.message}; reading {fallback.describe()} instead")
        got, position = await fallback.lines(record, tail, since, notes)
        return got, (1, position, since, not got)

    async def more(self, record, position):
        """What follows. While neither source had a line, Elasticsearch is asked again first:
        a followed job's first lines may arrive there."""
        from ..domain.errors import Unavailable

        which, inner, since, empty = position
        if empty:
            try:
                got, first_position = await self.sources[0].lines(record, None, since)
                if got:
                    return got, (0, first_position, since, False)
            except Unavailable:
                pass
        try:
            got, inner = await self.sources[which].more(record, inner)
        except Unavailable as e:  # Elasticsearch went away mid-read: nothing now, the same place next time
            log.warning("job %s: %s", record.get("id"), e.message)
            return [], position
        return got, (which, inner, since, empty and not got)
