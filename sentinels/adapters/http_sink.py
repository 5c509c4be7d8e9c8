"""`EventSink` for Knative: POST each follow-up CloudEvent to the broker ingress.

`K_SINK` (set by a SinkBinding) or `SENTINELS_BROKER_URL` names the ingress (see
`wiring.sink_for`); events go in binary content mode. In the embedded default they go to
the SENTINELS_EVENTS stream instead (`jetstream.JetStreamSink`).
"""

import json
from typing import Any

from ..domain.events import binary_headers


class HttpSink:
    """POST each event to a broker ingress in binary content mode."""

    def __init__(self, url: str):
        self.url = url
        self._client: Any = None  # an httpx.AsyncClient, made on first use

    async def emit(self, event: dict) -> None:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10)
        resp = await self._client.post(self.url, content=json.dumps(event["data"]).encode(),
                                       headers=binary_headers(event))
        resp.raise_for_status()
