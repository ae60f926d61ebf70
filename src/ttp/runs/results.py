"""A run's stage results as files, read back checked: the stages' Parquet tables, the curves,
rewards and allocate stages' results, and the diagnose stage's two files (written here too).  A
damaged file raises ``DataFileError`` naming it, the record and the field that is wrong, and the
command that writes it again."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from ttp.analysis.allocation import AllocationStudy, OnlineRule
from ttp.analysis.bon import Curve
from ttp.analysis.online import ONLINE_RULES
from ttp.analysis.scaling import CEILING_FORMS, Diagnosis
from ttp.files import (
    DamagedRecord,
    DataFileError,
    number,
    read_json,
    read_records,
    write_json_atomic,
    write_parquet_atomic,
)
from ttp.runs.folder import RunFolder

UNREADABLE_TABLE = (OSError, ValueError, pa.ArrowException)   # what pandas and pyarrow raise for a damaged file


def cached_table(path, columns: list[str] | None = None) -> pd.DataFrame | None:
    """A table an earlier call wrote, or None where it is missing or damaged: it is then made again."""
    try:
        return pd.read_parquet(path, columns=columns)
    except UNREADABLE_TABLE:
        return None


def read_table(path, command: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet table of a run.  A missing one raises ``FileNotFoundError`` and an unreadable one
    ``DataFileError``, each naming the file and the ``command`` that writes it."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `{command}` first")
    try:
        return pd.read_parquet(path, columns=columns)
    except UNREADABLE_TABLE as err:
        problem = (str(err).splitlines() or [type(err).__name__])[0]   # pyarrow appends the schema on more lines
        raise DataFileError(f"{path} is not a readable table ({problem}); `{command}` writes it again") from None


def _read_result(folder: RunFolder, path, parse, stage: str):
    """A stage's result file, parsed by ``parse``; a damaged one raises ``DataFileError`` naming
    the file, what is wrong and the command that writes it again; a missing one says to run it."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `ttp {stage} {folder.root}` first")
    data = read_json(path)
    try:
        return parse(data)
    except DataFileError:   # a file beside it (diagnosis_per_query.parquet) names itself
        raise
    except DamagedRecord as err:
        problem = str(err)
    except KeyError as err:
        problem = f"field {err} is missing"
    except (AttributeError, TypeError, ValueError) as err:
        problem = f"a field has the wrong shape ({err})"
    raise DataFileError(f"{path}: {problem}; `ttp {stage} {folder.root}` writes it again")


def _check_ceiling(name: str, result: dict) -> dict:
    for key in ("oracle", "random"):
        Curve.from_json(result[key])
    for key in ("queries", "users"):
        number(result[key], key)
    if not result["ceiling_fits"]:
        raise ValueError("field 'ceiling_fits' is empty")
    for fit in result["ceiling_fits"]:
        if fit["form"] not in CEILING_FORMS:
            raise ValueError(f"field 'form' is {fit['form']!r}, not one of {sorted(CEILING_FORMS)}")
        for key in ("a", "b", "rmse"):
            number(fit[key], key)
    return result


def read_curves(folder: RunFolder, task: str, policy: str) -> dict:
    """``curves.json``: per utility metric, the oracle and random curves and the ceiling fits."""
    return _read_result(folder, folder.curves(task, policy), lambda data: read_records(data, "metric", _check_ceiling),
                        "curves")


def _check_selector(name: str, result: dict) -> dict:
    Curve.from_json(result["curve"])
    number(result["mean_spearman"], "mean_spearman")
    if "mean_sd_correlation" in result:
        number(result["mean_sd_correlation"], "mean_sd_correlation")
    for share in result["oracle_gain_share"].values():
        if len(share) != 3:
            raise ValueError(f"field 'oracle_gain_share' holds {share!r}, not [share, low, high]")
        for value in share:
            number(value, "oracle_gain_share")
    return result


def read_reward_eval(folder: RunFolder, task: str, policy: str) -> dict:
    """``reward_eval.json``: every selector's Best-of-N on the test users beside the oracle's."""
    def parse(data: dict) -> dict:
        Curve.from_json(data["oracle"])
        for key in ("pool_size", "queries", "users"):
            number(data[key], key)
        read_records(data["selectors"], "selector", _check_selector)
        return data

    return _read_result(folder, folder.reward_eval(task, policy), parse, "rewards")


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
    table = read_table(path, f"ttp diagnose {folder.root}")
    if "selector" not in table.columns:
        raise DataFileError(f"{path} is not a diagnosis table (it has no column 'selector'); {rewrite}")
    groups = dict(iter(table.groupby("selector", sort=False)))
    missing = [name for name in selectors if name not in groups]
    if missing:
        raise DataFileError(f"{path} has no rows for selector {missing[0]!r}; {rewrite}")
    # a law only some selectors have (the held-out one) is an empty column for the others
    return {name: {column: np.stack(values.to_numpy()) if values.dtype == object and np.ndim(values.iloc[0]) == 1
                   else values.to_numpy()
                   for column, values in groups[name].drop(columns="selector").dropna(axis=1, how="all").items()}
            for name in selectors}


def read_diagnoses(folder: RunFolder, task: str, policy: str) -> dict[str, Diagnosis]:
    def parse(data: dict) -> dict[str, Diagnosis]:
        if all("per_query" in d for d in data.values()):
            return read_records(data, "selector", lambda name, d: Diagnosis.from_json(d))
        per_query = _read_per_query(folder, task, policy, list(data))
        return read_records(data, "selector", lambda name, d: Diagnosis.from_json(d, per_query[name]))

    return _read_result(folder, folder.diagnosis(task, policy), parse, "diagnose")


def read_allocation(folder: RunFolder, task: str, policy: str) -> AllocationStudy:
    return _read_result(folder, folder.allocation(task, policy), AllocationStudy.from_json, "allocate")


def _online_rule(name: str, record: dict) -> OnlineRule:
    if record["rule"] not in ONLINE_RULES:
        raise DamagedRecord(f"selector {name!r}: field 'rule' is {record['rule']!r}, not one of {ONLINE_RULES}")
    return OnlineRule(record["rule"], *(float(number(record[k], k)) for k in OnlineRule._fields[1:]))


def read_online_rules(folder: RunFolder, task: str, policy: str) -> dict[str, OnlineRule]:
    """``online_rules.json``: the stopping rule and calibration of every trained selector."""
    return _read_result(folder, folder.online_rules(task, policy),
                        lambda data: read_records(data, "selector", _online_rule), "allocate")
