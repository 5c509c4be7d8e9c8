"""How the CLI talks to sentinels: the HTTP API only, through the standard library.

Reads are `GET /v1/...`, writes are CloudEvents on `POST /`, all at SENTINELS_URL with
the bearer token; nothing here imports NATS, Kubernetes or MLflow, so a command starts
in a blink and works from any machine that reaches SENTINELS_URL. Writes carry a fresh
CloudEvent id that is reused on retry, so a retried submit never creates a second job.
"""

import json
import time
from urllib.parse import urlencode

from . import wire

SOURCE = "sentinels/cli"


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.message = message
        self.code = code


class Refused(CliError):
    """The API answered with an error status (carried in `status`)."""

    def __init__(self, message: str, status: int):
        super().__init__(f"{message} (HTTP {status})")
        self.status = status


class Api:
    def __init__(self, url: str, token: str | None = None):
        self.url = url.rstrip("/")
        self.token = token

    def _headers(self, extra: dict | None = None) -> dict:
        h = dict(extra or {})
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def unreachable(self, err) -> CliError:
        reason = getattr(err, "reason", None) or err
        return CliError(f"cannot reach sentinels at {self.url} ({reason}); start the embedded default with "
                        "`sentinels up -d` or set SENTINELS_URL")

    def _send(self, method: str, target: str, headers: dict, body: bytes | None = None,
              timeout: float | None = 30):
        """(status, body chunks iterator); plain http on a socket, https through urllib."""
        if self.url.startswith("https://"):
            return self._send_tls(method, target, headers, body, timeout)
        try:
            resp = wire.request(self.url, method, target, headers, body, timeout)
        except OSError as e:
            raise self.unreachable(e) from None
        return resp.status, resp

    def _send_tls(self, method, target, headers, body, timeout):
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + target, data=body, headers=headers, method=method)
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            return e.code, _Whole(e.read())
        except (urllib.error.URLError, OSError) as e:
            raise self.unreachable(e) from None
        return resp.status, _Stream(resp)

    @staticmethod
    def _check(status: int, resp) -> None:
        if status < 400:
            return
        raw = resp.read()
        try:
            message = json.loads(raw).get("error") or raw.decode(errors="replace")
        except (ValueError, AttributeError):
            message = raw.decode(errors="replace").strip() or "no reason given"
        raise Refused(message, status)

    def _target(self, path: str, params: dict) -> str:
        query = {k: v for k, v in params.items() if v is not None and v is not False and v != ""}  # 0 is sent
        return path + ("?" + urlencode(query) if query else "")

    def get(self, path: str, **params) -> dict:
        status, resp = self._send("GET", self._target(path, params), self._headers())
        self._check(status, resp)
        return json.loads(resp.read())

    def lines(self, path: str, on_headers=None, **params):
        """The lines of a streamed answer as they arrive (history or logs followed);
        `on_headers(headers)` sees the answer's headers (lower-case names) first."""
        status, resp = self._send("GET", self._target(path, params), self._headers(), timeout=None)
        self._check(status, resp)
        if on_headers is not None:
            on_headers({k.lower(): v for k, v in dict(resp.headers).items()})
        for raw in resp.lines():
            yield raw.decode(errors="replace").rstrip("\r")

    def post_event(self, event_type: str, data: dict, retries: int = 3) -> dict:
        """POST a binary-mode CloudEvent; retry transport errors and 503 with the same id."""
        import uuid  # only writes need it (it pulls in `platform`)

        body = json.dumps(data).encode()
        headers = self._headers({"Content-Type": "application/json", "ce-specversion": "1.0", "ce-type": event_type,
                                 "ce-source": SOURCE, "ce-id": str(uuid.uuid4())})
        for attempt in range(retries + 1):
            try:
                status, resp = self._send("POST", "/", headers, body, timeout=120)
                self._check(status, resp)
                return json.loads(resp.read() or b"{}")
            except Refused as e:
                if e.status != 503 or attempt == retries:
                    raise
            except CliError:
                if attempt == retries:
                    raise
            time.sleep(0.2 * 2 ** attempt)
        raise CliError("unreachable")  # the loop always returns or raises


class _Whole:
    headers: dict = {}

    def __init__(self, data: bytes):
        self.data = data

    def read(self) -> bytes:
        return self.data

    def lines(self):
        yield from self.data.split(b"\n")


class _Stream:
    def __init__(self, resp):
        self.resp = resp
        self.headers = resp.headers

    def read(self) -> bytes:
        return self.resp.read()

    def lines(self):
        for raw in self.resp:
            yield raw.rstrip(b"\n")
