"""How the CLI talks to sentinels: the HTTP API only, through the standard library.

Reads are `GET /v1/...`, writes are CloudEvents on `POST /`, all at SENTINELS_URL with
the bearer token; nothing here imports NATS, Kubernetes or MLflow, so a command starts
in a blink and works from any machine that reaches SENTINELS_URL. Writes carry a fresh
CloudEvent id that is reused on retry, so a retried submit never creates a second job.
"""

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

SOURCE = "sentinels/cli"


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.message = message
        self.code = code


class Api:
    def __init__(self, url: str, token: str | None = None):
        self.url = url.rstrip("/")
        self.token = token

    def _headers(self, extra: dict | None = None) -> dict:
        h = dict(extra or {})
        if self.token:
            h["authorization"] = f"Bearer {self.token}"
        return h

    def unreachable(self, err) -> CliError:
        reason = getattr(err, "reason", err)
        return CliError(f"cannot reach sentinels at {self.url} ({reason}); start the embedded default with "
                        "`sentinels up -d` or set SENTINELS_URL")

    @staticmethod
    def refused(err: urllib.error.HTTPError) -> CliError:
        try:
            message = json.loads(err.read()).get("error") or err.reason
        except ValueError:
            message = err.reason
        return CliError(f"{message} (HTTP {err.code})")

    def _open(self, path: str, params: dict | None = None, timeout: float | None = 30):
        query = {k: v for k, v in (params or {}).items() if v not in (None, False, "")}
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        req = urllib.request.Request(url, headers=self._headers())
        try:
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise self.refused(e) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            raise self.unreachable(e) from None

    def get(self, path: str, **params) -> dict:
        with self._open(path, params) as resp:
            return json.loads(resp.read())

    def lines(self, path: str, **params):
        """The lines of a streamed answer as they arrive (history or logs followed)."""
        with self._open(path, params, timeout=None) as resp:
            for raw in resp:
                yield raw.decode(errors="replace").rstrip("\n")

    def post_event(self, event_type: str, data: dict, retries: int = 3) -> dict:
        """POST a binary-mode CloudEvent; retry transport errors and 503 with the same id."""
        body = json.dumps(data).encode()
        headers = self._headers({"content-type": "application/json", "ce-specversion": "1.0", "ce-type": event_type,
                                 "ce-source": SOURCE, "ce-id": str(uuid.uuid4())})
        for attempt in range(retries + 1):
            req = urllib.request.Request(self.url + "/", data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    return json.loads(resp.read() or b"{}")
            except urllib.error.HTTPError as e:
                if e.code != 503 or attempt == retries:
                    raise self.refused(e) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                if attempt == retries:
                    raise self.unreachable(e) from None
            time.sleep(0.2 * 2 ** attempt)
        raise CliError("unreachable")  # the loop always returns or raises
