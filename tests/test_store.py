"""The profile store on both engines, SQLite and a real PostgreSQL server started by the test
run: the same tests, two workers sharing one store and its limits, a user's export and erasure,
provenance, and the migration from one to the other."""
import json

import pytest

from ttp.serve.store import ProfileStore
from ttp.tasks.prompts import retrieve


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def location(request, tmp_path):
    return str(tmp_path / "profiles.sqlite") if request.param == "sqlite" else request.getfixturevalue("fresh_database")


def test_a_task_imports_once_and_profiles_keep_their_order(location, pep_task):
    store = ProfileStore(location)
    added = store.import_task(pep_task)
    assert added == len({(q.user, i.id) for q in pep_task.queries for i in q.profile})
    assert store.import_task(pep_task) == 0                      # a second import keeps every item once
    query = pep_task.queries[0]
    expected = {}
    for q in pep_task.queries:
        if q.user == query.user:
            expected.update({item.id: item for item in q.profile if item.id not in expected})
    assert store.profile(query.user) == tuple(expected.values()) and store.has_user(query.user)
    assert not store.has_user("nobody") and store.profile("nobody") == ()


def test_feedback_is_logged_and_joins_the_profile(location):
    store = ProfileStore(location)
    assert store.add_feedback("ü-user", "Ein Eingang ✓", "Eine Ausgabe", 0.5) == 1
    assert store.add_feedback("ü-user", "second", "out", None) == 2
    assert store.feedback("ü-user") == [("Ein Eingang ✓", "Eine Ausgabe", 0.5), ("second", "out", None)]
    keys = [item.id for item in store.profile("ü-user")]
    assert len(set(keys)) == 2 and all(k.startswith("feedback-") for k in keys)
    with pytest.raises(Exception):
        store._write([("INSERT INTO items (user_id, item_key, input, output, created, origin) "
                       "VALUES (?, ?, ?, ?, ?, ?)", ("no-such-user", "k", "i", "o", 0.0, "x"))])
    assert store.profile("no-such-user") == ()                   # the failed transaction left nothing


@pytest.mark.slow
def test_two_workers_on_one_postgres_see_each_others_writes_on_the_next_request(fresh_database, pep_task):
    a, b = ProfileStore(fresh_database), ProfileStore(fresh_database)
    a.import_task(pep_task)
    query = pep_task.queries[0]
    before = retrieve(query, 3)
    a.add_feedback(query.user, query.input, "Zebra Quokka Wombat Handshakes")
    seen = b.profile(query.user)
    assert seen[:-1] == a.profile(query.user)[:-1] and seen[-1].output == "Zebra Quokka Wombat Handshakes"
    # worker B's next retrieval is over the new profile (its cache is keyed by the profile itself)
    from dataclasses import replace

    zebra = replace(query, input="zebra quokka wombat handshakes", profile=seen)
    assert retrieve(zebra, 3)[0].output == "Zebra Quokka Wombat Handshakes"
    assert before == retrieve(query, 3)


@pytest.mark.slow
def test_one_command_migrates_sqlite_to_postgres(tmp_path, fresh_database, pep_task, capsys):
    from ttp.cli import main

    sqlite = tmp_path / "profiles.sqlite"
    source = ProfileStore(sqlite)
    source.import_task(pep_task)
    source.add_feedback("u1", "in", "out", 1.0)
    assert main(["profiles", "copy", str(sqlite), fresh_database]) == 0
    target = ProfileStore(fresh_database)
    for user in {q.user for q in pep_task.queries} | {"u1"}:
        assert target.profile(user) == source.profile(user)
    assert target.feedback("u1") == [("in", "out", 1.0)]
    assert main(["profiles", "copy", str(sqlite), fresh_database]) == 0       # a rerun adds nothing
    assert target.feedback("u1") == [("in", "out", 1.0)] and target.count_items() == source.count_items()
    assert "postgres" in capsys.readouterr().out and "password" not in str(target)


