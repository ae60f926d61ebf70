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
