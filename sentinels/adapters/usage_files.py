"""`UsageSource` on one machine: the usage the local executor's sampler writes per job.

The sampler (`embedded.usage`) writes `$SENTINELS_HOME/jobs/<id>/usage.json` every few
seconds while a job runs and once more at its end, so the read API only reads small files
(`sentinels top` stays fast, and the submit function never walks process trees).
"""

import asyncio
import json
import os
from pathlib import Path
from typing import Optional

from ..domain.usage import USAGE_FILE


class UsageFiles:
    def __init__(self, jobs_dir: Path):
        self.jobs_dir = Path(jobs_dir)

    def _read(self, job_id: Optional[str]) -> list[dict]:
        names = [job_id] if job_id else (sorted(os.listdir(self.jobs_dir)) if self.jobs_dir.is_dir() else [])
        rows = []
        for name in names:
            try:
                doc = json.loads((self.jobs_dir / name / USAGE_FILE).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and (job_id or doc.get("running")):
                doc.pop("pids", None)
                rows.append(doc)
        return rows

    async def usage(self, job_id: Optional[str]) -> list[dict]:
        return await asyncio.to_thread(self._read, job_id)