def test_an_export_reads_back_into_either_store_and_names_a_bad_line(location, pep_task, tmp_path, capsys):
    from ttp.cli import main
    from ttp.serve.export_file import ExportError, read_export

    source = ProfileStore(tmp_path / "source.sqlite")
    source.import_task(pep_task)
    source.add_feedback("ü-user", "Ein Eingang ✓", "Eine Ausgabe", 0.5)
    export = tmp_path / "profiles.jsonl"
    assert main(["profiles", "export", str(tmp_path / "source.sqlite"), str(export)]) == 0
    assert len(export.read_text(encoding="utf-8").splitlines()) == len(pep_task.users) + 1
    assert main(["profiles", "import", str(export), "--db", location]) == 0
    target = ProfileStore(location)
    assert target.records() == source.records()
    assert main(["profiles", "import", str(export), "--db", location]) == 0    # a rerun adds nothing
    assert target.records() == source.records()
    lines = export.read_text(encoding="utf-8").splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([lines[0], lines[1].replace('"output"', '"outcome"', 1)]), encoding="utf-8")
    with pytest.raises(ExportError, match=r"broken.jsonl: line 2: profile\[0\]: field 'output'"):
        read_export(broken)
    assert main(["profiles", "import", str(broken), "--db", location]) == 1
    assert "line 2" in capsys.readouterr().err and target.records() == source.records()


@pytest.mark.slow
def test_a_restarted_postgres_is_reconnected_and_no_acknowledged_write_is_lost(tmp_path):
    import pgserver
    from pgserver._commands import pg_ctl

    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    try:
        store = ProfileStore(server.get_uri())
        store.add_feedback("u", "before", "out")
        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=60)
        assert [text for text, _, _ in store.feedback("u")] == ["before"]        # a read opens a new connection
        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=60)
        store.add_feedback("u", "after", "out")                                  # so does a write, before BEGIN
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=60)
        from ttp.serve.store import StoreUnavailable

        with pytest.raises(StoreUnavailable, match="cannot be reached now"):
            store.add_feedback("u", "while down", "out")
        server.ensure_postgres_running()
        assert [text for text, _, _ in store.feedback("u")] == ["before", "after"]
    finally:
        server.cleanup()


def test_a_limit_is_a_sliding_minute_shared_by_every_connection_and_counting_only_what_it_lets_through(location):
    a, b = ProfileStore(location), ProfileStore(location)          # two workers on one store
    assert a.take("feedback", 2, "alice", "k", now=0.0) == 0
    assert b.take("feedback", 2, "alice", "k", now=1.0) == 0
    assert a.take("feedback", 2, "alice", "k", now=2.0) == pytest.approx(58)
    assert b.take("feedback", 2, "bob", "k", now=2.0) == pytest.approx(58)      # the key is spent, whichever user
    assert b.take("feedback", 2, "bob", "j", now=30.0) == 0                     # refused above: bob counted nothing
    assert a.take("requests", 2, "alice", "k", now=30.0) == 0                   # another bucket, its own count
    assert a.take("feedback", 2, "alice", "k", now=60.0) == 0                   # the event of t = 0 has left
    assert a.take("feedback", 1, None, None) == 0                               # nobody to count: no limit


