"""Who may ask for which user: API keys with scopes, and the feedback limits of ``ttp serve``.

A key file (``--api-keys FILE`` or ``TTP_API_KEYS``) holds no key itself, only each key's
SHA-256 and its scope::

    {"keys": [{"name": "app",   "sha256": "9f86d0...", "users": "*"},
              {"name": "alice", "sha256": "2c26b4...", "users": ["alice"]},
              {"name": "lab",   "sha256": "fcde2b...", "users": ["lab-*", "bob"]}]}

``users`` is ``"*"`` (every user: an application or admin key) or a list of user ids and
shell-style patterns.  ``ttp keys add`` makes a key, prints it once and stores its hash.  Keys
are random 256-bit tokens, so one unsalted SHA-256 each is as strong as a slow hash would be,
and costs a request nothing.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from ttp.files import DataFileError, read_json, write_json_atomic

KEY_PREFIX = "ttp-"
ALL_USERS = "*"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Key:
    name: str
    sha256: str
    users: tuple[str, ...]      # ("*",) for every user

    @property
    def every_user(self) -> bool:
        return self.users == (ALL_USERS,)

    def may_act_for(self, user: str) -> bool:
        return self.every_user or any(fnmatchcase(user, pattern) for pattern in self.users)


class KeyRing:
    """The keys of a key file, checked once at start-up; ``find`` answers a bearer token."""

    def __init__(self, keys: list[Key]):
        self.keys = keys

    @classmethod
    def load(cls, path: str | Path) -> "KeyRing":
        path = Path(path)
        data = read_json(path)
        records = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise DataFileError(f"{path}: expected {{\"keys\": [...]}}; make one with `ttp keys add`")
        keys, seen = [], set()
        for i, record in enumerate(records):
            where = f"{path}: key {i}"
            if not isinstance(record, dict):
                raise DataFileError(f"{where} is not an object")
            name, sha, users = record.get("name"), record.get("sha256"), record.get("users")
            if not isinstance(name, str) or not name:
                raise DataFileError(f"{where}: field 'name' must be a non-empty string")
            if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise DataFileError(f"{where} ({name!r}): field 'sha256' must be 64 lower-case hex digits")
            if users == ALL_USERS:
                users = [ALL_USERS]
            if not isinstance(users, list) or not users or not all(isinstance(u, str) and u for u in users):
                raise DataFileError(f"{where} ({name!r}): field 'users' must be \"*\" or a non-empty list of "
                                    f"user ids and patterns")
            if sha in seen:
                raise DataFileError(f"{where} ({name!r}): the same key is listed twice")
            seen.add(sha)
            keys.append(Key(name, sha, tuple(users)))
        return cls(keys)

    def find(self, authorization: str | None) -> Key | None:
        """The key of an ``Authorization: Bearer KEY`` header, or None."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        wanted = digest(authorization[len("Bearer "):].strip())
        found = None
        for key in self.keys:       # every key compared, in constant time each
            if hmac.compare_digest(key.sha256, wanted):
                found = key
        return found


def add_key(path: str | Path, name: str, users: list[str]) -> str:
    """A new random key with this scope, its hash appended to the key file; the key itself is
    returned once and stored nowhere."""
    path = Path(path)
    data = {"keys": []}
    if path.exists():
        KeyRing.load(path)           # refuses to extend a damaged file
        data = read_json(path)
    if any(record.get("name") == name for record in data["keys"]):
        raise DataFileError(f"{path}: a key named {name!r} exists; pick another name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    data["keys"].append({"name": name, "sha256": digest(key), "users": ALL_USERS if users == [ALL_USERS] else users})
    write_json_atomic(path, data)
    path.chmod(0o600)
    return key


class RateLimit:
    """At most ``per_minute`` events per name in any 60 s (a sliding window, in this process)."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute, self.clock = per_minute, clock
        self.events: dict[str, deque] = defaultdict(deque)

    def wait(self, *names: str) -> float:
        """0 where one more event is allowed now for every name (and count it for each); else the
        seconds until it is, counting nothing."""
        now, longest = self.clock(), 0.0
        for name in names:
            events = self.events[name]
            while events and now - events[0] >= 60:
                events.popleft()
            if len(events) >= self.per_minute:
                longest = max(longest, 60 - (now - events[0]))
        if longest == 0:
            for name in names:
                self.events[name].append(now)
        return longest
