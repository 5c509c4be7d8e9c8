"""Bearer tokens to identities (user, team, role), from a tokens file (DESIGN §9).

File format (YAML): `users: [{user, team, role, token | token_sha256}]`. With no file
configured, the embedded default runs single-user: every caller is the local user as admin.
Tokens are looked up by SHA-256 so the file may hold hashes only, and tokens are never logged.
`hash_at_rest` (run by `sentinels up`) rewrites a file given with plaintext tokens so that
only their hashes stay on disk: a job that finds the file learns no token.
"""

import getpass
import hashlib
from pathlib import Path

from .domain.errors import ConfigError, Unauthorized

ROLES_DEFAULT = "user"


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Identities:
    def __init__(self, by_hash: dict | None, local_user: str | None = None):
        self.by_hash = by_hash
        self.local = {"user": local_user or getpass.getuser(), "team": None, "role": "admin"}

    @property
    def single_user(self) -> bool:
        return self.by_hash is None

    @classmethod
    def load(cls, path: Path | None, local_user: str | None = None) -> "Identities":
        if path is None:
            return cls(None, local_user)
        from .settings import _load_yaml_file

        raw = _load_yaml_file(path, "tokens file")
        users = raw.get("users") if isinstance(raw, dict) else None
        if not isinstance(users, list):
            raise ConfigError(f"tokens file {path}: expected `users:` with a list of {{user, team, role, token}}")
        by_hash = {}
        for i, u in enumerate(users):
            if not isinstance(u, dict) or not isinstance(u.get("user"), str):
                raise ConfigError(f"tokens file {path}: users[{i}] needs a user name")
            digest = u.get("token_sha256") or (_sha(str(u["token"])) if u.get("token") else None)
            if not digest:
                raise ConfigError(f"tokens file {path}: users[{i}] ({u['user']}) needs token or token_sha256")
            by_hash[str(digest).lower()] = {"user": u["user"], "team": u.get("team"), "role": u.get("role", ROLES_DEFAULT)}
        return cls(by_hash)

    def identify(self, authorization: str | None) -> dict:
        if self.by_hash is None:
            return self.local
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("missing bearer token (set SENTINELS_TOKEN)")
        who = self.by_hash.get(_sha(authorization[7:].strip()))
        if who is None:
            raise Unauthorized("unknown token")
        return who


def hash_at_rest(path: Path | None) -> int:
    """Replace every plaintext `token` in the tokens file by its `token_sha256`; the count.

    The file keeps its other fields and its mode (0600 at most); a file we may not write
    (a mounted secret) is left alone and the caller says so.
    """
    import os

    import yaml

    if path is None:
        return 0
    from .settings import _load_yaml_file

    raw = _load_yaml_file(path, "tokens file")
    users = raw.get("users") if isinstance(raw, dict) else None
    if not isinstance(users, list):
        return 0
    changed = 0
    for u in users:
        if isinstance(u, dict) and u.get("token"):
            u["token_sha256"] = _sha(str(u.pop("token")))
            changed += 1
    if changed:
        tmp = path.with_name(f".{path.name}.hashing")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# plaintext tokens were replaced by their SHA-256 at `sentinels up`\n")
            yaml.safe_dump(raw, f, sort_keys=False)
        os.replace(tmp, path)
    return changed
