import json

import pytest

from ttp.tasks.data import LAYOUTS, TaskFormatError, load_task, split_users, write_task


def test_pep_titles_subset_loads_with_its_documented_counts(pep_task):
    assert pep_task.layout.name == "lamp5-title"
    assert len(pep_task.queries) == 60
    assert len(pep_task.users) == 12
    sizes = [len(q.profile) for q in pep_task.queries]
    assert min(sizes) >= 4 and max(sizes) <= 8
    assert all(q.gold for q in pep_task.queries)


def test_round_trip_through_the_lamp_layout(pep_task, tmp_path):
    write_task(pep_task, tmp_path)
    again = load_task(tmp_path)
    assert again.queries == pep_task.queries
    assert again.layout == pep_task.layout


def _write(tmp_path, questions, golds):
    (tmp_path / "questions.json").write_text(json.dumps(questions))
    (tmp_path / "outputs.json").write_text(json.dumps({"task": "t", "golds": golds}))
    return tmp_path


GOOD = {"id": "q1", "input": "Generate a title for the following abstract of a paper: x",
        "profile": [{"id": "p1", "title": "T", "abstract": "A"}]}


@pytest.mark.parametrize("mutate, golds, message", [
    (lambda r: r.pop("input"), [{"id": "q1", "output": "g"}], r"questions.json: record q1: missing field 'input'"),
    (lambda r: r.update(input=3), [{"id": "q1", "output": "g"}], r"record q1: field 'input' must be a string"),
    (lambda r: r["profile"].append({"id": "p2", "title": "T"}), [{"id": "q1", "output": "g"}],
     r"record q1: field 'profile\[1\].abstract' is missing"),
    (lambda r: r["profile"][0].pop("abstract"), [{"id": "q1", "output": "g"}],
     r"questions.json: record q1: field 'profile\[0\]': cannot tell the profile layout"),
    (lambda r: r.update(profile=[]), [{"id": "q1", "output": "g"}], r"record q1: field 'profile' must be a non-empty"),
    (lambda r: None, [{"id": "q2", "output": "g"}], r"outputs.json: no gold output for query id q1"),
    (lambda r: None, [{"id": "q1"}], r"outputs.json: record q1: missing field 'output'"),
])
def test_broken_files_name_file_record_and_field(tmp_path, mutate, golds, message):
    record = json.loads(json.dumps(GOOD))
    mutate(record)
    with pytest.raises(TaskFormatError, match=message):
        load_task(_write(tmp_path, [record], golds))


def test_invalid_json_and_missing_files(tmp_path):
    (tmp_path / "questions.json").write_text("[{")
    (tmp_path / "outputs.json").write_text("{}")
    with pytest.raises(TaskFormatError, match=r"questions.json: not valid JSON"):
        load_task(tmp_path)
    with pytest.raises(TaskFormatError, match="file not found"):
        load_task(tmp_path / "nowhere")


def test_duplicate_ids_are_rejected(tmp_path):
    with pytest.raises(TaskFormatError, match="record q1: duplicate id"):
        load_task(_write(tmp_path, [GOOD, GOOD], [{"id": "q1", "output": "g"}]))


@pytest.mark.parametrize("item, text, layout", [
    ({"title": "h", "text": "t"}, "Generate a headline for the following article: x", "lamp4-headline"),
    ({"title": "t", "abstract": "a"}, "Generate a title for the following abstract of a paper: x", "lamp5-title"),
    ({"title": "t", "abstract": "a"}, "Generate an abstract for the title \"x\"", "longlamp-abstract"),
    ({"content": "c", "summary": "s"}, "Generate the content for a reddit post x", "longlamp-topic"),
    ({"reviewText": "r", "overall": 5.0, "summary": "s", "description": "d"}, "Generate the review", "longlamp-review"),
])
def test_layouts_of_lamp_and_longlamp_are_recognized(tmp_path, item, text, layout):
    task = load_task(_write(tmp_path, [{"id": 7, "input": text, "profile": [item]}], [{"id": "7", "output": "g"}]))
    assert task.layout is LAYOUTS[layout]
    assert task.queries[0].profile[0].output == item[LAYOUTS[layout].output_field]
    assert task.queries[0].user == "7"  # LaMP keys users by query when no user field is present


