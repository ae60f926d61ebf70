"""Personalized tasks in the LaMP / LongLaMP JSON layout, and seeded user-level splits.

``questions.json``: ``[{"id", "input", "profile": [...], "user"?}]``
``outputs.json``:   ``{"task"?, "golds": [{"id", "output"}]}``

A profile item holds one past document of the user; its *layout* says which field is the
user's own output (what a few-shot example should show as the answer) and which fields
are the source it was written from.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ttp.runs.folder import write_json_atomic


@dataclass(frozen=True)
class ProfileLayout:
    name: str
    output_field: str
    source_fields: tuple[str, ...]
    source_label: str   # how a prompt names the source ("Abstract") and the output ("Title")
    output_label: str


LAYOUTS = {
    layout.name: layout
    for layout in (
        ProfileLayout("lamp4-headline", "title", ("text",), "Article", "Headline"),
        ProfileLayout("lamp5-title", "title", ("abstract",), "Abstract", "Title"),
        ProfileLayout("lamp6-subject", "title", ("text",), "Email", "Subject"),
        ProfileLayout("longlamp-abstract", "abstract", ("title",), "Title", "Abstract"),
        ProfileLayout("longlamp-topic", "content", ("summary",), "Topic", "Post"),
        ProfileLayout("longlamp-review", "reviewText", ("description", "overall", "summary"),
                      "Product", "Review"),
    )
}


class TaskFormatError(ValueError):
    """A task file does not follow the LaMP layout; the message names file, record and field."""


@dataclass(frozen=True)
class ProfileItem:
    id: str
    output: str
    source: str


@dataclass(frozen=True)
class Query:
    id: str
    user: str
    input: str
    profile: tuple[ProfileItem, ...]
    gold: str


@dataclass(frozen=True)
class Task:
    name: str
    layout: ProfileLayout
    queries: tuple[Query, ...]

    def by_id(self) -> dict[str, Query]:
        return {q.id: q for q in self.queries}

    @property
    def users(self) -> list[str]:
        return sorted({q.user for q in self.queries})


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskFormatError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise TaskFormatError(f"{path}: not valid JSON ({err})") from None


def _text(value, path: Path, record: str, field: str, allow_number: bool = False) -> str:
    if isinstance(value, str):
        return value
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TaskFormatError(f"{path}: record {record}: field {field!r} must be a string, "
                          f"got {type(value).__name__}")


def detect_layout(profile_keys: set[str], first_input: str) -> ProfileLayout:
    """Guess the layout from a profile item's keys, and the first input where keys are shared
    (LaMP-4 headlines and LaMP-6 subjects; LaMP-5 titles and LongLaMP abstracts)."""
    if {"reviewText"} <= profile_keys:
        return LAYOUTS["longlamp-review"]
    if {"content", "summary"} <= profile_keys:
        return LAYOUTS["longlamp-topic"]
    if {"title", "abstract"} <= profile_keys:
        asks_for_abstract = "generate an abstract" in first_input.lower()
        return LAYOUTS["longlamp-abstract" if asks_for_abstract else "lamp5-title"]
    if {"title", "text"} <= profile_keys:
        return LAYOUTS["lamp6-subject" if "email" in first_input.lower()[:80] else "lamp4-headline"]
    raise TaskFormatError(
        f"cannot tell the profile layout from the keys {sorted(profile_keys)}; "
        f"pass layout= one of {sorted(LAYOUTS)}"
    )


def load_task(directory: str | Path, name: str | None = None, layout: str | None = None) -> Task:
    """Read ``questions.json`` and ``outputs.json`` from ``directory`` and check every record."""
    directory = Path(directory)
    q_path, o_path = directory / "questions.json", directory / "outputs.json"
    questions, outputs = _read_json(q_path), _read_json(o_path)
    if not isinstance(questions, list) or not questions:
        raise TaskFormatError(f"{q_path}: expected a non-empty JSON list of query records")
    if not isinstance(outputs, dict) or not isinstance(outputs.get("golds"), list):
        raise TaskFormatError(f"{o_path}: expected an object with a 'golds' list")

    golds: dict[str, str] = {}
    for i, rec in enumerate(outputs["golds"]):
        rid = rec.get("id") if isinstance(rec, dict) else None
        if rid is None:
            raise TaskFormatError(f"{o_path}: golds[{i}]: missing field 'id'")
        rid = _text(rid, o_path, f"golds[{i}]", "id", allow_number=True)
        if "output" not in rec:
            raise TaskFormatError(f"{o_path}: record {rid}: missing field 'output'")
        golds[rid] = _text(rec["output"], o_path, rid, "output")

    chosen: ProfileLayout | None = LAYOUTS[layout] if layout else None
    if layout and layout not in LAYOUTS:
        raise TaskFormatError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    queries, seen = [], set()
    for i, rec in enumerate(questions):
        if not isinstance(rec, dict):
            raise TaskFormatError(f"{q_path}: record [{i}]: expected an object")
        if "id" not in rec:
            raise TaskFormatError(f"{q_path}: record [{i}]: missing field 'id'")
        qid = _text(rec["id"], q_path, f"[{i}]", "id", allow_number=True)
        if qid in seen:
            raise TaskFormatError(f"{q_path}: record {qid}: duplicate id")
        seen.add(qid)
        for field in ("input", "profile"):
            if field not in rec:
                raise TaskFormatError(f"{q_path}: record {qid}: missing field {field!r}")
        text = _text(rec["input"], q_path, qid, "input")
        profile = rec["profile"]
        if not isinstance(profile, list) or not profile:
            raise TaskFormatError(f"{q_path}: record {qid}: field 'profile' must be a non-empty list")
        if chosen is None:
            if not isinstance(profile[0], dict):
                raise TaskFormatError(f"{q_path}: record {qid}: field 'profile[0]' must be an object")
            try:
                chosen = detect_layout(set(profile[0]), text)
            except TaskFormatError as err:
                raise TaskFormatError(f"{q_path}: record {qid}: field 'profile[0]': {err}") from None
        items = []
        for j, item in enumerate(profile):
            where = f"profile[{j}]"
            if not isinstance(item, dict):
                raise TaskFormatError(f"{q_path}: record {qid}: field {where!r} must be an object")
            missing = [f for f in (chosen.output_field, *chosen.source_fields) if f not in item]
            if missing:
                raise TaskFormatError(f"{q_path}: record {qid}: field '{where}.{missing[0]}' is "
                                      f"missing (layout {chosen.name})")
            source = " ".join(
                _text(item[f], q_path, qid, f"{where}.{f}", allow_number=True) for f in chosen.source_fields
            )
            items.append(ProfileItem(
                id=str(item.get("id", f"{qid}-p{j}")),
                output=_text(item[chosen.output_field], q_path, qid, f"{where}.{chosen.output_field}"),
                source=source,
            ))
        if qid not in golds:
            raise TaskFormatError(f"{o_path}: no gold output for query id {qid} of {q_path}")
        user = _text(rec["user"], q_path, qid, "user", allow_number=True) if "user" in rec else qid
        queries.append(Query(qid, user, text, tuple(items), golds[qid]))
    task_name = name or (outputs.get("task") if isinstance(outputs.get("task"), str) else directory.name)
    return Task(task_name, chosen, tuple(queries))


def write_task(task: Task, directory: str | Path) -> None:
    """Write a task back in the LaMP layout (the inverse of ``load_task``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    layout = task.layout
    questions = []
    for q in task.queries:
        profile = []
        for item in q.profile:
            # multi-field sources cannot be split back apart; the first source field keeps the text
            record = {"id": item.id, layout.output_field: item.output, layout.source_fields[0]: item.source}
            record.update({f: "" for f in layout.source_fields[1:]})
            profile.append(record)
        questions.append({"id": q.id, "user": q.user, "input": q.input, "profile": profile})
    golds = {"task": task.name, "golds": [{"id": q.id, "output": q.gold} for q in task.queries]}
    write_json_atomic(directory / "questions.json", questions)
    write_json_atomic(directory / "outputs.json", golds)


@dataclass(frozen=True)
class UserSplit:
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]

    def of(self, user: str) -> str:
        for part in ("train", "validation", "test"):
            if user in getattr(self, part):
                return part
        raise KeyError(f"user {user!r} is in no part of the split")


def split_users(users, fractions=(0.6, 0.2, 0.2), seed: int = 0) -> UserSplit:
    """Seeded user-level split: no user's queries appear in two parts."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative shares summing to 1, got {fractions}")
    ordered = sorted(set(users))
    rng = np.random.default_rng(seed)
    shuffled = [ordered[i] for i in rng.permutation(len(ordered))]
    n_train = int(round(fractions[0] * len(shuffled)))
    n_val = int(round(fractions[1] * len(shuffled)))
    return UserSplit(
        tuple(sorted(shuffled[:n_train])),
        tuple(sorted(shuffled[n_train:n_train + n_val])),
        tuple(sorted(shuffled[n_train + n_val:])),
    )
