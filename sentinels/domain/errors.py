"""Domain errors that carry the HTTP status a caller should see.

One hierarchy so the submit function, the CLI and the tests map a user mistake to a
clear message without a stack trace.
"""


class SentinelsError(Exception):
    status = 500

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        out = {"error": self.message}
        if self.field:
            out["field"] = self.field
        return out


class InvalidSpec(SentinelsError):
    """The job spec or a request is malformed (400)."""

    status = 400


class ConfigError(SentinelsError):
    """A configuration file is malformed; raised at start, never at first use."""

    status = 500


class Unauthorized(SentinelsError):
    status = 401


class Forbidden(SentinelsError):
    status = 403


class NotFound(SentinelsError):
    status = 404


class Conflict(SentinelsError):
    status = 409


class TooLarge(SentinelsError):
    status = 413


class SendFailed(SentinelsError):
    """A notification was refused for good (e.g. Slack's invalid_blocks); redelivery would not help."""

    status = 502


class Unavailable(SentinelsError):
    status = 503


class QuotaExceeded(Unavailable):
    """A quota (Kubernetes ResourceQuota) refused a launch: try again when room frees up."""


class LaunchRefused(SentinelsError):
    """The cluster refused a launch for good (an admission webhook, a 400/422): the job fails."""

    status = 422
