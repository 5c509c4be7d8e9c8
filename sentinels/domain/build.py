"""Dockerfile submits: what a build request may say, the `builds:` configuration, and the
names of what a build makes. Pure: no I/O.

A job submitted with `--dockerfile` starts BUILDING; a build Job (label
`sentinels.io/component: build`) makes its image, tagged with the job id, and the job is
queued with it. The Dockerfile and the context are an absolute path on the machine of the
embedded default or an http(s) URL (a context URL is a tar archive); on Kubernetes only
URLs make sense, since the builder runs in the cluster.
"""

import posixpath
import re
from dataclasses import dataclass
from typing import Optional

from . import duration, quantity
from .errors import ConfigError, InvalidSpec

URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)
BUILD_LABEL = {"sentinels.io/component": "build"}
TOOLS = ("auto", "buildah", "podman")
KEYS = ("concurrency", "max_context", "deadline", "tool", "registry", "buildkit_image", "fetch_timeout")


@dataclass(frozen=True)
class BuildConfig:
    """The `builds:` block of the server configuration."""

    concurrency: int = 2  # builds at once; more wait BUILDING ("waiting for a build slot")
    max_context_bytes: int = 500 * 2**20
    deadline_seconds: int = 30 * 60
    tool: str = "auto"  # embedded default: buildah, podman (`podman build`), or the first found
    registry: Optional[str] = None  # Kubernetes: where BuildKit pushes (host[:port]/path)
    buildkit_image: str = "moby/buildkit:v0.17.3-rootless"
    fetch_timeout_seconds: int = 30  # a Dockerfile or context URL that does not answer in this time fails

    @classmethod
    def from_dict(cls, raw: Optional[dict]) -> "BuildConfig":
        raw = raw or {}
        if not isinstance(raw, dict):
            raise ConfigError("configuration: builds must be a mapping (" + ", ".join(KEYS) + ")")
        unknown = sorted(set(map(str, raw)) - set(KEYS))
        if unknown:
            raise ConfigError(f"configuration: unknown key(s) builds.{', builds.'.join(unknown)} (known: {', '.join(KEYS)})")
        base = cls()
        try:
            concurrency = raw.get("concurrency", base.concurrency)
            if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
                raise InvalidSpec(f"builds.concurrency: expected a whole number of at least 1, got {concurrency!r}")
            tool = raw.get("tool", base.tool)
            if tool not in TOOLS:
                raise InvalidSpec(f"builds.tool: one of {', '.join(TOOLS)}, not {tool!r}")
            registry = raw.get("registry")
            if registry is not None and (not isinstance(registry, str) or not re.match(r"^[A-Za-z0-9.:\-\[\]]+(/[a-z0-9._\-/]+)?$", registry)):
                raise InvalidSpec(f"builds.registry: expected host[:port][/path], got {registry!r}")
            image = raw.get("buildkit_image", base.buildkit_image)
            if not isinstance(image, str) or not image:
                raise InvalidSpec("builds.buildkit_image: expected an image reference")
            return cls(
                concurrency=concurrency,
                max_context_bytes=quantity.memory_bytes(raw["max_context"], "builds.max_context")
                if raw.get("max_context") is not None else base.max_context_bytes,
                deadline_seconds=duration.seconds(raw["deadline"], "builds.deadline")
                if raw.get("deadline") is not None else base.deadline_seconds,
                tool=tool, registry=registry, buildkit_image=image,
                fetch_timeout_seconds=duration.seconds(raw["fetch_timeout"], "builds.fetch_timeout")
                if raw.get("fetch_timeout") is not None else base.fetch_timeout_seconds)
        except InvalidSpec as e:
            raise ConfigError(f"configuration: {e.message}") from None


def _location(value, field: str, kind: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidSpec(f"build.{field}: expected the {kind} as an absolute path or an http(s) URL", f"build.{field}")
    if len(value) > 2048:
        raise InvalidSpec(f"build.{field}: longer than 2048 characters", f"build.{field}")
    if URL.match(value):
        return value
    if not value.startswith("/"):
        raise InvalidSpec(f"build.{field}: {value!r} is neither an absolute path nor an http(s) URL", f"build.{field}")
    if ".." in value.split("/") or "\x00" in value:
        raise InvalidSpec(f"build.{field}: {value!r} must not contain '..'", f"build.{field}")
    return posixpath.normpath(value)


def validate(raw) -> dict:
    """{"dockerfile", "context"} from a submit's `build` block, or InvalidSpec naming the field."""
    if not isinstance(raw, dict):
        raise InvalidSpec("build: expected a mapping with dockerfile (and context)", "build")
    unknown = sorted(set(map(str, raw)) - {"dockerfile", "context"})
    if unknown:
        raise InvalidSpec(f"build: unknown field(s) {', '.join(unknown)} (allowed: dockerfile, context)", "build")
    dockerfile = _location(raw.get("dockerfile"), "dockerfile", "Dockerfile")
    context = raw.get("context")
    if context is None:
        context = None if URL.match(dockerfile) else posixpath.dirname(dockerfile)
    else:
        context = _location(context, "context", "build context")
    return {"dockerfile": dockerfile, "context": context}


def is_url(value: Optional[str]) -> bool:
    return bool(value) and bool(URL.match(value or ""))


def local_image(name: str, job_id: str) -> str:
    """The tag a local build gives the job's image."""
    return f"localhost/sentinels/{name}:{job_id}"


def pushed_image(registry: str, name: str, job_id: str) -> str:
    """The tag a cluster build pushes to the configured registry."""
    return f"{registry.rstrip('/')}/{name}:{job_id}"


def build_job_name(job_id: str) -> str:
    return f"sentinels-build-{job_id}"


def placeholder_image(name: Optional[str]) -> str:
    """What the spec says before the build: the validator needs an image reference."""
    return f"localhost/sentinels/{name or 'build'}:building"
