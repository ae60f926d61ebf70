"""Who may ask for which user: API keys with scopes, their life-cycle, and the key file that a
running ``ttp serve`` follows.

A key file (``--api-keys FILE`` or ``TTP_API_KEYS``) holds no key itself, only each key's
SHA-256, its scope and its dates::

    {"keys": [{"name": "app",   "sha256": "9f86d0...", "users": "*", "created": 1765000000.0},
              {"name": "alice", "sha256": "2c26b4...", "users": ["alice"], "created": ...,
               "expires": 1767600000.0},
              {"name": "lab",   "sha256": "fcde2b...", "users": ["lab-*", "bob"], "created": ...,
               "revoked": 1765100000.0}]}

``users`` is ``"*"`` (every user: an application or admin key) or a list of user ids and
shell-style patterns.  ``ttp keys add`` makes a key, prints it once and stores its hash; ``ttp
keys rotate`` gives a key a new secret under the same name and scope; ``ttp keys revoke`` marks
it revoked.  A revoked key keeps its record, so its name, which the profile store writes beside
everything the key wrote, is never given to another key.  Keys are random 256-bit tokens, so
one unsalted SHA-256 each is as strong as a slow hash would be, and costs a request nothing.

``KeyFile`` is what the server asks: it looks at the file's identity (inode, size, modification
time) on every request, a ``stat`` call, and reads the file again when it changed, so a revoked
key is refused from the next request on, in every worker, without a restart.  A file that no
longer reads (a hand edit gone wrong) leaves the last good keys in force and is reported on
standard error and by ``/health``.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path

from ttp.files import DataFileError, read_json, write_json_atomic

KEY_PREFIX = "ttp-"
ALL_USERS = "*"
SCHEME = "bearer"          # RFC 7235: the scheme is matched whatever its case


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Key:
    name: str
    sha256: str
    users: tuple[str, ...]      # ("*",) for every user
    created: float | None = None
    expires: float | None = None
    revoked: float | None = None

    @property
    def every_user(self) -> bool:
        return self.users == (ALL_USERS,)

    def may_act_for(self, user: str) -> bool:
        return self.every_user or any(fnmatchcase(user, pattern) for pattern in self.users)

    def state(self, now: float) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked is not None:
            return "revoked"
        return "expired" if self.expires is not None and now >= self.expires else "active"

    def record(self) -> dict:
        fields = {"name": self.name, "sha256": self.sha256,
                  "users": ALL_USERS if self.every_user else list(self.users)}
        return fields | {k: v for k, v in (("created", self.created), ("expires", self.expires),
                                           ("revoked", self.revoked)) if v is not None}


class KeyRefused(Exception):
    """A request's key is missing, unknown, expired or revoked; the message says which (never the key)."""


def _when(value, where: str, field: str) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise DataFileError(f"{where}: field {field!r} must be seconds since 1970 (a number), got {value!r}")
    return None if value is None else float(value)


