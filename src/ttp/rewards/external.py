"""Scores that another program produced (a Hugging Face reward model, vLLM's reward endpoint, a
hosted judge), brought into a run as a named selector.

A score file is Parquet or JSONL with one row per candidate: ``query_id``, ``candidate`` (the
index in the pool, as in ``candidates.parquet``), ``score``, and optionally ``sd`` (a predicted
standard deviation).  It must cover every candidate of the run's pools for that task and
policy exactly once.  ``read_scores`` checks that and names the file, the row and the field of
the first problem.  Imported scores are stored in the run folder and go through every stage a
trained reward model goes through: Best-of-N on held-out users, diagnosis, laws, allocation,
report."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ttp.files import check_name

COLUMNS = ("query_id", "candidate", "score")


class ScoreFileError(ValueError):
    """A score file cannot be used; the message names the file, the row and the field."""


def _rows(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ScoreFileError(f"{path}: file not found")
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises many types for a broken file
            raise ScoreFileError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from None
    if path.suffix not in (".jsonl", ".json"):
        raise ScoreFileError(f"{path}: give a .parquet or .jsonl file")
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ScoreFileError(f"{path}: not UTF-8 text (byte {err.start})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ScoreFileError(f"{path}: row {number}: not a JSON object ({err})") from None
        if not isinstance(record, dict):
            raise ScoreFileError(f"{path}: row {number}: not a JSON object")
        records.append({**record, "_row": number})
    return pd.DataFrame(records)


def read_scores(path: str | Path, candidates: pd.DataFrame) -> pd.DataFrame:
    """The validated scores of ``path`` for the pools in ``candidates`` (one row per candidate:
    ``query_id``, ``candidate``); returns ``query_id, candidate, score[, sd]``."""
    path = Path(path)
    frame = _rows(path)
    if "_row" not in frame:
        frame["_row"] = range(1, len(frame) + 1)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ScoreFileError(f"{path}: missing field {missing[0]!r} (need {', '.join(COLUMNS)}, optional sd)")
    fields = [*COLUMNS, *(["sd"] if "sd" in frame.columns else [])]
    pool_size = candidates.groupby("query_id").size()
    known = set(pool_size.index)
    seen = set()
    for record in frame.to_dict("records"):
        where = f"{path}: row {record['_row']}"
        query = record["query_id"]
        if not isinstance(query, str) or query not in known:
            raise ScoreFileError(f"{where}: field 'query_id': {query!r} is not a query of this run's pools")
        index = record["candidate"]
        if isinstance(index, float) and index.is_integer():
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < pool_size[query]:
            raise ScoreFileError(f"{where}: field 'candidate': {record['candidate']!r} is not an index of the pool "
                                 f"of {query!r}, which has {pool_size[query]} candidates (0 to {pool_size[query] - 1})")
        if (query, index) in seen:
            raise ScoreFileError(f"{where}: candidate {index} of {query!r} is scored twice")
        seen.add((query, index))
        for field in fields[2:]:
            value = record[field]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or (field == "sd" and value < 0):
                raise ScoreFileError(f"{where}: field {field!r}: {value!r} is not a finite "
                                     f"{'non-negative ' if field == 'sd' else ''}number")
    for query, size in pool_size.items():
        scored = sum((query, i) in seen for i in range(size))
        if scored < size:
            first = next(i for i in range(size) if (query, i) not in seen)
            raise ScoreFileError(f"{path}: the pool of {query!r} has {size} candidates but {scored} are scored "
                                 f"(candidate {first} is missing)")
    out = frame[fields].copy()
    out["candidate"] = out["candidate"].astype(int)
    return out.astype({f: float for f in fields[2:]})


def check_selector_name(name: str, taken) -> str:
    check_name(name, "score name")
    if name in taken:
        raise ScoreFileError(f"the name {name!r} is taken by a reward model of the run; choose another")
    return name
