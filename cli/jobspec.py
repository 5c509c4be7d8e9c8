"""Build the job spec from `--config FILE` and flags (flags win), with clear file errors.

Validation proper happens in the submit function (the server knows the limits); here we
only refuse files that are too big, not YAML, or try to construct objects.
"""

from pathlib import Path

from .client import CliError


def load_file(path: str) -> dict:
    import yaml

    from sentinels.domain.spec import MAX_SPEC_BYTES

    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise CliError(f"--config {path}: cannot read ({e.strerror})") from None
    if size > MAX_SPEC_BYTES:
        raise CliError(f"--config {path}: {size} bytes is over the {MAX_SPEC_BYTES // 1024} KiB limit for a job spec")
    try:
        from sentinels import yamlfile

        text = p.read_text()
        raw = yamlfile.parse(text, f"--config {path}")  # aliases share objects here: nothing is expanded yet
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text)):
            raise CliError(f"--config {path}: YAML aliases (*name) are not allowed in a job spec; write the values out")
    except yamlfile.YamlError as e:
        raise CliError(e.message) from None
    except UnicodeDecodeError:
        raise CliError(f"--config {path}: not a text file") from None
    except yaml.constructor.ConstructorError as e:
        raise CliError(f"--config {path}: YAML tags that construct objects are not allowed ({e.problem})") from None
    except yaml.YAMLError as e:
        raise CliError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CliError(f"--config {path}: a job spec is a mapping of fields, got {type(raw).__name__}")
    return raw


def pairs(items: list[str], flag: str) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = value
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
    for key, flag in (("env", "--env"), ("params", "--param")):
        extra = pairs(flags.get(key) or [], flag)
        if extra:
            base = spec.get(key) or {}
            spec[key] = {**base, **extra} if isinstance(base, dict) else base
    return spec


def sweep_values(items: list[str]) -> dict:
    """`--sweep lr=0.001,0.01` (repeatable) -> {"lr": [0.001, 0.01]}; numbers stay numbers."""
    out: dict = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise CliError(f"--sweep {item!r}: expected NAME=V1,V2,...", 2)
        if key in out:
            raise CliError(f"--sweep {key}: given twice", 2)
        out[key] = [_number(v.strip()) for v in values.split(",")]
    return out


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
