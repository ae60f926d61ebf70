"""The run folder: every stage reads and writes here, atomically, so any stage can be rerun
or resumed alone.  One process writes to a run at a time: ``RunFolder.lock()`` holds an OS
file lock for the whole run, and a second writer stops at once, naming the holder.  Task and
policy names become folders only after ``ttp.files.check_name``, so no name can climb out.

    <run>/config.json
    <run>/.lock, <run>/.lock.holder          the writer's lock and who holds it
    <run>/<task>/split.json
    <run>/<task>/<policy>/pools.jsonl        one line per finished query (append-only)
    <run>/<task>/<policy>/candidates.parquet one row per candidate, with its utilities
    <run>/<task>/<policy>/curves.json        oracle and random curves, ceiling fits
    <run>/<task>/<policy>/features.parquet   candidates with reward-model features
    <run>/<task>/<policy>/hidden_states.npz  the policy model's states of each candidate
    <run>/<task>/<policy>/reward_models/<kind>/   trained reward models
    <run>/<task>/<policy>/external_scores/<name>.parquet  scores imported with `ttp scores`
    <run>/<task>/<policy>/test_scores.parquet     every selector's scores on test users
    <run>/<task>/<policy>/reward_eval.json   Best-of-N of every selector on test users
    <run>/<task>/<policy>/validation_scores.parquet  the same on validation users
    <run>/<task>/<policy>/diagnosis.json     the scaling-law diagnosis of every selector
    <run>/<task>/<policy>/diagnosis_per_query.parquet  its per-query values (one row per selector and query)
    <run>/<task>/<policy>/allocation.json    law-guided allocation vs uniform N at equal budget
    <run>/<task>/<policy>/history_pools.jsonl, history_features.parquet  pools of the users' profile items
    <run>/<task>/<policy>/learning_curve.json  the history RMs refitted on k history items per user
    <run>/<task>/<policy>/online_rules.json  the stopping rule and calibration of every trained selector
    <run>/report.md, <run>/figures/*.png
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from ttp.files import check_name


class RunInUse(RuntimeError):
    """Another process is writing to this run folder."""


class RunFolder:
    """Paths of one run; nothing here computes."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def existing(cls, root: str | Path) -> "RunFolder":
        """The run folder at ``root``; without a ``config.json`` it is none, and this says how to start one."""
        folder = cls(root)
        if not folder.config.exists():
            raise FileNotFoundError(f"{folder.root} is not a run folder (no config.json); start one with `ttp run`")
        return folder

    @contextlib.contextmanager
    def lock(self):
        """Hold the run's writer lock; raise ``RunInUse`` naming the holder if another has it."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.root / ".lock")
        holder = self.root / ".lock.holder"
        try:
            lock.acquire(timeout=0)
        except Timeout:
            try:
                who = json.loads(holder.read_text())
                said = (f"process {who['pid']} on {who['host']} ({who['command']}), "
                        f"since {who['since']}")
            except (OSError, ValueError, KeyError):
                said = "another process"
            raise RunInUse(f"{self.root} is in use by {said}; wait for it to finish or stop it, "
                           f"then go on with `ttp run --out {self.root}`") from None
        try:
            holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                          "command": " ".join(["ttp", *sys.argv[1:]])[:200],
                                          "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
            yield self
        finally:
            holder.unlink(missing_ok=True)
            lock.release()

    def task_dir(self, task: str) -> Path:
        return self.root / check_name(task, "task name")

    def policy_dir(self, task: str, policy: str) -> Path:
        return self.task_dir(task) / check_name(policy, "policy name")

    def split(self, task: str) -> Path:
        return self.task_dir(task) / "split.json"

    def pools(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "pools.jsonl"

    def history_pools(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "history_pools.jsonl"

    def history_features(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "history_features.parquet"

    def candidates(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "candidates.parquet"

    def curves(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "curves.json"

    def features(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "features.parquet"

    def hidden_states(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "hidden_states.npz"

    def embeddings(self, task: str) -> Path:
        return self.task_dir(task) / "embeddings.npz"

    def reward_model(self, task: str, policy: str, kind: str) -> Path:
        return self.policy_dir(task, policy) / "reward_models" / check_name(kind, "reward model name")

    def external_scores(self, task: str, policy: str, name: str | None = None) -> Path:
        """The folder of imported score files, or the file of the one called ``name``."""
        folder = self.policy_dir(task, policy) / "external_scores"
        return folder if name is None else folder / f"{check_name(name, 'score name')}.parquet"

    def scores(self, task: str, policy: str, part: str = "test") -> Path:
        return self.policy_dir(task, policy) / f"{part}_scores.parquet"

    def allocation(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "allocation.json"

    def online_rules(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "online_rules.json"

    def learning_curve(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "learning_curve.json"

    def reward_eval(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "reward_eval.json"

    def diagnosis(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "diagnosis.json"

    def diagnosis_per_query(self, task: str, policy: str) -> Path:
        return self.policy_dir(task, policy) / "diagnosis_per_query.parquet"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"
