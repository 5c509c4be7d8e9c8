"""A stand-in for Knative's ApiServerSource (Resource mode) in front of the embedded router.

It reads the resources and label selectors from `knative/apiserversource.yaml`, watches
them over HTTP on the API server (list+watch, resumed from the last resourceVersion,
a full re-list after 410 Gone), and turns every change into the CloudEvent the real
source sends: type `dev.knative.apiserver.resource.add|update|delete`, source the API
server's URL, subject `/apis/<apiVersion>/namespaces/<ns>/<plural>/<name>`, extensions
`kind`, `name`, `namespace`, data the whole object with its status. The events go into
SENTINELS_EVENTS (the embedded broker), so the four functions run unchanged.

`python -m tests.simcluster.source --api URL --nats URL [--namespace NS]` runs it alone.
"""

import argparse
import asyncio
import json
import logging
import uuid
from pathlib import Path

import yaml

from sentinels.adapters import jetstream
from sentinels.clock import now_iso
from sentinels.domain import events

log = logging.getLogger("simcluster.source")
MANIFEST = Path(__file__).resolve().parents[2] / "knative" / "apiserversource.yaml"
TYPES = {"ADDED": events.APISERVER_ADD, "MODIFIED": events.APISERVER_UPDATE, "DELETED": events.APISERVER_DELETE}
PLURALS = {"Job": "jobs", "Pod": "pods", "Node": "nodes"}
CLUSTER_SCOPED = {"Node"}


def watched(manifest: Path = MANIFEST) -> list[tuple[str, str, str]]:
    """[(apiVersion, kind, label selector)] from the ApiServerSource manifest."""
    doc = next(d for d in yaml.safe_load_all(manifest.read_text()) if d and d.get("kind") == "ApiServerSource")
    out = []
    for res in doc["spec"]["resources"]:
        labels = ((res.get("selector") or {}).get("matchLabels") or {})
        out.append((res["apiVersion"], res["kind"], ",".join(f"{k}={v}" for k, v in sorted(labels.items()))))
    return out


def subject(api_version: str, kind: str, meta: dict) -> str:
    where = "" if kind in CLUSTER_SCOPED else f"/namespaces/{meta.get('namespace')}"
    return f"/apis/{api_version}{where}/{PLURALS[kind]}/{meta.get('name')}"


def cloud_event(kind_of_change: str, api_version: str, kind: str, obj: dict, source: str) -> dict:
    meta = obj.get("metadata") or {}
    obj = {"apiVersion": api_version, "kind": kind, **obj}
    event = events.envelope(TYPES[kind_of_change], source, str(uuid.uuid4()), obj, now_iso(),
                            subject(api_version, kind, meta))
    event.update(kind=kind, name=meta.get("name"))
    if meta.get("namespace"):
        event["namespace"] = meta["namespace"]
    return event


class ApiServerSource:
    def __init__(self, api_url: str, sink, namespace: str, manifest: Path = MANIFEST):
        self.api_url = api_url.rstrip("/")
        self.sink = sink
        self.namespace = namespace
        self.resources = watched(manifest)
        self.sent = 0
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self.watch(*r)) for r in self.resources]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def _path(self, api_version: str, kind: str) -> str:
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        where = "" if kind in CLUSTER_SCOPED else f"/namespaces/{self.namespace}"
        return f"{self.api_url}{base}{where}/{PLURALS[kind]}"

    async def watch(self, api_version: str, kind: str, selector: str) -> None:
        import httpx

        url, rv = self._path(api_version, kind), None
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as http:
            while True:
                params = {"watch": "true", "timeoutSeconds": "300"}
                if selector:
                    params["labelSelector"] = selector
                if rv:
                    params["resourceVersion"] = rv
                try:
                    async with http.stream("GET", url, params=params) as resp:
                        if resp.status_code == 410:
                            rv = None  # too old: start again from the current state
                            continue
                        resp.raise_for_status()
                        async for line in resp.aiter_lines():
                            if not line.strip():
                                continue
                            change = json.loads(line)
                            obj = change.get("object") or {}
                            if change.get("type") == "ERROR":
                                rv = None if obj.get("code") == 410 else rv
                                break
                            if change.get("type") not in TYPES:
                                continue
                            rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                            await self._emit(cloud_event(change["type"], api_version, kind, obj, self.api_url))
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # the API server away or failing: watch again shortly
                    log.info("watch %s: %s; retrying", kind, type(e).__name__)
                    await asyncio.sleep(0.5)

    async def _emit(self, event: dict) -> None:
        while True:
            try:
                await self.sink.emit(event)
                self.sent += 1
                return
            except Exception as e:  # NATS away: hold the watch (the real source retries too)
                log.warning("could not send %s: %s", event["type"], type(e).__name__)
                await asyncio.sleep(0.5)


async def _main(args) -> None:
    nc = await jetstream.connect(args.nats, "simcluster-source", reconnect=True)
    js = nc.jetstream(timeout=5)
    await jetstream.ensure(js)
    source = ApiServerSource(args.api, jetstream.JetStreamSink(js), args.namespace)
    source.start()
    await asyncio.gather(*source.tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", required=True)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--namespace", default="sentinels")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s source %(levelname)s %(message)s")
    import uvloop

    uvloop.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
