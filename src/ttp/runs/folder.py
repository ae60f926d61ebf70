"""The run folder: every stage reads and writes here, atomically, so any stage can be rerun
or resumed alone.

    <run>/config.json
    <run>/<task>/split.json
    <run>/<task>/<policy>/pools.jsonl        one line per finished query (append-only)
    <run>/<task>/<policy>/candidates.parquet one row per candidate, with its utilities
    <run>/<task>/<policy>/curves.json        oracle and random curves, ceiling fits
    <run>/<task>/<policy>/features.parquet   candidates with reward-model features
    <run>/<task>/<policy>/reward_models/<kind>/   trained reward models
    <run>/<task>/<policy>/test_scores.parquet     every selector's scores on test users
    <run>/<task>/<policy>/reward_eval.json   Best-of-N of every selector on test users
    <run>/<task>/<policy>/validation_scores.parquet  the same on validation users
    <run>/<task>/<policy>/diagnosis.json     the scaling-law diagnosis of every selector
    <run>/<task>/<policy>/allocation.json    law-guided allocation vs uniform N at equal budget
    <run>/report.md, <run>/figures/*.png
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write via a temporary file and a rename, so a reader never sees half a file."""
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


def write_parquet_atomic(path: str | Path, frame: pd.DataFrame) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def read_json(path: str | Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


class RunFolder:
    """Paths of one run; nothing here computes."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def task_dir(self, task: str) -> Path:
        return self.root / task

    def policy_dir(self, task: str, policy: str) -> Path:
        return self.root / task / policy

    def split(self, task: str) -> Path:
        return self.task_dir(task) / "split.json"

    def pools(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "pools.jsonl"

    def candidates(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "candidates.parquet"

    def curves(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "curves.json"

    def features(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "features.parquet"

    def embeddings(self, task: str) -> Path:
        return self.task_dir(task) / "embeddings.npz"

    def reward_model(self, task: str, policy: str, kind: str) -> Path:
        return self.policy_dir(task, policy) / "reward_models" / kind

    def scores(self, task: str, policy: str, part: str = "test") -> Path:
        return self.policy_dir(task, policy) / f"{part}_scores.parquet"

    def allocation(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "allocation.json"

    def reward_eval(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "reward_eval.json"

    def diagnosis(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "diagnosis.json"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report(self) -> Path:
        return self.root / "report.md"
