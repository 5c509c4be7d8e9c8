"""Build the job spec from `--config FILE` and flags (flags win), with clear file errors.

Validation proper happens in the submit function (the server knows the limits); here we
only refuse files that are too big, not YAML, or try to construct objects.
"""

from pathlib import Path

from sentinels.domain.spec import MAX_SPEC_BYTES

from .client import CliError


def load_file(path: str) -> dict:
    import yaml

    from sentinels import yamlfile

    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise CliError(f"--config {path}: cannot read ({e.strerror})") from None
    if size > MAX_SPEC_BYTES:
        raise CliError(f"--config {path}: {size} bytes is over the {MAX_SPEC_BYTES // 1024} KiB limit for a job spec")
    try:
        text = p.read_bytes()
        raw = yamlfile.parse(text, f"--config {path}")  # aliases share objects here: nothing is expanded yet
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text)):
            raise CliError(f"--config {path}: YAML aliases (*name) are not allowed in a job spec; write the values out")
    except OSError as e:
        raise CliError(f"--config {path}: cannot read ({e.strerror})") from None
    except yamlfile.YamlError as e:
        raise CliError(e.message) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CliError(f"--config {path}: a job spec is a mapping of fields, got {type(raw).__name__}")
    return raw


def typed(text: str):
    """A --param value keeps its type: 0.5, 40, 1e-3, true, [64, 32] as JSON reads them, else the text."""
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def pairs(items: list[str], flag: str, convert=str) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = convert(value)
    return out


def build_source(dockerfile: str, context: str | None) -> dict:
    """The `build` block of a Dockerfile submit: URLs as given, local paths made absolute and checked."""
    out = {}
    for flag, value, want_dir in (("--dockerfile", dockerfile, False), ("--context", context, True)):
        if value is None:
            continue
        if value.startswith(("http://", "https://")):
            out[flag[2:]] = value
            continue
        path = Path(value).expanduser().resolve()
        if want_dir and not path.is_dir():
            raise CliError(f"{flag} {value}: not a directory")
        if not want_dir and not path.is_file():
            raise CliError(f"{flag} {value}: no such file")
        out[flag[2:]] = str(path)
    return out


def build(image: str | None, config: str | None, command: list[str], **flags) -> dict:
    spec = load_file(config) if config else {}
    if image is not None:
        spec["image"] = image
    if command:
        spec["command"], spec["args"] = command[:1], command[1:]
    for key in ("name", "priority", "data", "experiment", "timeout", "outputs"):
        if flags.get(key) is not None:
            spec[key] = flags[key]
    if flags.get("retries") is not None:
        spec["retries"] = flags["retries"]
    res = dict(spec.get("resources") or {}) if isinstance(spec.get("resources") or {}, dict) else spec["resources"]
    for key in ("cpu", "memory", "gpu"):
        if flags.get(key) is not None:
            res[key] = flags[key]
    if res:
        spec["resources"] = res
    for key, flag, convert in (("env", "--env", str), ("params", "--param", typed)):
        extra = pairs(flags.get(key) or [], flag, convert)
        if extra:
            base = spec.get(key) or {}
            spec[key] = {**base, **extra} if isinstance(base, dict) else base
    return spec
