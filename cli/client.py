"""How the CLI talks to sentinels: writes as CloudEvents over HTTP, reads from JetStream.

Writes carry a fresh CloudEvent id that is reused on retry, so a retried submit can
never create a second job. Every failure becomes a `CliError` with a message for people.
"""

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid

from sentinels.domain.errors import SentinelsError

SOURCE = "sentinels/cli"


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.message = message
        self.code = code


def post_event(settings, event_type: str, data: dict, retries: int = 3) -> dict:
    """POST a binary-mode CloudEvent; retry transport errors and 503 with the same id."""
    event_id = str(uuid.uuid4())
    body = json.dumps(data).encode()
    from sentinels.domain.events import binary_headers

    headers = binary_headers({"specversion": "1.0", "type": event_type, "source": SOURCE, "id": event_id})
    if settings.token:
        headers["authorization"] = f"Bearer {settings.token}"
    last = None
    for attempt in range(retries + 1):
        req = urllib.request.Request(settings.url + "/", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error") or e.reason
            except ValueError:
                message = e.reason
            if e.code != 503 or attempt == retries:
                raise CliError(f"{message} (HTTP {e.code})") from None
            last = message
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            last = f"cannot reach sentinels at {settings.url} ({reason}); start the embedded default with " \
                   "`sentinels up -d` or set SENTINELS_URL"
            if attempt == retries:
                raise CliError(last) from None
        time.sleep(0.2 * 2 ** attempt)
    raise CliError(str(last))


def nats_login(settings, user: str = "reader") -> dict:
    """The NATS credentials the CLI uses: SENTINELS_NATS_CREDENTIALS, else the embedded
    default's `reader` (or `admin`, for replaying dead letters) from SENTINELS_HOME."""
    from pathlib import Path

    from sentinels.adapters import jetstream

    path = settings.env.get(jetstream.CREDENTIALS_ENV) or str(Path(settings.home) / "secrets" / f"nats-{user}.json")
    return jetstream.credentials(path) if Path(path).exists() else {}


class Reader:
    """Access to the JetStream store for status, ls, queue, history: read-only as `reader`."""

    def __init__(self, settings, user: str = "reader"):
        self.settings = settings
        self.user = user

    def run(self, fn):
        async def go():
            from sentinels.adapters import jetstream

            nc = await jetstream.connect(self.settings.nats_url, "sentinels-cli", timeout=1.5,
                                         login=nats_login(self.settings, self.user))
            try:
                js = nc.jetstream(timeout=5)
                try:
                    jobs = await jetstream.JetStreamJobs.open(js)
                except Exception:
                    raise CliError(f"no sentinels store at {self.settings.nats_url} yet; has `sentinels up` run?") from None
                self.js = js
                return await fn(js, jobs, jetstream.JetStreamQueue(js, nc), jetstream.JetStreamHistory(js))
            finally:
                await nc.close()

        try:
            return asyncio.run(go())
        except SentinelsError as e:
            raise CliError(e.message) from None


async def waiting_doc(js) -> dict:
    """Why each waiting job waits, as the scheduler's last pass saw it (see states.reason_now)."""
    from sentinels.adapters.jetstream import JetStreamBoard
    from sentinels.domain.names import WAITING_KEY

    doc = await (await JetStreamBoard.open(js)).get(WAITING_KEY)
    return doc or {}
