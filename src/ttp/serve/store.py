"""The profile store: users, their profile items, the feedback log and the counters of the
server's limits, in SQLite (the embedded default) or PostgreSQL (``postgresql://...``, psycopg 3),
behind one schema and one set of queries.

SQLite runs in WAL mode with ``synchronous=FULL``: a write is acknowledged only after it is on
disk, and readers never block the writer, so a ``kill -9`` loses nothing acknowledged.
PostgreSQL is durable by default and lets several ``ttp serve`` workers share one store.

Every request reads the user's profile from the store, and retrieval is cached per profile by
``ttp.tasks.prompts``: an item another worker wrote changes the profile, so the cache key, and
the next request retrieves from it; nothing is rebuilt for a user whose profile did not change.

The limits (feedback and requests a minute, per user and per key) are counted here too, so that
every worker on one store enforces one count: ``take`` reads and appends a subject's events in
one transaction, serialized per subject (SQLite's write lock; PostgreSQL's advisory
transaction locks).  A user's rows (``user_record``, ``erase_user``) are every row that names
them: items, feedback and their limit counters; ``written_by`` names the API key that wrote a
feedback entry and the profile item it made, so ``erase_written_by`` removes one key's writes."""
from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from pathlib import Path

from ttp.serve.export_file import read_export, write_export
from ttp.tasks.data import ProfileItem, Task

WINDOW_S = 60.0       # the limits' sliding window

# {serial} and {real} are the two words the engines spell differently
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, created {real} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS items (id {serial}, user_id TEXT NOT NULL "
    "REFERENCES users(id), item_key TEXT NOT NULL, input TEXT NOT NULL, output TEXT NOT NULL, "
    "created {real} NOT NULL, origin TEXT NOT NULL, written_by TEXT, UNIQUE (user_id, item_key))",
    "CREATE INDEX IF NOT EXISTS items_by_user ON items (user_id, id)",
    "CREATE TABLE IF NOT EXISTS feedback (id {serial}, user_id TEXT NOT NULL, "
    "input TEXT NOT NULL, output TEXT NOT NULL, rating {real}, created {real} NOT NULL, written_by TEXT)",
    "CREATE INDEX IF NOT EXISTS feedback_by_user ON feedback (user_id, id)",
    "CREATE TABLE IF NOT EXISTS limit_events (bucket TEXT NOT NULL, subject TEXT NOT NULL, at {real} NOT NULL)",
    "CREATE INDEX IF NOT EXISTS limit_events_by_subject ON limit_events (bucket, subject, at)",
    "CREATE TABLE IF NOT EXISTS imports (source TEXT PRIMARY KEY, at {real} NOT NULL)",
)
# columns added to tables of the first schema: a store made before them gains them when opened
ADDED_COLUMNS = (("items", "written_by TEXT"), ("feedback", "written_by TEXT"))


