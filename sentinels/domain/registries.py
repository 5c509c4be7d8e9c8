"""Private registries: which credentials a pull uses, chosen by the image's registry host.

A job never names credentials. The platform maps each registry host (`registries:` in
the configuration) to a Kubernetes Secret (an imagePullSecret in the jobs namespace) and/or
to an auth file in the format Podman and Docker use (`{"auths": {host: {"auth":
base64("user:password")}}}`); `SENTINELS_REGISTRY_AUTH` names the auth file for every
other host. An entry may be kept to some teams (`teams: [vision]`), so one team's
credentials pull nothing for another's jobs.

Pure: the settings read the files and hand their text to `auth_hosts`; nothing here
keeps or returns a credential, only host names, Secret names and file paths.
"""

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Mapping, Optional

from .errors import ConfigError

DOCKER_HUB = "docker.io"
HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
KEYS = ("secret", "auth_file", "teams")
_HOST = re.compile(r"^(localhost|[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def normal_host(host: str) -> str:
    """The host as entries are keyed: lower case, Docker Hub's aliases as `docker.io`."""
    host = host.strip().lower()
    return DOCKER_HUB if host in HUB_ALIASES else host


def registry_host(image: str) -> str:
    """The registry an image reference is pulled from (Docker's rule: the first component
    names a registry when it has a dot or a port or is `localhost`; else Docker Hub)."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return normal_host(first)
    return DOCKER_HUB


@dataclass(frozen=True)
class Registry:
    host: str
    secret: Optional[str] = None  # Kubernetes: an imagePullSecret in the jobs namespace
    auth_file: Optional[str] = None  # local engines: an auth file (Podman/Docker format)
    teams: tuple[str, ...] = ()  # empty: every team


@dataclass(frozen=True)
class Registries:
    """The `registries:` block plus SENTINELS_REGISTRY_AUTH (`default_auth_file`)."""

    entries: tuple[Registry, ...] = ()
    default_auth_file: Optional[str] = None

    @classmethod
    def from_dict(cls, raw: Optional[Mapping], default_auth_file: Optional[str] = None) -> "Registries":
        """Check the block's shape (the auth files' contents are checked by `auth_hosts`)."""
        raw = {} if raw is None else raw
        if not isinstance(raw, Mapping):
            raise ConfigError("configuration: registries must map a registry host to {secret, auth_file, teams}")
        entries, seen = [], set()
        for key, entry in raw.items():
            where = f"registries.{key}"
            if not isinstance(key, str) or not _HOST.match(key):
                raise ConfigError(f"configuration: {where}: {key!r} is not a registry host (host or host:port)")
            host = normal_host(key)
            if host in seen:
                raise ConfigError(f"configuration: {where}: the registry {host} is configured twice")
            seen.add(host)
            if not isinstance(entry, Mapping):
                raise ConfigError(f"configuration: {where}: expected a mapping {{secret, auth_file, teams}}")
            unknown = sorted(str(k) for k in entry if k not in KEYS)
            if unknown:
                raise ConfigError(f"configuration: {where}: unknown key(s) {', '.join(unknown)} "
                                  f"(known: {', '.join(KEYS)})")
            if entry.get("secret") is None and entry.get("auth_file") is None:
                raise ConfigError(f"configuration: {where}: needs a secret (a Kubernetes Secret name, for the "
                                  "cluster) or an auth_file (for the local engine), or both")
            secret = entry.get("secret")
            if secret is not None and (not isinstance(secret, str) or len(secret) > 253
                                       or not _DNS1123_SUBDOMAIN.match(secret)):
                raise ConfigError(f"configuration: {where}.secret: {secret!r} is not a DNS-1123 name "
                                  "(lower case letters, digits, '-' and '.')")
            auth_file = entry.get("auth_file")
            if auth_file is not None and (not isinstance(auth_file, str) or not auth_file.strip()):
                raise ConfigError(f"configuration: {where}.auth_file: expected a file path")
            teams = entry.get("teams") or []
            if not isinstance(teams, list) or not all(isinstance(t, str) and t for t in teams):
                raise ConfigError(f"configuration: {where}.teams: expected a list of team names")
            entries.append(Registry(host, secret, auth_file, tuple(teams)))
        return cls(tuple(entries), default_auth_file or None)

    def entry(self, image: str) -> Optional[Registry]:
        host = registry_host(image)
        return next((e for e in self.entries if e.host == host), None)

    def refusal(self, image: str, team: Optional[str]) -> Optional[str]:
        """Why a job of `team` may not use `image`'s registry credentials (None: it may)."""
        entry = self.entry(image)
        if entry is None or not entry.teams or team in entry.teams:
            return None
        return f"image: the registry {entry.host} is kept for team(s) {', '.join(entry.teams)}"

    def secret_for(self, image: str, team: Optional[str] = None) -> Optional[str]:
        """The imagePullSecret a job of `team` gets for `image` (None: none)."""
        entry = self.entry(image)
        return entry.secret if entry is not None and self.refusal(image, team) is None else None

    def auth_file_for(self, image: str, team: Optional[str] = None) -> Optional[str]:
        """The auth file the local engine pulls `image` with (the host's, else the default)."""
        entry = self.entry(image)
        if entry is not None:
            if self.refusal(image, team) is not None:
                return None
            if entry.auth_file:
                return entry.auth_file
        return self.default_auth_file

    def auth_files(self) -> dict[str, list[str]]:
        """Every auth file named, with the hosts it must hold credentials for ([] for the default)."""
        out: dict[str, list[str]] = {}
        if self.default_auth_file:
            out[self.default_auth_file] = []
        for e in self.entries:
            if e.auth_file:
                out.setdefault(e.auth_file, []).append(e.host)
        return out


def _auth_key_host(key: str) -> str:
    """`https://index.docker.io/v1/` -> docker.io; `ghcr.io/acme` -> ghcr.io."""
    key = re.sub(r"^[a-z]+://", "", key.strip())
    return normal_host(key.split("/", 1)[0])


def auth_hosts(text: str, where: str) -> set[str]:
    """The hosts an auth file holds credentials for; ConfigError naming `where` when it does
    not parse. The error never quotes the file's content."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: does not parse as an auth file (JSON: {e.msg} at line {e.lineno})") from None
    except ValueError:
        raise ConfigError(f"{where}: does not parse as an auth file (not JSON text)") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: does not parse as an auth file (expected a JSON object with \"auths\")")
    auths, helpers = doc.get("auths", {}), doc.get("credHelpers", {})
    if not isinstance(auths, dict) or not isinstance(helpers, dict):
        raise ConfigError(f"{where}: does not parse as an auth file (\"auths\" and \"credHelpers\" must be objects)")
    hosts = set()
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: does not parse as an auth file (auths.{key} must be an object)")
        auth = entry.get("auth")
        if auth is not None:
            try:
                decoded = base64.b64decode(str(auth), validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                decoded = ""
            if ":" not in decoded:
                raise ConfigError(f"{where}: does not parse as an auth file (auths.{key}.auth is not "
                                  "base64 of user:password)")
        elif not entry.get("identitytoken") and not doc.get("credsStore"):
            raise ConfigError(f"{where}: does not parse as an auth file (auths.{key} has no auth)")
        hosts.add(_auth_key_host(key))
    hosts |= {_auth_key_host(k) for k in helpers}
    if not hosts and not doc.get("credsStore"):
        raise ConfigError(f"{where}: holds no credentials (no \"auths\" entries)")
    return hosts
