"""The profile store: users, their profile items and the feedback log, in SQLite (the embedded
default) or PostgreSQL (``postgresql://...``, psycopg 3), behind one schema and one set of queries.

SQLite runs in WAL mode with ``synchronous=FULL``: a write is acknowledged only after it is on
disk, and readers never block the writer, so a ``kill -9`` loses nothing acknowledged.
PostgreSQL is durable by default and lets several ``ttp serve`` workers share one store.

Every request reads the user's profile from the store, and retrieval is cached per profile by
``ttp.tasks.prompts``: an item another worker wrote changes the profile, so the cache key, and
the next request retrieves from it; nothing is rebuilt for a user whose profile did not change."""
from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from pathlib import Path

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


class _Postgres:
    words = {"serial": "BIGSERIAL PRIMARY KEY", "real": "DOUBLE PRECISION"}

    def __init__(self, url: str):
        try:
            import psycopg
        except ImportError:
            raise ImportError("a postgresql:// store needs psycopg 3: pip install 'ttp[postgres]'") from None
        self.db = psycopg.connect(url, autocommit=True)

    def run(self, sql: str, args=()):
        return self.db.execute(sql.replace("?", "%s"), args)

    def begin(self) -> None:
        self.db.execute("BEGIN")

    def close(self) -> None:
        self.db.close()


def is_url(location: str | Path) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


class ProfileStore:
    """``ProfileStore(path or postgresql:// URL)``; ``profile(user)``, ``add_feedback(...)``,
    ``import_task(task)``, ``copy_to(other)``."""

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
        with self._lock:
            return [tuple(row) for row in self._engine.run(sql, args).fetchall()]

    def _write(self, statements) -> None:
        """Run ``(sql, args)`` pairs in one transaction, committed before returning."""
        with self._lock:
            self._engine.begin()
            try:
                for sql, args in statements:
                    self._engine.run(sql, args)
                self._engine.run("COMMIT")
            except BaseException:
                self._engine.run("ROLLBACK")
                raise

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

    def copy_to(self, other: "ProfileStore") -> int:
        """Every user, item and feedback entry into ``other`` (e.g. SQLite to Postgres), in order;
        what ``other`` already holds is kept once.  Returns the items added."""
        users = dict(self._read("SELECT id, created FROM users ORDER BY id"))
        items = self._read("SELECT user_id, item_key, input, output, created, origin FROM items ORDER BY id")
        known = set(other._read("SELECT user_id, input, output, created FROM feedback"))
        feedback = [row for row in self._read("SELECT user_id, input, output, rating, created FROM feedback "
                                              "ORDER BY id") if (row[0], row[1], row[2], row[4]) not in known]
        return other._insert(users, items, feedback)
