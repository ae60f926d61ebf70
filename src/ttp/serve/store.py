"""The profile store: users, their profile items and the feedback log, in SQLite (the embedded
default) or PostgreSQL (``postgresql://...``, psycopg 3), behind one schema and one set of queries.

SQLite runs in WAL mode with ``synchronous=FULL``: a write is acknowledged only after it is on
disk, and readers never block the writer, so a ``kill -9`` loses nothing acknowledged.
PostgreSQL is durable by default and lets several ``ttp serve`` workers share one store.

Every request reads the user's profile from the store, and retrieval is cached per profile by
``ttp.tasks.prompts``: an item another worker wrote changes the profile, so the cache key, and
the next request retrieves from it; nothing is rebuilt for a user whose profile did not change."""
from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from ttp.files import write_bytes_atomic
from ttp.tasks.data import ProfileItem, Task

# {serial} and {real} are the two words the engines spell differently
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, created {real} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS items (id {serial}, user_id TEXT NOT NULL "
    "REFERENCES users(id), item_key TEXT NOT NULL, input TEXT NOT NULL, output TEXT NOT NULL, "
    "created {real} NOT NULL, origin TEXT NOT NULL, UNIQUE (user_id, item_key))",
    "CREATE INDEX IF NOT EXISTS items_by_user ON items (user_id, id)",
    "CREATE TABLE IF NOT EXISTS feedback (id {serial}, user_id TEXT NOT NULL, "
    "input TEXT NOT NULL, output TEXT NOT NULL, rating {real}, created {real} NOT NULL)",
)