@pytest.mark.slow
def test_workers_racing_on_one_postgres_let_through_exactly_the_limit(fresh_database):
    import threading

    stores = [ProfileStore(fresh_database) for _ in range(4)]
    allowed, start = [], threading.Barrier(len(stores))

    def flood(store):
        start.wait()
        allowed.extend(store.take("feedback", 25, "alice", "app", now=100.0) == 0 for _ in range(20))

    threads = [threading.Thread(target=flood, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 25 and len(allowed) == 80


def test_a_users_data_is_exported_and_erased_to_the_last_row(location, pep_task):
    store = ProfileStore(location)
    store.import_task(pep_task)
    user = pep_task.queries[0].user
    other = next(q.user for q in pep_task.queries if q.user != user)
    store.add_feedback(user, "in", "out", 1.0, written_by="alice-app")
    store.take("feedback", 5, user, "alice-app")
    record = store.user_record(user)
    assert record["user"] == user and len(record["profile"]) == len(store.profile(user))
    assert record["feedback"][0] | {"created": 0} == {"input": "in", "output": "out", "rating": 1.0,
                                                     "created": 0, "written_by": "alice-app"}
    assert record["profile"][-1]["written_by"] == "alice-app" and record["profile"][0]["written_by"] is None
    others_before = store.user_record(other)

    assert store.erase_user(user) == {"profile_items": len(record["profile"]), "feedback": 1}
    assert store.user_record(user) is None and not store.has_user(user) and store.erase_user(user) is None
    for table, column in (("items", "user_id"), ("feedback", "user_id"), ("users", "id")):
        assert store._read(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (user,)) == [(0,)]
    assert store._read("SELECT subject FROM limit_events") == [("key:alice-app",)]   # the key's count is no user's
    assert store.user_record(other) == others_before
    # serving again does not import the task again, which would bring the erased user back
    assert store.imported(pep_task.name) and not store.has_user(user)


def test_what_one_key_wrote_is_erased_and_nothing_else(location):
    store = ProfileStore(location)
    store.add_feedback("u", "kept", "out", written_by="good")
    store.add_feedback("u", "gone", "out", written_by="leaked")
    store.add_feedback("v", "gone too", "out", written_by="leaked")
    store.add_feedback("v", "no key", "out")
    assert store.erase_written_by("leaked") == {"profile_items": 2, "feedback": 2}
    assert [f[0] for f in store.feedback("u")] == ["kept"] and [f[0] for f in store.feedback("v")] == ["no key"]
    assert [item.source for item in store.profile("v")] == ["no key"]


def test_a_store_made_before_provenance_gains_its_columns_and_an_old_export_still_loads(tmp_path, pep_task):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (id TEXT PRIMARY KEY, created REAL NOT NULL)")
    db.execute("CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, "
               "input TEXT NOT NULL, output TEXT NOT NULL, rating REAL, created REAL NOT NULL)")
    db.execute("INSERT INTO users VALUES ('u', 1.0)")
    db.execute("INSERT INTO feedback (user_id, input, output, rating, created) VALUES ('u', 'i', 'o', NULL, 1.0)")
    db.commit()
    db.close()
    store = ProfileStore(path)
    assert store.user_record("u")["feedback"] == [{"input": "i", "output": "o", "rating": None, "created": 1.0,
                                                   "written_by": None}]
    export = tmp_path / "old.jsonl"
    export.write_text('{"user": "w", "created": 2.0, "profile": [{"id": "a", "input": "i", "output": "o", '
                      '"created": 2.0, "origin": "x"}], "feedback": []}\n')
    fresh = ProfileStore(tmp_path / "fresh.sqlite")
    assert fresh.import_export(export) == 1 and fresh.user_record("w")["profile"][0]["written_by"] is None


def test_profiles_delete_and_a_one_user_export_from_the_command_line(tmp_path, capsys):
    from ttp.cli import main

    db = str(tmp_path / "profiles.sqlite")
    store = ProfileStore(db)
    store.add_feedback("u", "in", "out", written_by="leaked")
    store.add_feedback("v", "in", "out")
    out = tmp_path / "u.jsonl"
    assert main(["profiles", "export", db, str(out), "--user", "u"]) == 0
    assert [line["user"] for line in map(json.loads, out.read_text().splitlines())] == ["u"]
    assert main(["profiles", "delete", "--written-by", "leaked", "--db", db]) == 0
    assert "1 feedback entries" in capsys.readouterr().out and store.feedback("u") == []
    assert main(["profiles", "delete", "v", "--db", db]) == 0 and not store.has_user("v")
    assert main(["profiles", "delete", "v", "--db", db]) == 2
    assert "holds no data of user 'v'" in capsys.readouterr().err
    assert main(["profiles", "delete", "--db", db]) == 2
