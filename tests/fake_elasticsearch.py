"""A local HTTP server speaking the part of Elasticsearch's API that `sentinels logs` uses,
for the real `elasticsearch` client: `GET /` (product check: it sends
`X-Elastic-Product: Elasticsearch`) and `POST /<index>/_search` with a bool filter of
`term`/`range` clauses, `sort` on `@timestamp` then `sentinels_seq` (ascending or descending), `size`,
`search_after` and `_source_includes`. No Elasticsearch server can run here (none in Debian or PyPI).

Documents are what Fluent Bit ships after the sentinels Lua filter. `mode` makes it
misbehave: "error" (500), "auth" (401), "not-elastic" (no product header), "no-index"."""

import fnmatch
import json
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _millis(ts: str) -> int:
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


class FakeElasticsearch:
    def __init__(self):
        self.docs: list[tuple[str, dict]] = []  # (index, source)
        self.mode = "ok"
        self.searches: list[dict] = []
        self.lock = threading.Lock()

    def add(self, index: str, source: dict) -> None:
        with self.lock:
            self.docs.append((index, source))

    # --- the search itself ----------------------------------------------------------
    def _matches(self, src: dict, clauses: list) -> bool:
        for c in clauses:
            (kind, body), = c.items()
            (field, want), = body.items()
            have = src.get(field)
            if kind == "term" and have != want:
                return False
            if kind == "range":
                if have is None or ("gte" in want and _millis(have) < _millis(want["gte"])):
                    return False
        return True

    def search(self, pattern: str, body: dict, fields: list | None = None) -> tuple[int, dict]:
        self.searches.append(body)
        clauses = body.get("query", {}).get("bool", {}).get("filter", [])
        with self.lock:
            docs = [(i, s) for i, s in self.docs
                    if any(fnmatch.fnmatch(i, p) for p in pattern.split(",")) and self._matches(s, clauses)]
        keyed = sorted(((_millis(s["@timestamp"]), s.get("sentinels_seq", 0)), n, i, s) for n, (i, s) in enumerate(docs))
        desc = (body.get("sort") or [{}])[0].get("@timestamp", {}).get("order") == "desc"
        if desc:
            keyed.reverse()
        after = body.get("search_after")
        if after:
            keyed = [k for k in keyed if (list(k[0]) < list(after) if desc else list(k[0]) > list(after))]
        size = body.get("size", 10)
        hits = [{"_index": i, "_id": str(n), "_score": None,
                 "_source": {f: s[f] for f in (fields or s) if f in s}, "sort": list(key)}
                for key, n, i, s in keyed[:size]]
        return 200, {"took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                     "hits": {"max_score": None, "hits": hits}}

    # --- HTTP -------------------------------------------------------------------------
    def handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/vnd.elasticsearch+json;compatible-with=9")
                self.send_header("content-length", str(len(data)))
                if fake.mode != "not-elastic":
                    self.send_header("X-Elastic-Product", "Elasticsearch")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.answer(200, {"name": "fake", "cluster_name": "sentinels-test", "version": {"number": "9.1.0"},
                                  "tagline": "You Know, for Search"})

            def do_POST(self):
                from urllib.parse import parse_qs, urlsplit

                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                url = urlsplit(self.path)
                path, params = url.path.strip("/"), parse_qs(url.query)
                fields = ",".join(params.get("_source_includes", [])).split(",") if "_source_includes" in params else None
                if fake.mode == "error":
                    return self.answer(500, {"error": {"type": "search_phase_execution_exception",
                                                       "reason": "all shards failed"}, "status": 500})
                if fake.mode == "auth":
                    return self.answer(401, {"error": {"type": "security_exception",
                                                       "reason": "missing authentication credentials"}, "status": 401})
                if fake.mode == "no-index":
                    return self.answer(404, {"error": {"type": "index_not_found_exception",
                                                       "reason": "no such index [sentinels-logs-*]"}, "status": 404})
                if not path.endswith("/_search"):
                    return self.answer(400, {"error": {"type": "illegal_argument_exception", "reason": path}})
                self.answer(*fake.search(path[: -len("/_search")], body, fields))

        return Handler

    def __enter__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
