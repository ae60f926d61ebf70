"""The pep-titles and pep-abstracts tasks, derived from the PEP records shipped in the package.

``peps/peps.jsonl`` holds each PEP once: its number, title, abstract, and those of its authors
who wrote at least 5 PEPs (the tasks' 52 users); ``peps/README.md`` gives the source and the
licence.  Both tasks are written in the LaMP / LongLaMP layout, into the cache like the
embedded tasks, so the one loader (``ttp.tasks.data.load_task``) reads them:

* ``pep-titles`` (LaMP-5 layout): a PEP's abstract in, its title out.
* ``pep-abstracts`` (LongLaMP abstract-generation layout): a PEP's title in, its abstract out.

One query per (author, PEP), id ``UUU-NNNN`` (the author's place among the users in name order,
the PEP's number); the profile holds that author's other PEPs in number order, so a query's own
PEP is never in its profile.  A PEP with several authors appears once per author."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ttp.files import write_bytes_atomic
from ttp.tasks.embedded import cache_dir

RECORDS = Path(__file__).with_name("peps") / "peps.jsonl"
TASKS = {
    "pep-titles": ("PEP-titles", lambda r: f"Generate a title for the following abstract of a paper: {r['abstract']}",
                   "title"),
    "pep-abstracts": ("PEP-abstracts", lambda r: f'Generate an abstract for the title "{r["title"]}"', "abstract"),
}
FIELDS = {"pep": int, "title": str, "abstract": str, "authors": list}


def read_records(path: Path = RECORDS) -> list[dict]:
    """The PEP records, checked: a bad line names the file, the line and the field."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not JSON ({err})") from None
        for field, kind in FIELDS.items():
            if not isinstance(record.get(field), kind) or not record[field]:
                raise ValueError(f"{path}, line {number}: field {field!r} is missing or not a non-empty "
                                 f"{kind.__name__}")
        records.append(record)
    return records


def derive(records: list[dict], task: str) -> tuple[list[dict], dict]:
    """``(questions, outputs)`` of ``task`` in the LaMP layout."""
    name, make_input, output = TASKS[task]
    by_number = {r["pep"]: r for r in records}
    users = sorted({author for r in records for author in r["authors"]})
    questions, golds = [], []
    for index, user in enumerate(users):
        mine = sorted(r["pep"] for r in records if user in r["authors"])
        for pep in mine:
            record = by_number[pep]
            profile = [{"id": f"pep-{other:04d}", "title": by_number[other]["title"],
                        "abstract": by_number[other]["abstract"]} for other in mine if other != pep]
            query_id = f"{index:03d}-{pep:04d}"
            questions.append({"id": query_id, "user": user, "input": make_input(record), "profile": profile})
            golds.append({"id": query_id, "output": record[output]})
    return questions, {"task": name, "golds": golds}


def pep_task_dirs(cache: Path | None = None) -> dict[str, Path]:
    """Both tasks' folders in the cache, written on first use (and again if the records change)."""
    cache = cache or cache_dir()
    digest = hashlib.sha256(RECORDS.read_bytes()).hexdigest()[:16]
    dirs = {task: cache / "tasks" / f"{task}-{digest}" for task in TASKS}
    records = None
    for task, folder in dirs.items():
        if (folder / "questions.json").exists() and (folder / "outputs.json").exists():
            continue
        records = records or read_records()
        questions, outputs = derive(records, task)
        write_bytes_atomic(folder / "outputs.json", json.dumps(outputs, ensure_ascii=False).encode("utf-8"))
        write_bytes_atomic(folder / "questions.json", json.dumps(questions, ensure_ascii=False).encode("utf-8"))
    return dirs