class _SQLite:
    words = {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL"}

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")

    def run(self, sql: str, args=()):
        return self.db.execute(sql, args)

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def close(self) -> None:
        self.db.close()

    def lost(self, err: BaseException) -> bool:
        return False          # a file does not go away under a running process

    def reconnect(self) -> None:
        raise AssertionError("an SQLite store is never lost")


class _Postgres:
    words = {"serial": "BIGSERIAL PRIMARY KEY", "real": "DOUBLE PRECISION"}

    def __init__(self, url: str):
        try:
            import psycopg
        except ImportError:
            raise ImportError("a postgresql:// store needs psycopg 3: pip install 'ttp[postgres]'") from None
        self.psycopg, self.url = psycopg, url
        self.db = psycopg.connect(url, autocommit=True)

    def run(self, sql: str, args=()):
        return self.db.execute(sql.replace("?", "%s"), args)

    def begin(self) -> None:
        self.db.execute("BEGIN")

    def close(self) -> None:
        self.db.close()

    def lost(self, err: BaseException) -> bool:
        """Whether ``err`` means the connection is gone (a restarted or unreachable server)."""
        return isinstance(err, self.psycopg.OperationalError) and (self.db.broken or self.db.closed)

    def reconnect(self) -> None:
        self.db.close()
        self.db = self.psycopg.connect(self.url, autocommit=True, connect_timeout=5)


def is_url(location: str | Path) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


class StoreUnavailable(RuntimeError):
    """The store cannot be reached now (a restarting server); the request may be retried."""


class ProfileStore:
    """``ProfileStore(path or postgresql:// URL)``; ``profile(user)``, ``add_feedback(...)``,
    ``import_task(task)``, ``export(path)`` / ``import_export(path)``, ``copy_to(other)``."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self.path = None if is_url(location) else Path(location)
        self._lock = threading.Lock()
        self._engine = _Postgres(self.location) if self.path is None else _SQLite(self.path)
        with self._lock:
            for statement in SCHEMA:
                self._engine.run(statement.format(**self._engine.words))

    def __str__(self) -> str:
        return str(self.path) if self.path else self.location.split("@")[-1]   # no password in messages

    def close(self) -> None:
        with self._lock:
            self._engine.close()

    def _read(self, sql: str, args=()) -> list[tuple]:
        """Rows of one query; a lost connection is opened again and the query asked once more."""
        with self._lock:
            for attempt in range(2):
                try:
                    return [tuple(row) for row in self._engine.run(sql, args).fetchall()]
                except Exception as err:
                    if not self._engine.lost(err):
                        raise
                    if attempt:
                        raise self._unavailable(err) from None
                    self._reconnect(err)

    def _write(self, statements) -> None:
        """Run ``(sql, args)`` pairs in one transaction, committed before returning.  A
        connection lost before the commit was sent is opened again and the transaction run once
        more; one lost during the commit raises ``StoreUnavailable``, since it may have been
        stored, and only an acknowledged write is promised."""
        with self._lock:
            for attempt in range(2):
                committing = False
                try:
                    self._engine.begin()
                    for sql, args in statements:
                        self._engine.run(sql, args)
                    committing = True
                    self._engine.run("COMMIT")
                    return
                except Exception as err:
                    if not self._engine.lost(err):
                        self._engine.run("ROLLBACK")
                        raise
                    if committing or attempt:
                        raise self._unavailable(err) from None
                    self._reconnect(err)

    def _reconnect(self, cause: Exception) -> None:
        try:
            self._engine.reconnect()
        except Exception as err:
            raise self._unavailable(err) from cause

    def _unavailable(self, err: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"the profile store {self} cannot be reached now ({type(err).__name__}); retry")

    def import_task(self, task: Task) -> int:
        """Every user's profile items from a LaMP-layout task; items already there are kept once."""
        now, rows, users = time.time(), [], {}
        for query in task.queries:
            users[query.user] = now
            for item in query.profile:
                rows.append((query.user, item.id, item.source, item.output, now, f"task:{task.name}"))
        return self._insert(users, rows, [])

    def _insert(self, users: dict, items: list[tuple], feedback: list[tuple]) -> int:
        before = self.count_items()
        self._write([("INSERT INTO users (id, created) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", (u, t))
                     for u, t in users.items()] +
                    [("INSERT INTO items (user_id, item_key, input, output, created, origin) VALUES "
                      "(?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, item_key) DO NOTHING", row) for row in items] +
                    [("INSERT INTO feedback (user_id, input, output, rating, created) VALUES (?, ?, ?, ?, ?)", row)
                     for row in feedback])
        return self.count_items() - before

    def add_feedback(self, user: str, text: str, output: str, rating: float | None = None) -> int:
        """Log the feedback and append (input, output) to the user's profile; returns the
        user's profile size once written."""
        now = time.time()
        key = f"feedback-{time.time_ns()}-{secrets.token_hex(4)}"   # unique across workers
        self._write([
            ("INSERT INTO users (id, created) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", (user, now)),
            ("INSERT INTO feedback (user_id, input, output, rating, created) VALUES (?, ?, ?, ?, ?)",
             (user, text, output, rating, now)),
            ("INSERT INTO items (user_id, item_key, input, output, created, origin) VALUES (?, ?, ?, ?, ?, ?)",
             (user, key, text, output, now, "feedback")),
        ])
        return len(self.profile(user))

    def has_user(self, user: str) -> bool:
        return bool(self._read("SELECT 1 FROM users WHERE id = ?", (user,)))

    def profile(self, user: str) -> tuple[ProfileItem, ...]:
        """The user's items, oldest first."""
        rows = self._read("SELECT item_key, output, input FROM items WHERE user_id = ? ORDER BY id", (user,))
        return tuple(ProfileItem(key, output, source) for key, output, source in rows)

    def feedback(self, user: str) -> list[tuple[str, str, float | None]]:
        return self._read("SELECT input, output, rating FROM feedback WHERE user_id = ? ORDER BY id", (user,))

    def count_items(self) -> int:
        return self._read("SELECT COUNT(*) FROM items")[0][0]

    def records(self) -> list[dict]:
        """Every user with their profile items and feedback, oldest first: what ``export`` writes
        and ``load_records`` reads back, on either engine."""
        users = {u: {"user": u, "created": t, "profile": [], "feedback": []}
                 for u, t in self._read("SELECT id, created FROM users ORDER BY id")}
        for user, key, text, output, created, origin in self._read(
                "SELECT user_id, item_key, input, output, created, origin FROM items ORDER BY id"):
            users[user]["profile"].append({"id": key, "input": text, "output": output, "created": created,
                                           "origin": origin})
        for user, text, output, rating, created in self._read(
                "SELECT user_id, input, output, rating, created FROM feedback ORDER BY id"):
            users[user]["feedback"].append({"input": text, "output": output, "rating": rating, "created": created})
        return list(users.values())

    def load_records(self, records: list[dict]) -> int:
        """Users, items and feedback as ``records`` gives them; what the store holds already is
        kept once (an item by its key, a feedback entry by its time and text).  Returns the items added."""
        known = set(self._read("SELECT user_id, input, output, created FROM feedback"))
        users = {r["user"]: r["created"] for r in records}
        items = [(r["user"], it["id"], it["input"], it["output"], it["created"], it["origin"])
                 for r in records for it in r["profile"]]
        feedback = [(r["user"], f["input"], f["output"], f["rating"], f["created"]) for r in records
                    for f in r["feedback"] if (r["user"], f["input"], f["output"], f["created"]) not in known]
        return self._insert(users, items, feedback)

    def copy_to(self, other: "ProfileStore") -> int:
        """Every user, item and feedback entry into ``other`` (e.g. SQLite to Postgres), in order."""
        return other.load_records(self.records())

    def export(self, path: str | Path) -> int:
        """Write ``records`` as JSON Lines, one user a line, atomically; returns the users written."""
        records = self.records()
        write_bytes_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
        return len(records)

    def import_export(self, path: str | Path) -> int:
        """Load a file ``export`` wrote; a bad line is named by its number and field."""
        return self.load_records(read_export(Path(path)))


def _text(value) -> bool:
    return isinstance(value, str)


def _time(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rating(value) -> bool:
    return value is None or _time(value)


FIELDS = {"user": {"user": _text, "created": _time, "profile": list, "feedback": list},
          "profile": {"id": _text, "input": _text, "output": _text, "created": _time, "origin": _text},
          "feedback": {"input": _text, "output": _text, "rating": _rating, "created": _time}}


class ExportError(ValueError):
    """A profile export cannot be read; the message names the file, the line and the field."""


def _check(record, kind: str, where: str) -> None:
    if not isinstance(record, dict):
        raise ExportError(f"{where}: not a JSON object")
    for field, valid in FIELDS[kind].items():
        value = record.get(field)
        if not (isinstance(value, valid) if isinstance(valid, type) else valid(value)):
            raise ExportError(f"{where}: field {field!r}: {value!r} is not what an export holds there")


def read_export(path: Path) -> list[dict]:
    """The records of a ``ttp profiles export`` file, each checked before any is loaded."""
    if not path.exists():
        raise ExportError(f"{path}: file not found")
    records = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ExportError(f"{path}: line {number}: not a JSON object ({err})") from None
        _check(record, "user", f"{path}: line {number}")
        for kind in ("profile", "feedback"):
            for i, entry in enumerate(record[kind]):
                _check(entry, kind, f"{path}: line {number}: {kind}[{i}]")
        records.append(record)
    return records
