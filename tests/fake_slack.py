"""A local HTTP server that answers like Slack's Web API and an incoming webhook, for the alert tests.

It speaks the wire format the real `slack_sdk` clients use: `POST /api/auth.test` and
`POST /api/chat.postMessage` with a bearer token (JSON or form body) answering
`{"ok": true, ...}` or `{"ok": false, "error": ...}` with HTTP 200, `POST /hooks/...`
answering `ok`, and HTTP 429 with `Retry-After` when told to rate-limit. Messages whose
blocks break Block Kit's limits get `invalid_blocks`, as Slack answers. Everything
received is recorded.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

TOKEN = "xoxb-test-0000-SECRETTOKEN"
HOOK_PATH = "/hooks/T000/B000/SECRETHOOKPART"
BLOCK_TYPES = {"header", "section", "context", "divider", "actions"}
SECRETS = (TOKEN, HOOK_PATH.rsplit("/", 1)[1])


def assert_no_secrets(caplog) -> None:
    """Neither the bot token nor the webhook URL's secret part in any record of the test's phases."""
    records = [r for when in ("setup", "call") for r in caplog.get_records(when)]
    for r in records:
        text = f"{r.getMessage()} {r.args!r} {r.exc_text or ''}"
        for secret in SECRETS:
            assert secret not in text, f"{secret[:6]}… logged by {r.name}"


def block_problems(blocks) -> list[str]:
    """What Slack would reject in these blocks (the limits we rely on)."""
    out = []
    if not isinstance(blocks, list) or not 0 < len(blocks) <= 50:
        return ["blocks must be a list of 1..50"]
    for i, b in enumerate(blocks):
        kind = b.get("type")
        if kind not in BLOCK_TYPES:
            out.append(f"{i}: unknown type {kind}")
        elif kind == "header":
            t = b.get("text") or {}
            if t.get("type") != "plain_text" or not 0 < len(t.get("text", "")) <= 150:
                out.append(f"{i}: header needs plain_text of 1..150")
        elif kind == "section":
            if "text" not in b and "fields" not in b:
                out.append(f"{i}: section needs text or fields")
            if "text" in b and not 0 < len(b["text"].get("text", "")) <= 3000:
                out.append(f"{i}: section text must be 1..3000 characters")
            fields = b.get("fields", [])
            if len(fields) > 10 or any(not 0 < len(f.get("text", "")) <= 2000 for f in fields):
                out.append(f"{i}: at most 10 fields of 1..2000 characters")
        elif kind == "context":
            if not 0 < len(b.get("elements", [])) <= 10:
                out.append(f"{i}: context needs 1..10 elements")
    return out


class FakeSlack:
    def __init__(self, channels=("#general", "#vision", "#alerts", "#ops"), token=TOKEN):
        self.channels = set(channels)
        self.token = token
        self.messages: list[dict] = []   # accepted chat.postMessage / webhook payloads (+ "channel", "via")
        self.requests: list[tuple[float, str]] = []  # (time, path) of every request
        self.rate_limited = 0            # answer this many next requests with 429
        self.retry_after = 1
        self.fail_with = 0               # answer this many next requests with HTTP 503
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def api_url(self) -> str:
        return self.url + "/api/"

    @property
    def webhook_url(self) -> str:
        return self.url + HOOK_PATH

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def wait_messages(self, n: int, timeout: float = 5) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.messages

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, status, body, headers=None):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8" if not isinstance(body, bytes)
                                 else "text/html")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _payload(self) -> dict:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "json" in (self.headers.get("Content-Type") or ""):
                    return json.loads(raw or b"{}")
                form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                if isinstance(form.get("blocks"), str):
                    form["blocks"] = json.loads(form["blocks"])
                return form

            def do_POST(self):
                payload = self._payload()
                with fake.lock:
                    fake.requests.append((time.monotonic(), self.path))
                    if fake.rate_limited > 0:
                        fake.rate_limited -= 1
                        return self._reply(429, {"ok": False, "error": "ratelimited"},
                                           {"Retry-After": str(fake.retry_after)})
                    if fake.fail_with > 0:
                        fake.fail_with -= 1
                        return self._reply(503, {"ok": False, "error": "service_unavailable"})
                if self.path.startswith("/hooks/"):
                    return self._webhook(payload)
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._reply(200, {"ok": False, "error": "invalid_auth"})
                if self.path == "/api/auth.test":
                    return self._reply(200, {"ok": True, "url": "https://example.slack.com/", "team": "Example",
                                             "user": "sentinels", "team_id": "T000", "user_id": "U000"})
                if self.path == "/api/chat.postMessage":
                    return self._post(payload)
                return self._reply(200, {"ok": False, "error": "unknown_method"})

            def _post(self, payload):
                channel = payload.get("channel")
                if channel not in fake.channels:
                    return self._reply(200, {"ok": False, "error": "channel_not_found"})
                if not payload.get("text") and not payload.get("blocks"):
                    return self._reply(200, {"ok": False, "error": "no_text"})
                if payload.get("blocks") is not None and block_problems(payload["blocks"]):
                    return self._reply(200, {"ok": False, "error": "invalid_blocks"})
                with fake.lock:
                    fake.messages.append(dict(payload, via="api", received=time.time()))
                    ts = f"{time.time():.6f}"
                return self._reply(200, {"ok": True, "channel": "C" + channel.strip("#").upper()[:8], "ts": ts,
                                         "message": {"text": payload.get("text"), "ts": ts}})

            def _webhook(self, payload):
                if self.path != HOOK_PATH:
                    return self._reply(404, b"no_service")
                if payload.get("blocks") is not None and block_problems(payload["blocks"]):
                    return self._reply(400, b"invalid_blocks")
                with fake.lock:
                    fake.messages.append(dict(payload, channel=None, via="webhook", received=time.time()))
                return self._reply(200, b"ok")

        return Handler
