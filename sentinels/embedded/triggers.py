"""The trigger table, read from the Knative Trigger manifests in `knative/`.

The embedded router and the Kubernetes wiring therefore route the same event types to
the same functions with the same retry policy: one table, two brokers.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from ..domain.errors import ConfigError

SERVICE_TO_FUNCTION = {"sentinels-submit": "submit", "sentinels-schedule": "schedule",
                       "sentinels-on-job-event": "on_job_event", "sentinels-alert": "alert"}


@dataclass(frozen=True)
class Trigger:
    name: str
    event_type: str
    function: str
    retry: int
    backoff_delay: float
    exponential: bool


def knative_dir() -> Path:
    """The manifests shipped with the code: `sentinels/knative` (a link to the repository's
    knative/ folder, a copy in an installed wheel); `Settings.knative_dir()` may name others."""
    return Path(__file__).resolve().parents[1] / "knative"


def _iso_seconds(text: str) -> float:
    m = re.fullmatch(r"PT(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?", text or "")
    if not m or not any(m.groups()):
        raise ConfigError(f"trigger backoffDelay {text!r} is not an ISO-8601 duration like PT0.5S")
    return float(m.group(1) or 0) * 60 + float(m.group(2) or 0)


def load(directory: Path | None = None) -> list[Trigger]:
    from sentinels import yamlfile

    directory = directory or knative_dir()
    out = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            docs = yamlfile.parse_all(path.read_bytes(), path.name)
        except yamlfile.YamlError as e:
            raise ConfigError(e.message) from None
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "Trigger":
                continue
            spec = doc.get("spec") or {}
            name = doc.get("metadata", {}).get("name")
            etype = ((spec.get("filter") or {}).get("attributes") or {}).get("type")
            service = ((spec.get("subscriber") or {}).get("ref") or {}).get("name")
            if not (name and etype and service in SERVICE_TO_FUNCTION):
                raise ConfigError(f"{path.name}: trigger {name!r} needs filter.attributes.type and a sentinels subscriber")
            delivery = spec.get("delivery") or {}
            out.append(Trigger(name, etype, SERVICE_TO_FUNCTION[service], int(delivery.get("retry", 3)),
                               _iso_seconds(delivery.get("backoffDelay", "PT0.2S")),
                               delivery.get("backoffPolicy", "exponential") == "exponential"))
    if not out:
        raise ConfigError(f"no Trigger manifests found in {directory}")
    return out
