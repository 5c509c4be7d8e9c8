"""`Cluster` for the embedded default: this machine, through the local executor over NATS.

The executor (`python -m sentinels.embedded.executor`) answers core NATS requests with
JSON on `sentinels.local.<verb>`; an error answer is {"error": msg, "status": http code}.
No executor answering is `Unavailable`, so the scheduler retries later instead of failing
the job.
"""

import json
from typing import Optional

from ..domain import errors
from ..domain.names import LOCAL_SUBJECT
from ..domain.placement import Node

SUBJECT = LOCAL_SUBJECT
VERBS = ("nodes", "launch", "stop", "active", "logs", "build", "jobs")
JOBS_PER_REQUEST = 200  # Job objects per reply, well under NATS max_payload
_BY_STATUS = {400: errors.InvalidSpec, 404: errors.NotFound, 409: errors.Conflict, 503: errors.Unavailable}


def node_from_dict(raw: dict) -> Node:
    return Node(**{**raw, "labels": dict(raw.get("labels") or {}),
                   "taints": tuple(tuple(t) for t in raw.get("taints") or ())})


class LocalCluster:
    def __init__(self, nc, timeout: float = 5.0):
        self.nc = nc
        self.timeout = timeout

    async def _ask(self, verb: str, body: Optional[dict] = None) -> dict:
        from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

        subject = SUBJECT.format(verb)
        try:
            msg = await self.nc.request(subject, json.dumps(body or {}).encode(), timeout=self.timeout)
        except (NoRespondersError, NatsTimeout) as e:
            why = "nobody listens" if isinstance(e, NoRespondersError) else f"no answer within {self.timeout:g} s"
            raise errors.Unavailable(f"local executor not answering on {subject} ({why}); "
                                     "is `sentinels up` running?") from None
        try:
            reply = json.loads(msg.data)
        except ValueError:
            raise errors.Unavailable(f"local executor sent a malformed answer on {subject}") from None
        if isinstance(reply, dict) and "error" in reply:
            status = reply.get("status")
            kind = _BY_STATUS.get(status, errors.SentinelsError) if isinstance(status, int) else errors.SentinelsError
            raise kind(str(reply["error"]), reply.get("field"))
        return reply

    async def nodes(self) -> list[Node]:
        return [node_from_dict(n) for n in (await self._ask("nodes"))["nodes"]]

    async def launch(self, record: dict, extra_env: dict) -> None:
        await self._ask("launch", {"record": record, "extra_env": dict(extra_env or {})})

    async def stop(self, record: dict, why: Optional[str] = None) -> None:
        await self._ask("stop", {"job": record["id"], **({"why": why} if why else {})})

    async def active(self) -> dict[str, str]:
        return dict((await self._ask("active"))["active"])

    async def build(self, record: dict) -> None:
        await self._ask("build", {"record": record})

    async def last_end(self, record: dict) -> Optional[dict]:
        """None: the executor reports a job's pod before the Job itself, so the pod's end is known."""
        return None

    async def logs(self, record: dict, tail: Optional[int] = None) -> list[str]:
        return list((await self._ask("logs", {"job": record["id"], "tail": tail}))["lines"])

    async def jobs(self, job_ids: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        ids = list(job_ids)
        for i in range(0, len(ids), JOBS_PER_REQUEST):
            out.update((await self._ask("jobs", {"ids": ids[i:i + JOBS_PER_REQUEST]}))["jobs"])
        return out
