"""Event sinks: where functions send follow-up CloudEvents.

On Knative, `K_SINK` (set by a SinkBinding) or `SENTINELS_BROKER_URL` names the broker
ingress and events go there over HTTP in binary mode. In the embedded default they go to
the SENTINELS_EVENTS stream, which the local router delivers to the functions.
"""

import json
import os


class MemorySink:
    """In-memory sink: keeps the events given, deduplicated by id like the real ones."""

    def __init__(self):
        self.events: list[dict] = []
        self._ids: set[str] = set()

    async def emit(self, event: dict) -> None:
        if event["id"] not in self._ids:
            self._ids.add(event["id"])
            self.events.append(event)


class HttpSink:
    """POST each event to a broker ingress in binary content mode."""

    def __init__(self, url: str):
        self.url = url
        self._client = None

    async def emit(self, event: dict) -> None:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10)
        headers = {f"ce-{k}": str(v) for k, v in event.items() if k not in ("data", "datacontenttype")}
        headers["content-type"] = event.get("datacontenttype", "application/json")
        resp = await self._client.post(self.url, content=json.dumps(event["data"]).encode(), headers=headers)
        resp.raise_for_status()


def sink_for(js):
    url = os.environ.get("K_SINK") or os.environ.get("SENTINELS_BROKER_URL")
    if url:
        return HttpSink(url)
    from .adapters.jetstream import JetStreamSink

    return JetStreamSink(js)
