"""The profile store on both engines, SQLite and a real PostgreSQL server started by the test
run: the same tests, two workers sharing one store, and the migration from one to the other."""
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
    from ttp.serve.store import ExportError, read_export

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
