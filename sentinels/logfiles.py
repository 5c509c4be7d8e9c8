"""Reading the end of a job's log without reading the whole file.

A job may write gigabytes; `sentinels logs -n 5` and the executor's `logs` verb read
backwards from the end in blocks until they have the lines asked for (and never more
than `max_bytes`), so memory stays flat whatever the size of the log.
"""

import os
from pathlib import Path
from typing import Optional

BLOCK = 64 * 1024


def tail(path: Path, lines: Optional[int], max_bytes: int) -> tuple[list[str], int]:
    """The last `lines` lines (all that fit in `max_bytes` when None) and the file's size."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        start, data = size, b""
        want = None if lines is None else lines + 1  # one more: the first may be cut
        while start > 0 and size - start < max_bytes and (want is None or data.count(b"\n") < want):
            step = min(BLOCK, start, max_bytes - (size - start))
            start -= step
            f.seek(start)
            data = f.read(step) + data
    text = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and text:
        text = text[1:]  # the first one is cut
    if lines is not None:
        text = text[-lines:] if lines else []
    return text, size
