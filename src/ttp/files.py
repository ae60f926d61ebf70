"""Atomic file writes and plain reads: a reader never sees half a file, and a kill mid-write
leaves the previous version in place.  Every module that writes run data goes through here."""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj) -> None:
    write_bytes_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False).encode("utf-8"))


def write_parquet_atomic(path: str | Path, frame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes_atomic(path, buffer.getvalue())


def number(value, name: str):
    """``value`` if it is a JSON number, else a ``ValueError`` naming the field: what a damaged or
    hand-edited result file gets, instead of failing later where the value is used."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"field {name!r} is {value!r}, not a number")
    return value


class DamagedRecord(ValueError):
    """One record of a result file (a metric's, a selector's, a curve's) is damaged; the message
    says which and how."""


def read_records(records: dict, kind: str, read) -> dict:
    """``read(name, record)`` of every record of a result file read back; a damaged one raises
    ``DamagedRecord`` naming it (``kind``: metric, selector, curve) and its field."""
    result = {}
    for name, record in records.items():
        try:
            result[name] = read(name, record)
        except KeyError as err:
            raise DamagedRecord(f"{kind} {name!r}: field {err} is missing") from None
        except (AttributeError, TypeError, ValueError) as err:
            raise DamagedRecord(f"{kind} {name!r}: {err}") from None
    return result


class DataFileError(ValueError):
    """A data file cannot be read; the message names the file and what to do."""


def read_json(path: str | Path):
    """Parse a JSON file; an unreadable one raises ``DataFileError`` naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataFileError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise DataFileError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise DataFileError(f"{path}: not valid JSON ({err})") from None


SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(name: str, what: str) -> str:
    """A name that becomes a folder: letters, digits, ``.``, ``_``, ``-``, not starting with a dot,
    so it can never climb out of the folder it is placed in."""
    if not isinstance(name, str) or not SAFE_NAME.match(name) or name in (".", ".."):
        raise ValueError(f"{what} {name!r} cannot name a folder: use 1-100 letters, digits, '.', '_' "
                         f"or '-', starting with a letter or digit")
    return name
