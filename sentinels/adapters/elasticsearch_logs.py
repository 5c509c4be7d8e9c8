"""`LogSource` over Elasticsearch: the lines Fluent Bit shipped, one document per line.

Fluent Bit's Lua filter (helm/sentinels/files/fluent-bit/sentinels.lua) lifts the pod
label `sentinels.io/job-id` to the top-level field `sentinels_job_id` (and the attempt
annotation to `sentinels_attempt`, a per-instance counter to `sentinels_seq`), so one term
query finds a job's lines; they come in time order, `sentinels_seq` breaking ties, a page
at a time with `search_after`. A tail is the newest lines, read backwards and turned
round. Any failure to answer is `Unavailable` with one line saying what happened, so the
chain (`logs.FallbackLogs`) reads the pod log API or the local file instead.

The official client is synchronous here (its async twin needs aiohttp); calls run in a
thread so the read API's event loop never waits on Elasticsearch.
"""

import asyncio
from typing import Optional

from ..domain.errors import Unavailable

DEFAULT_INDEX = "sentinels-logs-*"
PAGE = 1000
FIELDS = ["@timestamp", "log", "message", "sentinels_attempt"]


def _sort(order: str) -> list:
    return [{"@timestamp": {"order": order}}, {"sentinels_seq": {"order": order, "unmapped_type": "long"}}]


class ElasticsearchLogs:
    def __init__(self, url: str, index: str = DEFAULT_INDEX, api_key: Optional[str] = None, timeout: float = 5.0):
        from elasticsearch import Elasticsearch

        self.url, self.index = url.rstrip("/"), index or DEFAULT_INDEX
        self.es = Elasticsearch(self.url, api_key=api_key, request_timeout=timeout, max_retries=0,
                                retry_on_timeout=False)

    def describe(self) -> str:
        return f"Elasticsearch at {self.url}"

    @staticmethod
    def query(record: dict, since: Optional[str]) -> dict:
        must: list = [{"term": {"sentinels_job_id": record["id"]}}]
        if record.get("log_generation") is not None:  # `logs --attempt N`: the Job that run belonged to
            must.append({"term": {"sentinels_attempt": int(record["log_generation"])}})
        if since:
            must.append({"range": {"@timestamp": {"gte": since}}})
        return {"bool": {"filter": must}}

    def search(self, record: dict, since: Optional[str], size: int, order: str = "asc", after=None) -> list[dict]:
        """Hits of one page (blocking; the async methods call it in a thread)."""
        import elasticsearch

        try:
            resp = self.es.search(index=self.index, query=self.query(record, since), sort=_sort(order), size=size,
                                  search_after=after, source_includes=FIELDS, ignore_unavailable=True,
                                  allow_no_indices=True, track_total_hits=False)
        except elasticsearch.UnsupportedProductError:
            raise Unavailable(f"{self.url} answered, but it is not Elasticsearch") from None
        except elasticsearch.NotFoundError:  # no index yet: nothing shipped so far
            return []
        except elasticsearch.ApiError as e:
            raise Unavailable(f"Elasticsearch at {self.url} answered {e.status_code} ({_reason(e)})") from None
        except (elasticsearch.ConnectionError, elasticsearch.TransportError) as e:
            raise Unavailable(f"Elasticsearch at {self.url} is unreachable ({type(e).__name__})") from None
        return (resp.get("hits") or {}).get("hits") or []

    async def lines(self, record, tail, since=None, notes=None):
        if tail == 0:
            return [], (None, since)
        if tail is None:
            hits = await asyncio.to_thread(self.search, record, since, PAGE)
        else:
            hits = list(reversed(await asyncio.to_thread(self.search, record, since, tail, "desc")))
        return [line_of(h) for h in hits], (hits[-1].get("sort") if hits else None, since)

    async def more(self, record, position):
        after, since = position if isinstance(position, tuple) else (None, None)
        hits = await asyncio.to_thread(self.search, record, since, PAGE, "asc", after)
        return [line_of(h) for h in hits], (hits[-1].get("sort") if hits else after, since)


def line_of(hit: dict) -> str:
    source = hit.get("_source") or {}
    text = source.get("log")
    if text is None:
        text = source.get("message", "")
    return str(text).rstrip("\n")


def _reason(e) -> str:
    body = e.body if isinstance(getattr(e, "body", None), dict) else {}
    err = body.get("error")
    if isinstance(err, dict):
        return str(err.get("reason") or err.get("type") or e.message)[:200]
    return str(err or e.message)[:200]
