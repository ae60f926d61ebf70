"""Personalized tasks in the LaMP / LongLaMP JSON layout, and seeded user-level splits.

``questions.json``: ``[{"id", "input", "profile": [...], "user"?}]``
``outputs.json``:   ``{"task"?, "golds": [{"id", "output"}]}``

LaMP's files keep the names they are downloaded with: a folder holding one pair
``dev_questions.json`` / ``dev_outputs.json`` (or ``train_...``) loads as it is, and a folder
holding several pairs loads by naming one questions file (``LaMP_5/train_questions.json``).

A profile item holds one past document of the user; its *layout* says which field is the
user's own output (what a few-shot example should show as the answer) and which fields
are the source it was written from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ttp.files import DataFileError, check_name, read_json, write_json_atomic

# A small model asked for a title, a subject or a headline opens with any of these labels, so
# each short task drops all three.
SHORT_OUTPUT_LABELS = ("Answer:", "Title:", "Subject:", "Headline:", "**")


@dataclass(frozen=True)
class ProfileLayout:
    name: str
    output_field: str
    source_fields: tuple[str, ...]
    source_label: str   # how a prompt names the source ("Abstract") and the output ("Title")
    output_label: str
    completion_labels: tuple[str, ...] = SHORT_OUTPUT_LABELS   # dropped from a completion's start
    example_chars: int = 300    # of a profile item's output shown as a few-shot example
    new_tokens: int = 24        # a candidate's most new tokens (docs/method.md, "Long outputs")

    def clean(self, completion: str) -> str:
        """A completion without the labels, quotes and bold marks small models like to add."""
        text = completion.strip()
        for label in self.completion_labels:
            if text.startswith(label):
                text = text[len(label):].strip()
        return text.strip().strip('"*').strip()


def _long(name, output_field, source_fields, source_label, output_label) -> ProfileLayout:
    # 700 characters hold a median PEP abstract (505) whole, and three of them leave a
    # context of 8192 room for 16 candidates of 160 tokens (docs/method.md, "Long outputs")
    return ProfileLayout(name, output_field, source_fields, source_label, output_label,
                         ("Answer:", f"{output_label}:", "**"), example_chars=700, new_tokens=160)


LAYOUTS = {
    layout.name: layout
    for layout in (
        ProfileLayout("lamp4-headline", "title", ("text",), "Article", "Headline"),
        ProfileLayout("lamp5-title", "title", ("abstract",), "Abstract", "Title"),
        ProfileLayout("lamp6-subject", "title", ("text",), "Email", "Subject"),
        _long("longlamp-abstract", "abstract", ("title",), "Title", "Abstract"),
        _long("longlamp-topic", "content", ("summary",), "Topic", "Post"),
        _long("longlamp-review", "reviewText", ("description", "overall", "summary"), "Product", "Review"),
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
        return read_json(path)
    except DataFileError as err:
        raise TaskFormatError(str(err)) from None


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


QUESTIONS, OUTPUTS = "questions.json", "outputs.json"


def task_files(location: str | Path) -> tuple[Path, Path]:
    """The questions and outputs files of a task: ``location`` is a folder holding
    ``questions.json`` and ``outputs.json`` or one LaMP pair ``SPLIT_questions.json`` /
    ``SPLIT_outputs.json``, or a questions file whose outputs file lies beside it."""
    location = Path(location)
    if location.is_file() or location.name.endswith(QUESTIONS):
        if not location.name.endswith(QUESTIONS):
            raise TaskFormatError(f"{location}: a task file is named questions.json or SPLIT_questions.json")
        return location, location.with_name(location.name[:-len(QUESTIONS)] + OUTPUTS)
    if not location.is_dir():
        raise TaskFormatError(f"{location / QUESTIONS}: file not found (the folder {location} does not exist)")
    if (location / QUESTIONS).exists():
        return location / QUESTIONS, location / OUTPUTS
    pairs = sorted(location.glob(f"*_{QUESTIONS}"))
    if len(pairs) == 1:
        return task_files(pairs[0])
    if pairs:
        raise TaskFormatError(f"{location}: holds {len(pairs)} tasks ({', '.join(p.name for p in pairs)}); "
                              f"name one of those files instead of the folder")
    raise TaskFormatError(f"{location / QUESTIONS}: file not found, nor a LaMP SPLIT_{QUESTIONS} beside it "
                          f"(dev_questions.json with dev_outputs.json)")


# LongLaMP's records name their user by task: abstract generation by "name", product reviews by
# "reviewerId", topic writing by "author"
USER_FIELDS = ("user", "name", "reviewerId", "author")


def parquet_files(location: str | Path) -> list[Path]:
    """LongLaMP as its dataset card gives it: one Parquet file, or a split's folder of shards
    (``0000.parquet``, ...), each row a record with its gold ``output`` inline."""
    location = Path(location)
    if location.suffix == ".parquet":
        return [location]
    return sorted(location.glob("*.parquet")) if location.is_dir() and not (location / QUESTIONS).exists() else []


def _parquet_records(files: list[Path]) -> tuple[list, dict]:
    """The rows of LongLaMP's Parquet files as LaMP's questions and outputs: each row's id is its
    ``id`` where it has one, else ``<file stem>-<row>``; its user is its first ``USER_FIELDS``."""
    import pyarrow.parquet as pq

    questions, golds = [], []
    for path in files:
        try:
            rows = pq.read_table(path).to_pylist()
        except (OSError, ValueError) as err:
            raise TaskFormatError(f"{path}: not a readable Parquet file ({err})") from None
        for i, row in enumerate(rows):
            rid = row.get("id", f"{path.stem}-{i}")
            if "output" not in row:
                raise TaskFormatError(f"{path}: record {rid}: missing field 'output'")
            user = next((row[f] for f in USER_FIELDS if row.get(f) is not None), None)
            questions.append({k: v for k, v in (("id", rid), ("input", row.get("input")),
                                                 ("profile", row.get("profile")), ("user", user))
                              if v is not None})
            golds.append({"id": rid, "output": row["output"]})
    return questions, {"golds": golds}


def load_task(location: str | Path, name: str | None = None, layout: str | None = None) -> Task:
    """Read a task's questions and outputs (``task_files``), or LongLaMP's Parquet records
    (``parquet_files``), and check every record."""
    parquet = parquet_files(location)
    if parquet:
        q_path = o_path = parquet[0]
        questions, outputs = _parquet_records(parquet)
        directory = Path(location) if Path(location).is_dir() else q_path.parent
        if directory.name in ("train", "val", "test") and name is None:
            name = f"{directory.parent.resolve().name}-{directory.name}"     # abstract_generation_user-val
    else:
        q_path, o_path = task_files(location)
        directory = q_path.parent
        if not o_path.exists() and q_path.exists():
            raise TaskFormatError(f"{o_path}: file not found: the gold outputs of {q_path.name} (LaMP's test "
                                  f"split ships none; use its train or dev split)")
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
        if rid in golds:
            raise TaskFormatError(f"{o_path}: record {rid}: duplicate id (golds[{i}])")
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
    task_name = name or (outputs.get("task") if isinstance(outputs.get("task"), str) else directory.resolve().name)
    try:
        check_name(task_name, "task name")
    except ValueError as err:
        raise TaskFormatError(f"{o_path}: field 'task': {err}") from None
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

    def rows(self, users, *parts: str) -> np.ndarray:
        """The mask of the rows whose user (``users``, one per row) is in any of ``parts``."""
        return np.isin(np.asarray(users), [u for part in parts for u in getattr(self, part)])


PARTS = ("train", "validation", "test")


def split_users(users, fractions=(0.6, 0.2, 0.2), seed: int = 0) -> UserSplit:
    """Seeded user-level split: no user's queries appear in two parts, and no part is empty."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative shares summing to 1 "
                         f"(train, validation, test), got {tuple(fractions)}")
    ordered = sorted(set(users))
    rng = np.random.default_rng(seed)
    shuffled = [ordered[i] for i in rng.permutation(len(ordered))]
    n_train = int(round(fractions[0] * len(shuffled)))
    n_val = int(round(fractions[1] * len(shuffled)))
    split = UserSplit(
        tuple(sorted(shuffled[:n_train])),
        tuple(sorted(shuffled[n_train:n_train + n_val])),
        tuple(sorted(shuffled[n_train + n_val:])),
    )
    empty = [part for part in PARTS if not getattr(split, part)]
    if empty:
        shown = ", ".join(ordered[:10]) + (", ..." if len(ordered) > 10 else "")
        raise ValueError(f"the split {tuple(fractions)} of {len(ordered)} users leaves {' and '.join(empty)} "
                         f"empty (users: {shown}); every part needs a user: use more users or other "
                         f"fractions (--split TRAIN VALIDATION TEST)")
    return split


def subset(task: Task, max_per_user: int | None, max_users: int | None, seed: int) -> Task:
    """A seeded subset: at most ``max_users`` users, at most ``max_per_user`` queries each."""
    for value, option in ((max_per_user, "--max-queries-per-user"), (max_users, "--max-users")):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be at least 1, got {value}")
    rng = np.random.default_rng(seed)
    users = task.users
    if max_users is not None and max_users < len(users):
        users = sorted(rng.choice(users, max_users, replace=False).tolist())
    keep = []
    for user in users:
        queries = [q for q in task.queries if q.user == user]
        if max_per_user is not None and len(queries) > max_per_user:
            chosen = set(rng.choice(len(queries), max_per_user, replace=False).tolist())
            queries = [q for i, q in enumerate(queries) if i in chosen]
        keep.extend(queries)
    return Task(task.name, task.layout, tuple(keep))
