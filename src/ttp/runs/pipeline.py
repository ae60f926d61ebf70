"""One run in one run folder: ``Pipeline(config, folder)`` holds what every stage shares (the
tasks, their user splits, the policy backend, the candidates' features and the reward models'
inputs), ``run(stage)`` runs one of the ``STAGES`` (``runs/stages.py``: what each reads and
writes), and ``run_stages`` runs them in order under the folder's writer lock.  The steps that add
selectors to a finished run are in ``runs/additions.py``.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import pandas as pd
from rich.progress import Progress

from ttp.analysis.allocation import allocation_study
from ttp.analysis.control import ControllerConfig
from ttp.analysis.pools import Pools
from ttp.files import read_json, write_json_atomic, write_parquet_atomic
from ttp.rewards.families import Inputs
from ttp.rewards.features import FEATURES, EmbeddingCache, candidate_features
from ttp.rewards.selection import Selector
from ttp.runs.config import ConfigError, RunConfig
from ttp.runs.folder import RunFolder
from ttp.runs.results import cached_table, read_table
from ttp.runs.sampling import read_pools
from ttp.runs.stages import BY_NAME, ORDER, console
from ttp.tasks.data import PARTS, Query, Task, UserSplit, load_task, split_users, subset
from ttp.tasks.history import history_queries
from ttp.tasks.utility import PRIMARY, candidate_table
from ttp.tuning import users_with_learnt_golds

STAGES = tuple(stage.name for stage in ORDER)
AFTER_SCORES = STAGES[3:]   # what a new selector must go through to be judged like the trained ones


class Pipeline:
    """The shared state of one run's stages: ``Pipeline(config, folder)``, then ``run(stage)``."""

    def __init__(self, config: RunConfig, root, show_progress: bool = True):
        self.config, self.folder, self.show_progress = config, RunFolder(root), show_progress
        self.engine = config.engine.located(self.folder.root)
        self._backend = None
        self._history_queries: dict[tuple[str, int], list[Query]] = {}
        if self.folder.config.exists() and RunConfig.load(self.folder.config).to_json() != config.to_json():
            raise ConfigError(f"{self.folder.config} holds another run's configuration; resume it with "
                              f"`ttp run --out {self.folder.root}` or use a new folder")
        self.tasks: list[Task] = [subset(load_task(s.path, s.name, s.layout), s.max_queries_per_user,
                                         s.max_users, config.seed) for s in config.tasks]
        self.splits = {task.name: self.split(task) for task in self.tasks}
        write_json_atomic(self.folder.config, config.to_json())

    @classmethod
    def resume(cls, root, show_progress: bool = True) -> "Pipeline":
        return cls(RunConfig.load(RunFolder(root).config), root, show_progress)

    def split(self, task: Task) -> UserSplit:
        """The task's saved user split, or a new one checked before any sampling; either must hold
        out no user whose golds the policy model was tuned on."""
        split = self._saved_split(task)
        learnt = users_with_learnt_golds(self.engine.model_path) & set(split.validation + split.test)
        if learnt:
            raise ConfigError(f"the model {self.engine.model_path} was tuned on the golds of "
                              f"{sorted(learnt)[:3]} ({len(learnt)} users), whom this run holds out; tune it "
                              f"with the run's --split and --seed")
        return split

    def _saved_split(self, task: Task) -> UserSplit:
        path = self.folder.split(task.name)
        if path.exists():
            data = read_json(path)
            for part in PARTS:
                users = data.get(part) if isinstance(data, dict) else None
                if not isinstance(users, list) or not all(isinstance(u, (str, int)) for u in users):
                    raise ConfigError(f"{path}: field {part!r} is not a list of user ids; delete it to split again")
            split = UserSplit(*(tuple(data[p]) for p in PARTS))
            missing = sorted(set(task.users) - {u for p in PARTS for u in data[p]})
            if missing:
                raise ConfigError(f"users {missing[:3]} of {task.name} are in no part of {path}; "
                                  f"delete it to split again")
            return split
        split = split_users(task.users, self.config.split, self.config.seed)
        write_json_atomic(path, {p: getattr(split, p) for p in PARTS})
        return split

    def run(self, stage: str):
        """Run one of ``STAGES`` (``runs/stages.py``); what it returns (the report's path, for the report)."""
        if stage not in BY_NAME:
            raise ValueError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
        return BY_NAME[stage].run(self)

    def cells(self):
        return [(task, policy) for task in self.tasks for policy in self.config.policies]

    def pools(self, task: Task, policy: str, part: str) -> Pools:
        return Pools.from_frame(read_table(self.folder.scores(task.name, policy, part),
                                           f"ttp rewards {self.folder.root}"))

    def factory(self):
        return partial(self.engine.make, self.config.sampling.n)

    def backend(self):
        """The policy backend, made on first use and kept for the run."""
        if self._backend is None:
            self._backend = self.factory()()
        return self._backend

    def history_queries(self, task: Task) -> list[Query]:
        """The users' profile items as queries (``ttp.tasks.history``), none a held-out query's
        record; made once per task (every held-out query is compared with every item)."""
        key = (task.name, self.config.history_items)
        if key not in self._history_queries:
            split = self.splits[task.name]
            held_out = [q for q in task.queries if split.rows([q.user], "validation", "test")[0]]
            self._history_queries[key] = history_queries(task, held_out, self.config.history_items, self.config.seed)
        return self._history_queries[key]

    def history_sampling(self):
        return self.config.sampling.model_copy(update={"n": self.config.history_pool_size or self.config.sampling.n})

    def history_features(self, task: Task, policy: str) -> pd.DataFrame:
        """The history pools' candidates with their utilities and features (cached in the run folder)."""
        path = self.folder.history_features(task.name, policy)
        queries = {q.id: q for q in self.history_queries(task)}
        cached = cached_table(path)
        if cached is not None and set(cached.query_id) == set(queries) and set(FEATURES) <= set(cached.columns):
            return cached
        pools = [p for p in read_pools(self.folder.history_pools(task.name, policy), self.history_sampling().n)
                 if p["query_id"] in queries]
        if len(pools) < len(queries):
            raise RuntimeError(f"{self.folder.history_pools(task.name, policy)} has {len(pools)} of {len(queries)} "
                               f"history pools: finish the sampling stage first (`ttp run --out RUN`)")
        return self._with_features(candidate_table(pools, queries, self.config.convention), queries, task, path)

    def candidates(self, task: Task, policy: str) -> pd.DataFrame:
        return read_table(self.folder.candidates(task.name, policy), f"ttp utilities {self.folder.root}")

    def features(self, task: Task, policy: str) -> pd.DataFrame:
        """Candidates with their reward-model features (cached in the run folder)."""
        path = self.folder.features(task.name, policy)
        frame = self.candidates(task, policy)
        cached = cached_table(path)
        if cached is not None and len(cached) == len(frame) and set(FEATURES) <= set(cached.columns):
            return cached
        return self._with_features(frame, task.by_id(), task, path)

    def _with_features(self, frame: pd.DataFrame, queries: dict, task: Task, path) -> pd.DataFrame:
        """``frame`` with its candidates' features beside it, written to ``path``."""
        feats = candidate_features(frame, queries, EmbeddingCache(self.folder.embeddings(task.name)),
                                   k=self.config.shots, convention=self.config.convention)
        table = pd.concat([frame, feats], axis=1)
        write_parquet_atomic(path, table)
        return table

    def reward_inputs(self, task: Task, policy: str) -> Inputs:
        """What the reward-model families read of this task and policy, beyond the candidates."""
        c = self.config

        @contextmanager
        def track(description: str, total: int | None):
            with Progress(console=console, disable=not self.show_progress) as bar:
                job = bar.add_task(f"{description} ({task.name} / {policy})", total=total)
                yield lambda: bar.advance(job)

        history = self.history_features(task, policy) if c.history_items else None
        return Inputs(task.by_id(), task.layout, c.shots, c.convention, self.backend,
                      EmbeddingCache(self.folder.embeddings(task.name)), self.engine.label,
                      self.folder.hidden_states(task.name, policy), track=track, history=history,
                      rm_model=c.rm_model)

    def allocation_study(self, selector: Selector, validation: Pools, test: Pools):
        """Every allocation policy for ``selector`` at equal budgets on the ``test`` pools, its
        calibration and online rule chosen on the ``validation`` pools."""
        return allocation_study(str(selector), (validation[selector.column], validation[PRIMARY]),
                                (test[selector.column], test[PRIMARY], test.users),
                                ControllerConfig(collapse_tau=self.config.collapse_tau), self.config.bootstrap,
                                self.config.seed, validation_users=validation.users)


def run_stages(config: RunConfig | None, root, stages=STAGES, first=None, before_stage=None, after_stage=None,
               show_progress: bool = True) -> Pipeline:
    """What ``ttp run`` does, from Python: ``stages`` in order under the run folder's writer lock (a
    rerun resumes); ``config`` None resumes the saved one.  ``first(pipeline)`` runs before them,
    ``before_stage(stage)`` and ``after_stage(pipeline, stage, result)`` around each."""
    folder = RunFolder(root) if config else RunFolder.existing(root)
    with folder.lock():
        pipeline = Pipeline(config, root, show_progress) if config else Pipeline.resume(root, show_progress)
        if first is not None:
            first(pipeline)
        for stage in stages:
            if before_stage is not None:
                before_stage(stage)
            result = pipeline.run(stage)
            if after_stage is not None:
                after_stage(pipeline, stage, result)
    return pipeline