class _SQLite:
    words = {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL"}

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")

    def run(self, sql: str, args=()):
        return self.db.execute(sql, args)

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")      # the write lock, held by one process at a time

    def serialize(self, names: list[str]) -> None:
        """Nothing to add: BEGIN IMMEDIATE already serializes every writer of the file."""

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}

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

    def serialize(self, names: list[str]) -> None:
        """Transactions naming the same name run one after another (until COMMIT); taken in
        sorted order, so that two never wait for each other."""
        for name in sorted(set(names)):
            self.run("SELECT pg_advisory_xact_lock(hashtext(?))", (name,))

    def columns(self, table: str) -> set[str]:
        rows = self.run("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                        "AND table_schema = current_schema()", (table,))
        return {row[0] for row in rows}

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


def user_subject(user: str) -> str:
    return f"user:{user}"


def key_subject(key_name: str) -> str:
    return f"key:{key_name}"


class ProfileStore:
    """``ProfileStore(path or postgresql:// URL)``; ``profile(user)``, ``add_feedback(...)``,
    ``take(...)`` (a limit's count), ``user_record(user)`` / ``erase_user(user)``,
    ``import_task(task)``, ``export(path)`` / ``import_export(path)``, ``copy_to(other)``."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self.path = None if is_url(location) else Path(location)
        self._lock = threading.Lock()
        self._engine = _Postgres(self.location) if self.path is None else _SQLite(self.path)
        with self._lock:
            for statement in SCHEMA:
                self._engine.run(statement.format(**self._engine.words))
            for table, column in ADDED_COLUMNS:
                if column.split()[0] not in self._engine.columns(table):
                    self._engine.run(f"ALTER TABLE {table} ADD COLUMN {column}")

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

    def _transaction(self, work):
        """``work(run)`` in one transaction, committed before returning what it returns; ``run(sql,
        args)`` gives a query's rows.  A connection lost before the commit was sent is opened
        again and the transaction run once more; one lost during the commit raises
        ``StoreUnavailable``, since it may have been stored, and only an acknowledged write is promised."""
        def run(sql: str, args=()) -> list[tuple]:
            cursor = self._engine.run(sql, args)
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []

        with self._lock:
            for attempt in range(2):
                committing = False
                try:
                    self._engine.begin()
                    result = work(run)
                    committing = True
                    self._engine.run("COMMIT")
                    return result
                except Exception as err:
                    if not self._engine.lost(err):
                        self._engine.run("ROLLBACK")
                        raise
                    if committing or attempt:
                        raise self._unavailable(err) from None
                    self._reconnect(err)

    def _write(self, statements) -> None:
        """Run ``(sql, args)`` pairs in one transaction (``_transaction``)."""
        self._transaction(lambda run: [run(sql, args) for sql, args in statements])

    def _reconnect(self, cause: Exception) -> None:
        try:
            self._engine.reconnect()
        except Exception as err:
            raise self._unavailable(err) from cause

    def _unavailable(self, err: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"the profile store {self} cannot be reached now ({type(err).__name__}); retry")

    # ---- profiles -----------------------------------------------------------------------------
    def import_task(self, task: Task) -> int:
        """Every user's profile items from a LaMP-layout task; items already there are kept once."""
        now, rows, users = time.time(), [], {}
        for query in task.queries:
            users[query.user] = now
            for item in query.profile:
                rows.append((query.user, item.id, item.source, item.output, now, f"task:{task.name}", None))
        added = self._insert(users, rows, [])
        self._write([("INSERT INTO imports (source, at) VALUES (?, ?) ON CONFLICT (source) DO NOTHING",
                      (f"task:{task.name}", now))])
        return added

    def imported(self, task_name: str) -> bool:
        """Whether the task's profiles were imported once (so that ``ttp serve`` does not import
        again, and bring back a user erased since)."""
        source = f"task:{task_name}"
        return bool(self._read("SELECT 1 FROM imports WHERE source = ?", (source,))
                    or self._read("SELECT 1 FROM items WHERE origin = ? LIMIT 1", (source,)))

    def _insert(self, users: dict, items: list[tuple], feedback: list[tuple]) -> int:
        before = self.count_items()
        self._write([("INSERT INTO users (id, created) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", (u, t))
                     for u, t in users.items()] +
                    [("INSERT INTO items (user_id, item_key, input, output, created, origin, written_by) VALUES "
                      "(?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, item_key) DO NOTHING", row) for row in items] +
                    [("INSERT INTO feedback (user_id, input, output, rating, created, written_by) "
                      "VALUES (?, ?, ?, ?, ?, ?)", row) for row in feedback])
        return self.count_items() - before

    def add_feedback(self, user: str, text: str, output: str, rating: float | None = None,
                     written_by: str | None = None) -> int:
        """Log the feedback and append (input, output) to the user's profile, both marked with
        ``written_by`` (the API key's name); returns the user's profile size once written."""
        now = time.time()
        key = f"feedback-{time.time_ns()}-{secrets.token_hex(4)}"   # unique across workers
        self._write([
            ("INSERT INTO users (id, created) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", (user, now)),
            ("INSERT INTO feedback (user_id, input, output, rating, created, written_by) VALUES (?, ?, ?, ?, ?, ?)",
             (user, text, output, rating, now, written_by)),
            ("INSERT INTO items (user_id, item_key, input, output, created, origin, written_by) "
             "VALUES (?, ?, ?, ?, ?, ?, ?)", (user, key, text, output, now, "feedback", written_by)),
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

    # ---- limits -------------------------------------------------------------------------------
    def take(self, bucket: str, per_minute: int, user: str | None = None, key_name: str | None = None,
             now: float | None = None) -> float:
        """One event of ``bucket`` (``"feedback"``, ``"requests"``) for the user and for the key,
        each allowed ``per_minute`` in any 60 s, counted in the store for every worker on it:
        0 where both have room now (the event is then counted for each), else the seconds until
        both have, counting nothing."""
        subjects = ([user_subject(user)] if user is not None else []) + \
                   ([key_subject(key_name)] if key_name is not None else [])
        now = time.time() if now is None else now

        def count(run) -> float:
            self._engine.serialize([f"{bucket}/{subject}" for subject in subjects])
            wait = 0.0
            for subject in subjects:
                run("DELETE FROM limit_events WHERE bucket = ? AND subject = ? AND at <= ?",
                    (bucket, subject, now - WINDOW_S))
                (events, oldest), = run("SELECT COUNT(*), MIN(at) FROM limit_events WHERE bucket = ? AND subject = ?",
                                        (bucket, subject))
                if events >= per_minute:
                    wait = max(wait, oldest + WINDOW_S - now)
            if wait == 0:
                for subject in subjects:
                    run("INSERT INTO limit_events (bucket, subject, at) VALUES (?, ?, ?)", (bucket, subject, now))
            return wait

        return self._transaction(count) if subjects else 0.0

    # ---- a user's data: export and erasure ----------------------------------------------------
    def records(self, user: str | None = None) -> list[dict]:
        """Every user (or the one ``user``) with their profile items and feedback, oldest first:
        what ``export`` writes and ``load_records`` reads back, on either engine."""
        where, args = (" WHERE id = ?", (user,)) if user is not None else ("", ())
        by_user = (" WHERE user_id = ?", (user,)) if user is not None else ("", ())
        users = {u: {"user": u, "created": t, "profile": [], "feedback": []}
                 for u, t in self._read(f"SELECT id, created FROM users{where} ORDER BY id", args)}
        for owner, key, text, output, created, origin, writer in self._read(
                f"SELECT user_id, item_key, input, output, created, origin, written_by FROM items{by_user[0]} "
                f"ORDER BY id", by_user[1]):
            users[owner]["profile"].append({"id": key, "input": text, "output": output, "created": created,
                                            "origin": origin, "written_by": writer})
        for owner, text, output, rating, created, writer in self._read(
                f"SELECT user_id, input, output, rating, created, written_by FROM feedback{by_user[0]} ORDER BY id",
                by_user[1]):
            users[owner]["feedback"].append({"input": text, "output": output, "rating": rating, "created": created,
                                             "written_by": writer})
        return list(users.values())

    def user_record(self, user: str) -> dict | None:
        """Everything the store holds of one user (``records``' shape), or None for a user it does not know."""
        found = self.records(user)
        return found[0] if found else None

    def erase_user(self, user: str) -> dict | None:
        """Delete every row of the user, in one transaction: profile items, feedback, limit
        counters, the user; the counts deleted, or None for a user the store does not know."""
        def erase(run) -> dict | None:
            if not run("SELECT 1 FROM users WHERE id = ?", (user,)):
                return None
            items = run("SELECT COUNT(*) FROM items WHERE user_id = ?", (user,))[0][0]
            feedback = run("SELECT COUNT(*) FROM feedback WHERE user_id = ?", (user,))[0][0]
            for table, column, value in (("items", "user_id", user), ("feedback", "user_id", user),
                                         ("limit_events", "subject", user_subject(user)), ("users", "id", user)):
                run(f"DELETE FROM {table} WHERE {column} = ?", (value,))
            return {"profile_items": items, "feedback": feedback}

        return self._transaction(erase)

    def erase_written_by(self, key_name: str) -> dict:
        """Delete every feedback entry one API key wrote and the profile items it made; the counts."""
        def erase(run) -> dict:
            counts = {}
            for table, label in (("items", "profile_items"), ("feedback", "feedback")):
                counts[label] = run(f"SELECT COUNT(*) FROM {table} WHERE written_by = ?", (key_name,))[0][0]
                run(f"DELETE FROM {table} WHERE written_by = ?", (key_name,))
            return counts

        return self._transaction(erase)

    # ---- moving a store -----------------------------------------------------------------------
    def load_records(self, records: list[dict]) -> int:
        """Users, items and feedback as ``records`` gives them; what the store holds already is
        kept once (an item by its key, a feedback entry by its time and text).  Returns the items added."""
        known = set(self._read("SELECT user_id, input, output, created FROM feedback"))
        users = {r["user"]: r["created"] for r in records}
        items = [(r["user"], it["id"], it["input"], it["output"], it["created"], it["origin"], it.get("written_by"))
                 for r in records for it in r["profile"]]
        feedback = [(r["user"], f["input"], f["output"], f["rating"], f["created"], f.get("written_by"))
                    for r in records for f in r["feedback"]
                    if (r["user"], f["input"], f["output"], f["created"]) not in known]
        return self._insert(users, items, feedback)

    def copy_to(self, other: "ProfileStore") -> int:
        """Every user, item and feedback entry into ``other`` (e.g. SQLite to Postgres), in order."""
        return other.load_records(self.records())

    def export(self, path: str | Path, user: str | None = None) -> int:
        """Write ``records`` (of every user, or of ``user``) as JSON Lines, one user a line,
        atomically; returns the users written."""
        return write_export(path, self.records(user))

    def import_export(self, path: str | Path) -> int:
        """Load a file ``export`` wrote; a bad line is named by its number and field."""
        return self.load_records(read_export(Path(path)))
