"""Slack delivery: a bot token (Web API `chat.postMessage`) or an incoming webhook, else the log.

Configured from the environment (`SLACK_BOT_TOKEN` + optional `SLACK_API_URL`, or
`SLACK_WEBHOOK_URL`). Failures are sorted so the caller knows what to do: `Unavailable`
(rate limited past the wait we accept, 5xx, network: the broker should redeliver),
`ConfigError` (the token or webhook is rejected: retrying will not help), `SendFailed`
(this one message was refused). Tokens and webhook URLs never reach a log line: the
SDK logs through a logger that redacts them. `slack_sdk` is imported lazily.
"""

import logging
from typing import Any, Mapping
from urllib.parse import urlparse

from ..domain.errors import ConfigError, SendFailed, SentinelsError, Unavailable

log = logging.getLogger("sentinels.slack")
SDK_LOG = "sentinels.slack.sdk"
AUTH_ERRORS = {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
               "not_allowed_token_type", "missing_scope", "no_permission", "invalid_token", "no_service",
               "no_team", "team_disabled"}
CHANNEL_ERRORS = {"channel_not_found", "not_in_channel", "is_archived", "channel_is_archived"}
TRANSIENT_ERRORS = {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
                    "request_timeout", "rollup_error"}
SEND_TIMEOUT = 5        # seconds per HTTP request: a Slack outage must not hold the alert function
MAX_RETRY_AFTER = 10    # longest Retry-After we sleep through; longer -> Unavailable, the broker redelivers


class _Redact(logging.Filter):
    """Replace every registered secret in a log record by (redacted)."""

    def __init__(self):
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            for secret in sorted(self.secrets, key=len, reverse=True):
                text = text.replace(secret, "(redacted)")
            record.msg, record.args = text, ()
        return True


_REDACT = _Redact()


def _sdk_logger(*secrets: str) -> logging.Logger:
    """The logger the SDK clients get: warnings and up only, secrets redacted."""
    sdk = logging.getLogger(SDK_LOG)
    sdk.setLevel(logging.WARNING)  # the SDK logs request URLs and bodies at debug/info
    if _REDACT not in sdk.filters:
        sdk.addFilter(_REDACT)
        log.addFilter(_REDACT)
    _REDACT.secrets.update(s for s in secrets if s)
    return sdk


def _rate_limit_handler(max_wait: float):
    """The SDK's RateLimitErrorRetryHandler (honours Retry-After on 429), up to `max_wait` seconds."""
    from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

    class Capped(RateLimitErrorRetryHandler):
        def _can_retry(self, *, state, request, response=None, error=None) -> bool:
            if not super()._can_retry(state=state, request=request, response=response, error=error):
                return False
            wait = next((v for k, v in response.headers.items() if k.lower() == "retry-after"), ["1"])
            try:
                return float(wait[0] if isinstance(wait, list) else wait) <= max_wait
            except (TypeError, ValueError):
                return True

    return Capped(max_retry_count=2)


def _network_errors() -> tuple:
    import http.client
    import socket
    import urllib.error

    return (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException)


class ConsoleNotifier:
    """No Slack configured (or it rejected us): the message text goes to the log."""

    per_channel = True
    kind = "console"

    def __init__(self, why: str = "no Slack configured (set SLACK_WEBHOOK_URL or SLACK_BOT_TOKEN)"):
        self.why = why

    def describe(self) -> str:
        return f"{self.why}: notifications go to this log"

    def check(self) -> None:
        return None

    def send(self, channel: str, message: dict) -> str:
        log.info("notification%s: %s", f" for {channel}" if channel else "", message.get("text", ""))
        return channel


