"""The file ``ttp profiles export`` writes and ``ttp profiles import`` reads: JSON Lines, one
user a line with their profile items and feedback, each line checked before any is loaded.

``written_by`` (the name of the API key that wrote an item or a feedback entry) is absent from
exports made before the store recorded it, and read as null there."""
from __future__ import annotations

import json
from pathlib import Path

from ttp.files import write_bytes_atomic


def _text(value) -> bool:
    return isinstance(value, str)


def _time(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rating(value) -> bool:
    return value is None or _time(value)


def _writer(value) -> bool:
    return value is None or (isinstance(value, str) and bool(value))


FIELDS = {"user": {"user": _text, "created": _time, "profile": list, "feedback": list},
          "profile": {"id": _text, "input": _text, "output": _text, "created": _time, "origin": _text,
                      "written_by": _writer},
          "feedback": {"input": _text, "output": _text, "rating": _rating, "created": _time, "written_by": _writer}}


class ExportError(ValueError):
    """A profile export cannot be read; the message names the file, the line and the field."""


def _check(record, kind: str, where: str) -> None:
    if not isinstance(record, dict):
        raise ExportError(f"{where}: not a JSON object")
    for field, valid in FIELDS[kind].items():
        value = record.get(field)
        if not (isinstance(value, valid) if isinstance(valid, type) else valid(value)):
            raise ExportError(f"{where}: field {field!r}: {value!r} is not what an export holds there")


def write_export(path: str | Path, records: list[dict]) -> int:
    """``records`` as JSON Lines, one user a line, atomically; returns the users written."""
    write_bytes_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    return len(records)


def read_export(path: Path) -> list[dict]:
    """The records of a ``ttp profiles export`` file, each checked before any is loaded."""
    if not path.exists():
        raise ExportError(f"{path}: file not found")
    records = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ExportError(f"{path}: line {number}: not a JSON object ({err})") from None
        _check(record, "user", f"{path}: line {number}")
        for kind in ("profile", "feedback"):
            for i, entry in enumerate(record[kind]):
                _check(entry, kind, f"{path}: line {number}: {kind}[{i}]")
        records.append(record)
    return records