def test_user_split_is_disjoint_complete_and_seeded(pep_task):
    a = split_users(pep_task.users, seed=3)
    b = split_users(pep_task.users, seed=3)
    c = split_users(pep_task.users, seed=4)
    assert a == b and a != c
    parts = [set(a.train), set(a.validation), set(a.test)]
    assert set().union(*parts) == set(pep_task.users)
    assert sum(len(p) for p in parts) == len(pep_task.users)
    with pytest.raises(ValueError, match="summing to 1"):
        split_users(pep_task.users, fractions=(0.5, 0.5, 0.5))


def test_lamp_files_load_as_downloaded_by_folder_or_by_file(pep_task, tmp_path):
    write_task(pep_task, tmp_path / "made")
    lamp = tmp_path / "LaMP_5" / "dev"
    lamp.mkdir(parents=True)
    for split in ("dev",):
        (lamp / f"{split}_questions.json").write_text((tmp_path / "made" / "questions.json").read_text())
        (lamp / f"{split}_outputs.json").write_text((tmp_path / "made" / "outputs.json").read_text())
    assert load_task(lamp).queries == pep_task.queries                 # the folder of one pair
    assert load_task(lamp / "dev_questions.json").queries == pep_task.queries
    assert load_task(lamp).name == pep_task.name                       # outputs.json's "task" names it
    both = tmp_path / "LaMP_5" / "all"
    both.mkdir()
    for split in ("train", "dev"):
        (both / f"{split}_questions.json").write_text((lamp / "dev_questions.json").read_text())
        (both / f"{split}_outputs.json").write_text((lamp / "dev_outputs.json").read_text())
    with pytest.raises(TaskFormatError, match=r"holds 2 tasks \(dev_questions.json, train_questions.json\)"):
        load_task(both)
    assert load_task(both / "train_questions.json").queries == pep_task.queries
    (both / "test_questions.json").write_text((lamp / "dev_questions.json").read_text())
    with pytest.raises(TaskFormatError, match=r"test_outputs.json: file not found.*LaMP's test split ships none"):
        load_task(both / "test_questions.json")
    with pytest.raises(TaskFormatError, match="questions.json: file not found, nor a LaMP"):
        load_task(tmp_path / "made" / "..")


def test_longlamp_parquet_loads_as_its_dataset_card_gives_it(pep_abstracts_dir, tmp_path):
    """LongLaMP's abstract_generation_user rows (name, input, output, profile of abstract / id /
    title / year), gold inline and no record id, in a split folder of shards or as one file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    task = load_task(pep_abstracts_dir)
    rows = [{"name": q.user, "input": q.input, "output": q.gold,
             "profile": [{"abstract": it.output, "id": it.id, "title": it.source, "year": 2001} for it in q.profile]}
            for q in task.queries]
    split = tmp_path / "abstract_generation_user" / "val"
    split.mkdir(parents=True)
    half = len(rows) // 2
    pq.write_table(pa.Table.from_pylist(rows[:half]), split / "0000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[half:]), split / "0001.parquet")
    loaded = load_task(split)
    assert loaded.name == "abstract_generation_user-val" and loaded.layout.name == "longlamp-abstract"
    assert [(q.user, q.input, q.gold) for q in loaded.queries] == [(q.user, q.input, q.gold) for q in task.queries]
    assert [it.output for it in loaded.queries[0].profile] == [it.output for it in task.queries[0].profile]
    assert loaded.queries[half].id == "0001-0" and len({q.id for q in loaded.queries}) == len(rows)
    assert len(load_task(split / "0001.parquet").queries) == len(rows) - half
    broken = tmp_path / "broken.parquet"
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in rows[0].items() if k != "output"}]), broken)
    with pytest.raises(TaskFormatError, match=r"broken.parquet: record broken-0: missing field 'output'"):
        load_task(broken)
