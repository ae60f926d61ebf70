"""The profile store: users, their profile items and the feedback log, in SQLite.

SQLite runs in WAL mode with ``synchronous=FULL``: a write is acknowledged only after it is on
disk, and readers never block the writer, so a ``kill -9`` loses nothing acknowledged.  The SQL
is portable (no SQLite-only types or functions in the queries); moving to Postgres means
another connection factory and ``%s`` placeholders, nothing else (docs/serving.md).

Retrieval over a user's items is cached per profile by ``ttp.tasks.prompts``: a new item
changes the profile and so the cache key, and nothing is rebuilt for a user whose profile did
not change."""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from ttp.tasks.data import ProfileItem, Task

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, created REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL "
    "REFERENCES users(id), item_key TEXT NOT NULL, input TEXT NOT NULL, output TEXT NOT NULL, "
    "created REAL NOT NULL, origin TEXT NOT NULL, UNIQUE (user_id, item_key))",
    "CREATE INDEX IF NOT EXISTS items_by_user ON items (user_id, id)",
    "CREATE TABLE IF NOT EXISTS feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, "
    "input TEXT NOT NULL, output TEXT NOT NULL, rating REAL, created REAL NOT NULL)",
)


class ProfileStore:
    """``ProfileStore(path)``; ``profile(user)``, ``add_feedback(...)``, ``import_task(task)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            for statement in SCHEMA:
                self._db.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, statements) -> None:
        """Run ``(sql, args)`` pairs in one transaction, committed before returning."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def import_task(self, task: Task) -> int:
        """Every user's profile items from a LaMP-layout task; items already there are kept once."""
        now, rows, users = time.time(), [], {}
        for query in task.queries:
            users[query.user] = now
            for item in query.profile:
                rows.append((query.user, item.id, item.source, item.output, now, f"task:{task.name}"))
        before = self.count_items()
        self._write([("INSERT INTO users (id, created) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", (u, t))
                     for u, t in users.items()] +
                    [("INSERT INTO items (user_id, item_key, input, output, created, origin) VALUES "
                      "(?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, item_key) DO NOTHING", row) for row in rows])
        return self.count_items() - before

    def add_feedback(self, user: str, text: str, output: str, rating: float | None = None) -> int:
        """Log the feedback and append (input, output) to the user's profile; returns the
        user's profile size once written."""
        now = time.time()
        with self._lock:
            count = self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        key = f"feedback-{count + 1}-{now:.6f}"
        self._write([
            ("INSERT INTO users (id, created) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", (user, now)),
            ("INSERT INTO feedback (user_id, input, output, rating, created) VALUES (?, ?, ?, ?, ?)",
             (user, text, output, rating, now)),
            ("INSERT INTO items (user_id, item_key, input, output, created, origin) VALUES (?, ?, ?, ?, ?, ?)",
             (user, key, text, output, now, "feedback")),
        ])
        return len(self.profile(user))

    def has_user(self, user: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM users WHERE id = ?", (user,)).fetchone() is not None

    def profile(self, user: str) -> tuple[ProfileItem, ...]:
        """The user's items, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT item_key, output, input FROM items WHERE user_id = ? ORDER BY id",
                                    (user,)).fetchall()
        return tuple(ProfileItem(key, output, source) for key, output, source in rows)

    def feedback(self, user: str) -> list[tuple[str, str, float | None]]:
        with self._lock:
            return self._db.execute("SELECT input, output, rating FROM feedback WHERE user_id = ? ORDER BY id",
                                    (user,)).fetchall()

    def count_items(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