class KeyRing:
    """The keys of a key file; ``find`` answers a request's ``Authorization`` header."""

    def __init__(self, keys: list[Key]):
        self.keys = keys

    @classmethod
    def load(cls, path: str | Path) -> "KeyRing":
        path = Path(path)
        data = read_json(path)
        records = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise DataFileError(f"{path}: expected {{\"keys\": [...]}}; make one with `ttp keys add`")
        keys, seen, names = [], set(), set()
        for i, record in enumerate(records):
            where = f"{path}: key {i}"
            if not isinstance(record, dict):
                raise DataFileError(f"{where} is not an object")
            name, sha, users = record.get("name"), record.get("sha256"), record.get("users")
            if not isinstance(name, str) or not name:
                raise DataFileError(f"{where}: field 'name' must be a non-empty string")
            where = f"{where} ({name!r})"
            if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise DataFileError(f"{where}: field 'sha256' must be 64 lower-case hex digits")
            if users == ALL_USERS:
                users = [ALL_USERS]
            if not isinstance(users, list) or not users or not all(isinstance(u, str) and u for u in users):
                raise DataFileError(f"{where}: field 'users' must be \"*\" or a non-empty list of "
                                    f"user ids and patterns")
            if sha in seen:
                raise DataFileError(f"{where}: the same key is listed twice")
            if name in names:
                raise DataFileError(f"{where}: the name is listed twice")
            seen.add(sha)
            names.add(name)
            keys.append(Key(name, sha, tuple(users), *(_when(record.get(field), where, field)
                                                       for field in ("created", "expires", "revoked"))))
        return cls(keys)

    def find(self, authorization: str | None, now: float | None = None) -> Key:
        """The active key of an ``Authorization: Bearer KEY`` header; ``KeyRefused`` otherwise."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != SCHEME or not token.strip():
            raise KeyRefused("a valid API key is required: Authorization: Bearer KEY")
        wanted = digest(token.strip())
        found = None
        for key in self.keys:       # every key compared, in constant time each
            if hmac.compare_digest(key.sha256, wanted):
                found = key
        if found is None:
            raise KeyRefused("a valid API key is required: Authorization: Bearer KEY")
        state = found.state(time.time() if now is None else now)
        if state != "active":
            raise KeyRefused(f"this API key ({found.name}) is {state}; ask for a new one")
        return found


class KeyFile:
    """A key file followed while the server runs: ``find`` reads it again once it has changed."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._guard = threading.Lock()
        self._seen = self._identity()
        self.ring = KeyRing.load(self.path)       # a bad file at start-up stops the server
        self.problem: str | None = None           # why the file on disk is not the keys in force

    def _identity(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def current(self) -> KeyRing:
        identity = self._identity()
        if identity != self._seen:
            with self._guard:
                if identity != self._seen:
                    self._seen = identity
                    try:
                        self.ring, self.problem = KeyRing.load(self.path), None
                    except (DataFileError, OSError) as err:
                        self.problem = f"{err}; the last good keys stay in force"
                        print(f"ttp serve: key file: {self.problem}", file=sys.stderr)
        return self.ring

    def find(self, authorization: str | None) -> Key:
        return self.current().find(authorization)


DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_expiry(text: str, now: float | None = None) -> float:
    """``30d``, ``12h``, ``90m``, ``2w`` from now, or an ISO date or time (UTC where no zone is
    given), as seconds since 1970."""
    now = time.time() if now is None else now
    match = DURATION.match(text.strip())
    if match:
        return now + float(match[1]) * SECONDS[match[2]]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--expires takes a duration (30d, 12h, 90m, 2w) or an ISO date, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if moment.timestamp() <= now:
        raise ValueError(f"--expires {text} is in the past")
    return moment.timestamp()


def _records(path: Path) -> list[Key]:
    return KeyRing.load(path).keys if path.exists() else []


def _save(path: Path, keys: list[Key]) -> None:
    write_json_atomic(path, {"keys": [key.record() for key in keys]})
    path.chmod(0o600)


def _new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def add_key(path: str | Path, name: str, users: list[str], expires: float | None = None) -> str:
    """A new random key with this scope, its hash appended to the key file; the key itself is
    returned once and stored nowhere."""
    path = Path(path)
    keys = _records(path)              # refuses to extend a damaged file
    taken = next((key for key in keys if key.name == name), None)
    if taken is not None:
        hint = "pick another name" if taken.revoked is not None else "pick another name, or `ttp keys rotate` it"
        raise DataFileError(f"{path}: a key named {name!r} exists (names are never reused, revoked or not); {hint}")
    secret = _new_secret()
    scope = (ALL_USERS,) if users == [ALL_USERS] else tuple(users)
    _save(path, [*keys, Key(name, digest(secret), scope, created=time.time(), expires=expires)])
    return secret


def _named(path: Path, name: str) -> tuple[list[Key], int]:
    keys = _records(path)
    for i, key in enumerate(keys):
        if key.name == name:
            return keys, i
    raise DataFileError(f"{path}: no key named {name!r}; `ttp keys list {path}` shows them")


def revoke_key(path: str | Path, name: str) -> Key:
    """Mark the key revoked: every server following the file refuses it from its next request."""
    path = Path(path)
    keys, i = _named(path, name)
    if keys[i].revoked is None:
        keys[i] = replace(keys[i], revoked=time.time())
        _save(path, keys)
    return keys[i]


def rotate_key(path: str | Path, name: str, expires: float | None = None) -> str:
    """A new secret for the key, same name and scope (and expiry, unless ``expires`` is given);
    the old secret is refused from the next request on.  Returns the new key, shown once."""
    path = Path(path)
    keys, i = _named(path, name)
    if keys[i].revoked is not None:
        raise DataFileError(f"{path}: key {name!r} is revoked; add a key under a new name")
    secret = _new_secret()
    keys[i] = replace(keys[i], sha256=digest(secret), created=time.time(),
                      expires=expires if expires is not None else keys[i].expires)
    _save(path, keys)
    return secret


def list_keys(path: str | Path) -> list[Key]:
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: file not found; make one with `ttp keys add`")
    return KeyRing.load(path).keys
