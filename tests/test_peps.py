"""The pep-titles and pep-abstracts tasks, derived from the PEP records shipped in the package."""
import json

import pytest

from ttp.tasks.data import load_task
from ttp.tasks.peps import RECORDS, derive, pep_task_dirs, read_records


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return {name: load_task(path) for name, path in pep_task_dirs(tmp_path_factory.mktemp("cache")).items()}


def test_both_tasks_have_the_documented_shape(tasks):
    titles, abstracts = tasks["pep-titles"], tasks["pep-abstracts"]
    assert (titles.name, abstracts.name) == ("PEP-titles", "PEP-abstracts")
    assert (titles.layout.name, abstracts.layout.name) == ("lamp5-title", "longlamp-abstract")
    for task in tasks.values():
        assert len(task.queries) == 575 and len(task.users) == 52
        sizes = [len(q.profile) for q in task.queries]
        assert (min(sizes), max(sizes)) == (4, 50)
    # the same users, ids and profiles, the task reversed
    def keys(task):
        return [(q.id, q.user, [item.id for item in q.profile]) for q in task.queries]

    assert keys(titles) == keys(abstracts)
    assert titles.queries[0].profile[0].output == abstracts.queries[0].profile[0].source
    title, abstract = titles.queries[0], abstracts.queries[0]
    assert title.input.endswith(abstract.gold)
    assert abstract.input == f'Generate an abstract for the title "{title.gold}"'


def test_a_query_never_sees_its_own_pep_and_sees_every_other_of_its_author(tasks):
    records = {r["pep"]: r for r in read_records()}
    for query in tasks["pep-titles"].queries:
        pep = int(query.id.split("-")[1])
        own = sorted(p for p, r in records.items() if query.user in r["authors"])
        assert [int(item.id[4:]) for item in query.profile] == [p for p in own if p != pep]
        assert query.gold == records[pep]["title"]


def test_the_committed_test_fixture_is_a_subset_of_pep_titles(tasks, pep_task):
    full = tasks["pep-titles"].by_id()
    for query in pep_task.queries:
        assert query.gold == full[query.id].gold and query.user == full[query.id].user
        assert [item.id for item in query.profile] == [item.id for item in full[query.id].profile][:8]


def test_a_broken_record_names_the_file_the_line_and_the_field(tmp_path):
    lines = RECORDS.read_text(encoding="utf-8").splitlines()[:3]
    broken = json.loads(lines[1])
    del broken["title"]
    path = tmp_path / "peps.jsonl"
    path.write_text("\n".join([lines[0], json.dumps(broken), lines[2]]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"peps.jsonl, line 2: field 'title' is missing"):
        read_records(path)
    path.write_text(lines[0] + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: not JSON"):
        read_records(path)
    # the derivation itself needs no file
    questions, outputs = derive([json.loads(line) for line in lines], "pep-abstracts")
    assert outputs["task"] == "PEP-abstracts" and len(questions) == len(outputs["golds"])


def test_the_committed_long_form_subset_is_the_titles_subset_reversed(tasks, pep_titles_dir, pep_abstracts_dir):
    from ttp.tasks.prompts import PromptBuilder

    titles, abstracts = load_task(pep_titles_dir), load_task(pep_abstracts_dir)
    assert abstracts.layout.name == "longlamp-abstract" and len(abstracts.queries) == 60
    full = tasks["pep-abstracts"].by_id()
    for title, abstract in zip(titles.queries, abstracts.queries):
        assert (abstract.id, abstract.user) == (title.id, title.user)
        assert abstract.gold == full[abstract.id].gold                  # the gold abstract kept whole
        assert [i.id for i in abstract.profile] == [i.id for i in title.profile]
        assert all(len(i.output) <= 500 for i in abstract.profile)
    prompt = PromptBuilder(abstracts.layout)(abstracts.queries[0])
    assert prompt.startswith("Generate an abstract for the title.\n\n") and prompt.endswith("\nAbstract:")
