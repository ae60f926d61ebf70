"""A run's stage results as files: the diagnose stage's two files written and read back, and
the allocate stage's study read back.  A damaged file raises ``DataFileError`` naming it, what
is wrong and the command that writes it again."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ttp.analysis.allocation import AllocationStudy
from ttp.analysis.scaling import Diagnosis
from ttp.files import DataFileError, read_json, write_json_atomic, write_parquet_atomic
from ttp.runs.folder import RunFolder


def _read_result(folder: RunFolder, path, parse, stage: str):
    """A stage's result file, parsed by ``parse``; a damaged one raises ``DataFileError`` naming
    the file, what is wrong and the command that writes it again."""
    data = read_json(path)
    try:
        return parse(data)
    except KeyError as err:
        problem = f"field {err} is missing"
    except (AttributeError, TypeError, ValueError) as err:
        problem = f"a field has the wrong shape ({err})"
    raise DataFileError(f"{path}: {problem}; `ttp {stage} {folder.root}` writes it again")


def write_diagnoses(folder: RunFolder, task: str, policy: str, diagnoses: dict[str, Diagnosis]) -> None:
    """``diagnosis.json`` (each selector's diagnosis but its per-query values) and beside it
    ``diagnosis_per_query.parquet`` (one row per selector and query, each law's residuals a list
    over N).  The table is written first, so a finished JSON always has its table."""
    frames = []
    for name, d in diagnoses.items():
        frame = pd.DataFrame({k: list(v) if np.ndim(v) == 2 else v for k, v in d.per_query.items()})
        frame.insert(0, "selector", name)
        frames.append(frame)
    write_parquet_atomic(folder.diagnosis_per_query(task, policy), pd.concat(frames, ignore_index=True))
    write_json_atomic(folder.diagnosis(task, policy), {name: d.to_json() for name, d in diagnoses.items()})


def _read_per_query(folder: RunFolder, task: str, policy: str, selectors) -> dict[str, dict]:
    """Each selector's per-query values from ``diagnosis_per_query.parquet``."""
    path = folder.diagnosis_per_query(task, policy)
    rewrite = f"`ttp diagnose {folder.root}` writes it again"
    if not path.exists():
        raise DataFileError(f"{path} is missing; {rewrite}")
    try:
        table = pd.read_parquet(path)
        groups = dict(iter(table.groupby("selector", sort=False)))
    except (OSError, ValueError, KeyError) as err:
        raise DataFileError(f"{path} is not a diagnosis table ({err}); {rewrite}") from None
    missing = [name for name in selectors if name not in groups]
    if missing:
        raise DataFileError(f"{path} has no rows for selector {missing[0]!r}; {rewrite}")
    return {name: {column: np.stack(values.to_numpy()) if values.dtype == object and np.ndim(values.iloc[0]) == 1
                   else values.to_numpy() for column, values in groups[name].drop(columns="selector").items()}
            for name in selectors}


def read_diagnoses(folder: RunFolder, task: str, policy: str) -> dict[str, Diagnosis]:
    def one(name: str, d: dict, per_query: dict | None) -> Diagnosis:
        try:
            return Diagnosis.from_json(d, per_query)
        except (TypeError, ValueError) as err:
            raise ValueError(f"selector {name!r}: {err}") from None

    def parse(data: dict) -> dict[str, Diagnosis]:
        if all("per_query" in d for d in data.values()):
            return {name: one(name, d, None) for name, d in data.items()}
        per_query = _read_per_query(folder, task, policy, list(data))
        return {name: one(name, d, per_query[name]) for name, d in data.items()}

    return _read_result(folder, folder.diagnosis(task, policy), parse, "diagnose")


def read_allocation(folder: RunFolder, task: str, policy: str) -> AllocationStudy:
    return _read_result(folder, folder.allocation(task, policy), AllocationStudy.from_json, "allocate")