class SlackNotifier:
    """Slack through a bot token (routes to channels) or an incoming webhook (its own channel)."""

    def __init__(self, *, token: str | None = None, webhook_url: str | None = None, api_url: str | None = None,
                 default_channel: str = "", timeout: int = SEND_TIMEOUT, max_retry_after: float = MAX_RETRY_AFTER):
        if not token and not webhook_url:
            raise ConfigError("Slack: neither a bot token nor a webhook URL given")
        if token and not default_channel:
            raise ConfigError("Slack: a bot token needs notify.default_channel in the configuration "
                              "(where messages go when no team, experiment or job channel applies)")
        self.default_channel = default_channel
        self.kind = "bot" if token else "webhook"
        self.per_channel = bool(token)  # a webhook posts to the one channel it was made for
        self._warned: set[str] = set()
        self._client: Any  # slack_sdk's WebClient (bot token) or WebhookClient
        if any(c.isspace() for c in (token or webhook_url or "")):
            raise ConfigError(f"Slack: the {'bot token' if token else 'webhook URL'} contains whitespace")
        logger = _sdk_logger(token or "", webhook_url or "", urlparse(webhook_url or "").path if webhook_url else "")
        if token:
            from slack_sdk import WebClient

            base = (api_url or "https://slack.com/api/").rstrip("/") + "/"
            self._client = WebClient(token=token, base_url=base, timeout=timeout, logger=logger)
        else:
            from slack_sdk.webhook import WebhookClient

            self._client = WebhookClient(webhook_url or "", timeout=timeout, logger=logger)
        self._client.retry_handlers.append(_rate_limit_handler(max_retry_after))

    def describe(self) -> str:
        if self.kind == "bot":
            return f"Slack bot token, default channel {self.default_channel}"
        return "Slack incoming webhook"

    def check(self) -> None:
        """Ask Slack whether the bot token is good (auth.test); a webhook cannot be checked without posting."""
        if self.kind != "bot":
            return
        from slack_sdk.errors import SlackApiError

        try:
            self._client.auth_test()
        except SlackApiError as e:
            raise self._failure(_api_error(e), e.response.status_code) from None
        except _network_errors() as e:
            raise Unavailable(f"Slack unreachable while checking the bot token ({type(e).__name__})") from None

    def send(self, channel: str, message: dict) -> str:
        """Post the message; return the channel it went to (the default one after channel_not_found)."""
        if self.kind == "webhook":
            return self._send_webhook(channel, message)
        from slack_sdk.errors import SlackApiError

        target = channel or self.default_channel
        try:
            self._client.chat_postMessage(channel=target, text=message["text"], blocks=message.get("blocks"))
            return target
        except SlackApiError as e:
            error = _api_error(e)
            if error in CHANNEL_ERRORS and target != self.default_channel:
                if target not in self._warned:
                    self._warned.add(target)
                    log.warning("Slack channel %s: %s; sending to the default channel %s instead",
                                target, error, self.default_channel)
                return self.send(self.default_channel, message)
            raise self._failure(error, e.response.status_code) from None
        except _network_errors() as e:
            raise Unavailable(f"Slack unreachable ({type(e).__name__}); the event will be redelivered") from None

    def _send_webhook(self, channel: str, message: dict) -> str:
        try:
            resp = self._client.send(text=message["text"], blocks=message.get("blocks"))
        except _network_errors() as e:
            raise Unavailable(f"Slack webhook unreachable ({type(e).__name__}); the event will be redelivered") from None
        if resp.status_code == 200:
            return channel
        error = (resp.body or "").strip()[:80] or f"HTTP {resp.status_code}"
        if resp.status_code in (401, 403, 404, 410) and error not in TRANSIENT_ERRORS:
            raise ConfigError(f"Slack rejected the incoming webhook ({error}); check SLACK_WEBHOOK_URL")
        raise self._failure(error, resp.status_code)

    def _failure(self, error: str, status: int | None) -> SentinelsError:
        if error in AUTH_ERRORS:
            what = "bot token" if self.kind == "bot" else "incoming webhook"
            var = "SLACK_BOT_TOKEN" if self.kind == "bot" else "SLACK_WEBHOOK_URL"
            return ConfigError(f"Slack rejected the {what} ({error}); check {var}")
        if error in TRANSIENT_ERRORS or (status or 0) == 429 or (status or 0) >= 500:
            return Unavailable(f"Slack is unavailable ({error}, HTTP {status}); the event will be redelivered")
        return SendFailed(f"Slack refused the message ({error})")


def _api_error(e) -> str:
    data = getattr(e.response, "data", None)
    if isinstance(data, dict) and data.get("error"):
        return str(data["error"])[:80]
    return f"HTTP {getattr(e.response, 'status_code', '?')}"


def notifier_from_env(env: Mapping[str, str], default_channel: str = ""):
    """SlackNotifier from SLACK_BOT_TOKEN (+ SLACK_API_URL) or SLACK_WEBHOOK_URL, else ConsoleNotifier.

    `env` is `Settings.slack_env()`. With both set, the bot token wins (it can route to channels)."""
    token, webhook = (env.get(var, "").strip() for var in ("SLACK_BOT_TOKEN", "SLACK_WEBHOOK_URL"))
    if token:
        if webhook:
            log.info("both SLACK_BOT_TOKEN and SLACK_WEBHOOK_URL are set; using the bot token")
        return SlackNotifier(token=token, api_url=env.get("SLACK_API_URL"), default_channel=default_channel)
    if webhook:
        if not webhook.startswith(("http://", "https://")):
            raise ConfigError("SLACK_WEBHOOK_URL must be an http(s) URL")
        return SlackNotifier(webhook_url=webhook, default_channel=default_channel)
    return ConsoleNotifier()


def start(env: Mapping[str, str], default_channel: str = "", strict: bool = False):
    """Build the notifier, check it once and say where notifications go (once, at start).

    A rejected token raises ConfigError when `strict` (`sentinels up` refuses to start);
    otherwise it is logged as an error and notifications fall back to the log, so a bad
    token never turns into a crash loop. Slack being unreachable is only a warning.
    """
    notifier = notifier_from_env(env, default_channel)
    try:
        notifier.check()
    except ConfigError as e:
        if strict:
            raise
        log.error("%s; notifications go to this log until it is fixed", e.message)
        return ConsoleNotifier(why="Slack rejected the configured credentials")
    except Unavailable as e:
        log.warning("%s; will try again per message", e.message)
    log.info("notifications: %s", notifier.describe())
    return notifier
