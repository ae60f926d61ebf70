"""One run of the data flow (docs/design.md §7), stage by stage, in one run folder.

    tasks -> user split -> prompts -> pools -> utilities -> curves
          -> features -> reward models -> scores on held-out users -> diagnosis -> allocation -> report

Each stage is a method of ``Pipeline`` named in ``STAGES``; it reads what earlier stages wrote
and skips work already on disk, so any stage can be rerun or resumed alone.  Three more steps
add selectors to a finished run, after which ``AFTER_SCORES`` judges them: ``zero_shot``,
``import_scores`` and ``add_families``.  The work itself lives in the modules each step calls;
this file only sequences it over the run folder.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from functools import partial

import pandas as pd
from rich.console import Console
from rich.progress import Progress

from ttp.analysis.allocation import OnlineRule, allocation_study
from ttp.analysis.bon import oracle_curves, random_curves, user_bootstrap
from ttp.analysis.control import ControllerConfig
from ttp.analysis.pools import Pools
from ttp.analysis.scaling import diagnose, fit_ceiling, held_out_top_compression
from ttp.files import read_json, write_json_atomic, write_parquet_atomic
from ttp.rewards.external import check_selector_name, read_scores
from ttp.rewards.families import FAMILIES, Inputs, check_families, servable
from ttp.rewards.features import FEATURES, EmbeddingCache, candidate_features
from ttp.rewards.remote import RemoteScorer, append_checkpoint, read_checkpoint
from ttp.rewards.selection import Selector
from ttp.rewards.zero_shot import ZERO_SHOT, zero_shot_scores
from ttp.runs.config import ConfigError, RunConfig
from ttp.runs.evaluation import evaluate_selectors, selector_scores, selectors
from ttp.runs.folder import RunFolder
from ttp.runs.report import write_report
from ttp.runs.results import UNREADABLE_TABLE, read_table, write_diagnoses
from ttp.runs.sampling import read_pools, sample_pools
from ttp.tasks.data import PARTS, Query, Task, UserSplit, load_task, split_users, subset
from ttp.tasks.history import history_queries
from ttp.tasks.prompts import PromptBuilder
from ttp.tasks.utility import METRICS, PRIMARY, candidate_table
from ttp.tuning import users_with_learnt_golds

console = Console(stderr=True)
STAGES = ("sample", "utilities", "curves", "rewards", "diagnose", "allocate", "report")
AFTER_SCORES = STAGES[3:]   # what a new selector must go through to be judged like the trained ones


def _cached(path, columns: list[str] | None = None) -> pd.DataFrame | None:
    """A table an earlier call wrote, or None where it is missing or damaged: it is then made again."""
    try:
        return pd.read_parquet(path, columns=columns)
    except UNREADABLE_TABLE:
        return None


class Pipeline:
    """The engine of one run: ``Pipeline(config, folder)``, then its ``STAGES`` in order."""

    def __init__(self, config: RunConfig, root, show_progress: bool = True):
        self.config, self.folder, self.show_progress = config, RunFolder(root), show_progress
        self.engine = config.engine.located(self.folder.root)
        self._backend = None
        self._history_queries: dict[tuple[str, int], list[Query]] = {}
        if self.folder.config.exists() and RunConfig.load(self.folder.config).to_json() != config.to_json():
            raise ConfigError(f"{self.folder.config} holds another run's configuration; resume it with "
                              f"`ttp resume {self.folder.root}` or use a new folder")
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

    def cells(self):
        return [(task, policy) for task in self.tasks for policy in self.config.policies]

    def _pools(self, task: Task, policy: str, part: str) -> Pools:
        return Pools.from_frame(read_table(self.folder.scores(task.name, policy, part),
                                           f"ttp rewards {self.folder.root}"))

    def _factory(self):
        return partial(self.engine.make, self.config.sampling.n)

    def backend(self):
        """The policy backend, made on first use and kept for the run."""
        if self._backend is None:
            self._backend = self._factory()()
        return self._backend

    def sample(self) -> None:
        c = self.config
        executor = None
        try:
            for task, policy in self.cells():
                path = self.folder.pools(task.name, policy)
                done = {r["query_id"] for r in read_pools(path, c.sampling.n, warn=False)}
                if all(q.id in done for q in task.queries):
                    continue
                if c.engine.ray_workers > 0 and executor is None:
                    from ttp.runs.ray_executor import RAY_CHUNK, RayExecutor

                    executor = RayExecutor(self._factory(), c.engine.ray_workers, c.engine.ray_address,
                                           c.engine.ray_cpus_per_worker, c.engine.ray_gpus_per_worker,
                                           c.engine.chunk_size or RAY_CHUNK)
                sample_pools(list(task.queries), PromptBuilder(task.layout, policy, c.shots, c.convention),
                             None if executor else self.backend(), c.sampling, path,
                             description=f"{task.name} / {policy}", show_progress=self.show_progress,
                             executor=executor)
            for task, policy in self.cells() if c.history_items else ():
                sample_pools(self.history_queries(task), PromptBuilder(task.layout, policy, c.shots, c.convention),
                             self.backend(), self._history_sampling(), self.folder.history_pools(task.name, policy),
                             description=f"{task.name} / {policy} history", show_progress=self.show_progress)
        finally:
            if executor is not None:
                executor.shutdown()

    def history_queries(self, task: Task) -> list[Query]:
        """The users' profile items as queries (``ttp.tasks.history``), none a held-out query's
        record; made once per task (every held-out query is compared with every item)."""
        key = (task.name, self.config.history_items)
        if key not in self._history_queries:
            split = self.splits[task.name]
            held_out = [q for q in task.queries if split.rows([q.user], "validation", "test")[0]]
            self._history_queries[key] = history_queries(task, held_out, self.config.history_items, self.config.seed)
        return self._history_queries[key]

    def _history_sampling(self):
        return replace(self.config.sampling, n=self.config.history_pool_size or self.config.sampling.n)

    def add_history(self, items_per_user: int, pool_size: int | None = None) -> None:
        """Sample history pools from now on (``items_per_user`` per user, pools of ``pool_size``)
        and train the history family on them; the run's configuration says so."""
        c = self.config
        if c.history_items and (c.history_items, c.history_pool_size) != (items_per_user, pool_size):
            raise ConfigError(f"this run's history pools are drawn with {c.history_items} items per user and "
                              f"pools of {c.history_pool_size or c.sampling.n}; copy the run folder to try others")
        families = tuple(dict.fromkeys([*c.families, *(f for f in FAMILIES if FAMILIES[f].trains_on_history)]))
        self.config = replace(c, history_items=items_per_user, history_pool_size=pool_size, families=families)
        write_json_atomic(self.folder.config, self.config.to_json())

    def history_features(self, task: Task, policy: str) -> pd.DataFrame:
        """The history pools' candidates with their utilities and features (cached in the run folder)."""
        path = self.folder.history_features(task.name, policy)
        queries = {q.id: q for q in self.history_queries(task)}
        cached = _cached(path)
        if cached is not None and set(cached.query_id) == set(queries) and set(FEATURES) <= set(cached.columns):
            return cached
        pools = [p for p in read_pools(self.folder.history_pools(task.name, policy), self._history_sampling().n)
                 if p["query_id"] in queries]
        if len(pools) < len(queries):
            raise RuntimeError(f"{self.folder.history_pools(task.name, policy)} has {len(pools)} of {len(queries)} "
                               f"history pools: finish the sampling stage first (`ttp resume`)")
        return self._with_features(candidate_table(pools, queries, self.config.convention), queries, task, path)

    def candidates(self, task: Task, policy: str) -> pd.DataFrame:
        return read_table(self.folder.candidates(task.name, policy), f"ttp utilities {self.folder.root}")

    def utilities(self) -> None:
        for task, policy in self.cells():
            path = self.folder.candidates(task.name, policy)
            pools = read_pools(self.folder.pools(task.name, policy), self.config.sampling.n)
            wanted = {q.id for q in task.queries}
            pools = [p for p in pools if p["query_id"] in wanted]
            if len(pools) < len(wanted):
                raise RuntimeError(f"{self.folder.pools(task.name, policy)} has {len(pools)} of "
                                   f"{len(wanted)} pools: finish the sampling stage first (`ttp resume`)")
            done = _cached(path, columns=["query_id"])
            if done is not None and done.query_id.nunique() == len(pools):
                continue
            write_parquet_atomic(path, candidate_table(pools, task.by_id(), self.config.convention))

    def zero_shot(self, scorers: tuple[str, ...] = ()) -> None:
        """Score the held-out users' pools with the zero-shot scorers on the run's own model
        (``scorers``, or every one a cell does not have yet), stored as the run's outside scores."""
        c = self.config
        for task, policy in self.cells():
            missing = [n for n in ZERO_SHOT if not self.folder.external_scores(task.name, policy, n).exists()]
            wanted = tuple(scorers or missing)
            if not wanted:
                continue
            split = self.splits[task.name]
            frame = self.candidates(task, policy)
            held_out = frame[split.rows(frame["user"], "validation", "test")]
            with Progress(console=console, disable=not self.show_progress) as bar:
                job = bar.add_task(f"{', '.join(wanted)} on {task.name} / {policy}", total=held_out.query_id.nunique())
                table = zero_shot_scores(held_out, task.by_id(), task.layout, self.backend(),
                                         EmbeddingCache(self.folder.embeddings(task.name)), c.shots, c.convention,
                                         wanted, progress=lambda: bar.advance(job))
            for name in wanted:
                write_parquet_atomic(self.folder.external_scores(task.name, policy, name),
                                     table[["query_id", "candidate", name]].rename(columns={name: "score"}))

    def import_scores(self, file, task: str, policy: str, name: str) -> pd.DataFrame:
        """Scores from another program for the pools of ``task`` / ``policy``, checked against them
        and stored as the selector ``name``."""
        check_selector_name(name, {"random", "constant", *self.config.reward_models})
        candidates = self.folder.candidates(task, policy)
        if not candidates.exists():
            raise FileNotFoundError(f"{candidates} is missing: the run has no pools of {task} / {policy} yet")
        table = read_scores(file, read_table(candidates, f"ttp utilities {self.folder.root}",
                                             columns=["query_id", "candidate"]))
        write_parquet_atomic(self.folder.external_scores(task, policy, name), table)
        return table

    def score_from_url(self, scorer: RemoteScorer, task: str, policy: str, name: str) -> pd.DataFrame:
        """The held-out users' pools of ``task`` / ``policy`` scored by an endpoint
        (``RemoteScorer``), stored as the selector ``name``.  Each pool's scores are appended to
        a checkpoint as they come, so an interrupted call asks again only for the pools left."""
        check_selector_name(name, {"random", "constant", *self.config.reward_models})
        the_task = next((t for t in self.tasks if t.name == task), None)
        if the_task is None or policy not in self.config.policies:
            raise KeyError(f"{task} / {policy} is not a cell of this run; cells: "
                           f"{[f'{t.name} / {p}' for t, p in self.cells()]}")
        frame = self.candidates(the_task, policy)
        held_out = frame[self.splits[task].rows(frame["user"], "validation", "test")]
        target = self.folder.external_scores(task, policy, name)
        checkpoint = target.with_suffix(".partial.jsonl")
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        scored = read_checkpoint(checkpoint)
        queries = the_task.by_id()
        pools = [(q, pool) for q, pool in held_out.groupby("query_id", sort=False) if q not in scored]
        with Progress(console=console, disable=not self.show_progress) as bar, open(checkpoint, "a") as out:
            job = bar.add_task(f"scores from {scorer.url} ({task} / {policy})", total=len(pools))
            for query_id, pool in pools:
                query = queries[query_id]
                score, _, sd = scorer(query.user, query.input, pool["text"].tolist(), pool["logprob"].tolist(),
                                      pool["n_tokens"].tolist())
                scored[query_id] = append_checkpoint(out, query_id, pool["candidate"].tolist(), score, sd)
                bar.advance(job)
        table = pd.concat([pd.DataFrame(scored[q]) for q in held_out["query_id"].unique()], ignore_index=True)
        if table["sd"].isna().any():
            table = table.drop(columns="sd")
        write_parquet_atomic(target, table)
        checkpoint.unlink()
        return table

    def add_families(self, families=()) -> None:
        """Train these reward-model families from now on too (by default every registered family
        the run does not train yet and has the pools for); the run's configuration says so."""
        # the families that learn from history pools come with them (``add_history``)
        wanted = families or [f for f in FAMILIES if f not in self.config.families
                              and (self.config.history_items or not FAMILIES[f].trains_on_history)]
        families = tuple(dict.fromkeys([*self.config.families, *wanted]))
        self.config = replace(self.config, families=check_families(families))
        write_json_atomic(self.folder.config, self.config.to_json())

    def curves(self) -> None:
        for task, policy in self.cells():
            pools, result = Pools.from_frame(self.candidates(task, policy)), {}
            for metric in METRICS:
                oracle = user_bootstrap(oracle_curves(pools[metric]), pools.users, self.config.bootstrap,
                                        seed=self.config.seed)
                rand = user_bootstrap(random_curves(pools[metric]), pools.users, self.config.bootstrap,
                                      seed=self.config.seed)
                result[metric] = {"oracle": oracle.to_json(), "random": rand.to_json(),
                                  "ceiling_fits": [f.__dict__ for f in fit_ceiling(oracle.mean)],
                                  "queries": len(pools), "users": int(len(set(pools.users)))}
            write_json_atomic(self.folder.curves(task.name, policy), result)

    def features(self, task: Task, policy: str) -> pd.DataFrame:
        """Candidates with their reward-model features (cached in the run folder)."""
        path = self.folder.features(task.name, policy)
        frame = self.candidates(task, policy)
        cached = _cached(path)
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
                      self.folder.hidden_states(task.name, policy), track=track, history=history)

    def rewards(self) -> None:
        for task, policy in self.cells():
            table = self.features(task, policy)
            split = self.splits[task.name]
            rows = {p: split.rows(table["user"], p) for p in PARTS}
            y, groups = table[PRIMARY].to_numpy(), table["query_id"].to_numpy()
            held_out = rows["validation"] | rows["test"]
            models, inputs = {}, self.reward_inputs(task, policy)
            for family in map(FAMILIES.get, self.config.families):
                dirs = {family.model_name(h): (h, self.folder.reward_model(task.name, policy, family.model_name(h)))
                        for h in family.heads(self.config.reward_models)}
                # the training users' inputs are built only while some model still has to learn
                wanted = held_out | rows["train"] if any(not family.is_saved(d) for _, d in dirs.values()) \
                    else held_out
                X, note = family.batch_inputs(table[wanted], inputs)
                subset_rows = {p: r[wanted] for p, r in rows.items()}
                yw, gw = y[wanted], groups[wanted]
                for name, (head, model_dir) in dirs.items():
                    if family.is_saved(model_dir):
                        model = family.load(model_dir)
                    else:
                        console.print(f"training {name} reward model on {task.name} / {policy}")
                        model = family.fit(head, self.config.seed, X, yw, gw, subset_rows["train"],
                                           subset_rows["validation"], inputs)
                        model.save(model_dir, note)
                    models[name] = (model, X, subset_rows)
            for part in ("validation", "test"):
                scores = selector_scores({n: (m, X[r[part]]) for n, (m, X, r) in models.items()},
                                         table[rows[part]], kappa=self.config.lcb_kappa)
                for path in sorted(self.folder.external_scores(task.name, policy).glob("*.parquet")):
                    imported = read_table(path, f"ttp scores {self.folder.root} YOUR_SCORES --task-name {task.name} "
                                                f"--prompting {policy} --name {path.stem}")
                    imported = imported.rename(columns={"score": f"score:{path.stem}", "sd": f"sd:{path.stem}"})
                    scores = scores.merge(imported, on=["query_id", "candidate"], how="left", validate="1:1")
                write_parquet_atomic(self.folder.scores(task.name, policy, part), scores)
            write_json_atomic(self.folder.reward_eval(task.name, policy),
                              evaluate_selectors(self._pools(task, policy, "test"), self.config.bootstrap,
                                                 self.config.seed))

    def diagnose(self) -> None:
        """The laws on the test users' pools; the copula per-query law also with the top
        compression of the validation users' pools, so that the report shows λ̂ carried over."""
        tau = self.config.collapse_tau
        for task, policy in self.cells():
            val, test = (self._pools(task, policy, part) for part in ("validation", "test"))
            write_diagnoses(self.folder, task.name, policy, {
                str(s): diagnose(test[s.column], test[PRIMARY], test.users, test.query_ids, collapse_tau=tau,
                                 held_out=held_out_top_compression(val[s.column], val[PRIMARY], val.users, tau))
                for s in selectors(test)})

    def allocate(self) -> None:
        """Law-guided allocation vs uniform N at equal budgets, on test users' pools; and the
        stopping rule of every trained selector, chosen on validation users, for `ttp generate`
        and the server."""
        selector = Selector.parse(self.config.controller_selector)
        controller = ControllerConfig(collapse_tau=self.config.collapse_tau)
        for task, policy in self.cells():
            val, test = (self._pools(task, policy, part) for part in ("validation", "test"))
            study = self.allocation_study(selector, val, test)
            write_json_atomic(self.folder.allocation(task.name, policy), study.to_json())
            rules = {str(s): OnlineRule.choose(val[s.column], val[PRIMARY], val.users, controller, self.config.seed,
                                               study.online_choice if str(s) == study.selector else None)
                     for s in selectors(val) if servable(s.model)}
            write_json_atomic(self.folder.online_rules(task.name, policy),
                              {name: rule._asdict() for name, rule in rules.items()})

    def allocation_study(self, selector: Selector, validation: Pools, test: Pools):
        """Every allocation policy for ``selector`` at equal budgets on the ``test`` pools, its
        calibration and online rule chosen on the ``validation`` pools."""
        return allocation_study(str(selector), (validation[selector.column], validation[PRIMARY]),
                                (test[selector.column], test[PRIMARY], test.users),
                                ControllerConfig(collapse_tau=self.config.collapse_tau), self.config.bootstrap,
                                self.config.seed, validation_users=validation.users)

    def report(self) -> str:
        return write_report(self.folder, self.config, [t.name for t in self.tasks])
