"""One run of the data flow (DESIGN.md section 7), stage by stage, in one run folder.

    tasks -> user split -> prompts -> pools -> utilities -> curves
          -> features -> reward models -> scores on test users -> diagnosis -> report

Each stage is a method of ``Pipeline`` named in ``STAGES``; it reads what earlier stages
wrote and skips work already on disk, so any stage can be rerun or resumed alone.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
from rich.console import Console

from ttp.policy import PolicyBackend
from ttp.analysis.bon import oracle_curves, random_curves, user_bootstrap
from ttp.runs.config import RunConfig
from ttp.tasks.data import Task, UserSplit, load_task, split_users
from ttp.policy.sampling import pool_matrix, read_pools, sample_pools, score_utilities
from ttp.tasks.prompts import PromptBuilder
from ttp.runs.folder import RunFolder, read_json, write_json_atomic, write_parquet_atomic
from ttp.analysis.scaling import fit_ceiling
from ttp.tasks.utility import METRICS

console = Console(stderr=True)
BACKENDS = ("llama-cpp", "openai", "transformers", "vllm")
STAGES = ("sample", "utilities", "curves", "rewards", "diagnose", "allocate", "report")


def make_backend(config: RunConfig) -> PolicyBackend:
    if config.backend == "llama-cpp":
        from ttp.policy.llama_cpp import LlamaCppBackend

        return LlamaCppBackend(config.model_path, max_sequences=max(config.sampling.n, 1))
    if config.backend == "openai":
        from ttp.policy.openai_server import OpenAICompatibleBackend

        if not (config.server_url and config.server_model):
            raise ValueError("the openai backend needs server_url and server_model (--server-url, --server-model)")
        return OpenAICompatibleBackend(config.server_url, config.server_model)
    if config.backend in ("transformers", "vllm"):
        if not config.model_path:
            raise ValueError(f"the {config.backend} backend needs model_path (--model): a local model")
        if config.backend == "transformers":
            from ttp.policy.transformers_backend import TransformersBackend

            return TransformersBackend(config.model_path)
        from ttp.policy.vllm_backend import VLLMBackend

        return VLLMBackend(config.model_path)
    raise ValueError(f"unknown backend {config.backend!r}; available: {BACKENDS}")


def subset(task: Task, max_per_user: int | None, max_users: int | None, seed: int) -> Task:
    """A seeded subset: at most ``max_users`` users, at most ``max_per_user`` queries each."""
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


class Pipeline:
    """The engine of one run: ``Pipeline(config, folder)``, then its ``STAGES`` in order."""

    def __init__(self, config: RunConfig, root, show_progress: bool = True):
        self.config = config
        self.folder = RunFolder(root)
        self.show_progress = show_progress
        self._backend: PolicyBackend | None = None
        self._tasks: list[Task] | None = None
        if self.folder.config.exists():
            saved = RunConfig.load(self.folder.config)
            if saved.to_json() != config.to_json():
                raise ValueError(f"{self.folder.config} holds another run's configuration; "
                                 f"resume it with `ttp resume {self.folder.root}` or use a new folder")
        write_json_atomic(self.folder.config, config.to_json())

    @classmethod
    def resume(cls, root, show_progress: bool = True) -> "Pipeline":
        return cls(RunConfig.load(RunFolder(root).config), root, show_progress)

    # ---- tasks and splits -------------------------------------------------------------
    @property
    def tasks(self) -> list[Task]:
        if self._tasks is None:
            self._tasks = [
                subset(load_task(s.path, s.name, s.layout), s.max_queries_per_user, s.max_users,
                       self.config.seed)
                for s in self.config.tasks
            ]
        return self._tasks

    def split(self, task: Task) -> UserSplit:
        path = self.folder.split(task.name)
        if path.exists():
            data = read_json(path)
            return UserSplit(tuple(data["train"]), tuple(data["validation"]), tuple(data["test"]))
        split = split_users(task.users, self.config.split, self.config.seed)
        write_json_atomic(path, {"train": split.train, "validation": split.validation, "test": split.test})
        return split

    def cells(self):
        """Every (task, policy) pair of this run."""
        return [(task, policy) for task in self.tasks for policy in self.config.policies]

    # ---- stages -------------------------------------------------------------------------
    def sample(self) -> None:
        executor = None
        try:
            for task, policy in self.cells():
                self.split(task)
                done = {r["query_id"] for r in read_pools(self.folder.pools(task.name, policy))}
                if all(q.id in done for q in task.queries):
                    continue
                if self.config.ray_workers > 0 and executor is None:
                    from ttp.policy.ray_executor import RayExecutor

                    executor = RayExecutor(partial(make_backend, self.config), self.config.ray_workers,
                                           self.config.ray_address)
                elif executor is None and self._backend is None:
                    self._backend = make_backend(self.config)
                sample_pools(list(task.queries), PromptBuilder(task.layout, policy, self.config.shots),
                             self._backend, self.config.sampling, self.folder.pools(task.name, policy),
                             description=f"{task.name} / {policy}", show_progress=self.show_progress,
                             executor=executor)
        finally:
            if executor is not None:
                executor.shutdown()

    def candidates(self, task: Task, policy: str) -> pd.DataFrame:
        path = self.folder.candidates(task.name, policy)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the utilities stage first (`ttp utilities`)")
        return pd.read_parquet(path)

    def utilities(self) -> None:
        for task, policy in self.cells():
            path = self.folder.candidates(task.name, policy)
            pools = read_pools(self.folder.pools(task.name, policy))
            if len(pools) < len(task.queries):
                raise RuntimeError(f"{self.folder.pools(task.name, policy)} has {len(pools)} of "
                                   f"{len(task.queries)} pools: finish the sampling stage first")
            if path.exists() and len(pd.read_parquet(path, columns=["query_id"]).query_id.unique()) == len(pools):
                continue
            write_parquet_atomic(path, score_utilities(pools, task.by_id()))

    def curves(self) -> dict:
        out = {}
        for task, policy in self.cells():
            frame = self.candidates(task, policy)
            result = {}
            for metric in METRICS:
                _, users, u = pool_matrix(frame, metric)
                oracle = user_bootstrap(oracle_curves(u), users, self.config.bootstrap, seed=self.config.seed)
                rand = user_bootstrap(random_curves(u), users, self.config.bootstrap, seed=self.config.seed)
                result[metric] = {
                    "oracle": oracle.to_dict(), "random": rand.to_dict(),
                    "ceiling_fits": [f.__dict__ for f in fit_ceiling(oracle.mean)],
                    "queries": int(len(u)), "users": int(len(set(users))),
                }
            write_json_atomic(self.folder.curves(task.name, policy), result)
            out[(task.name, policy)] = result
        return out

    # ---- reward models ------------------------------------------------------------------
    def features(self, task: Task, policy: str) -> pd.DataFrame:
        """Candidates with their features (cached in the run folder)."""
        from ttp.rewards.features import FEATURES, EmbeddingCache, candidate_features

        path = self.folder.features(task.name, policy)
        frame = self.candidates(task, policy)
        if path.exists():
            cached = pd.read_parquet(path)
            if len(cached) == len(frame) and set(FEATURES) <= set(cached.columns):
                return cached
        cache = EmbeddingCache(self.folder.embeddings(task.name))
        feats = candidate_features(frame, task.by_id(), cache, k=self.config.shots)
        table = pd.concat([frame, feats], axis=1)
        write_parquet_atomic(path, table)
        return table

    def rewards(self) -> dict:
        from ttp.rewards.models import RewardConfig, RewardModel
        from ttp.runs.evaluation import evaluate_selectors, selector_scores

        out = {}
        for task, policy in self.cells():
            table = self.features(task, policy)
            split = self.split(task)
            part = table["user"].map({u: p for p in ("train", "validation", "test")
                                      for u in getattr(split, p)})
            if part.isna().any():
                missing = sorted(table.loc[part.isna(), "user"].unique())[:3]
                raise ValueError(f"users {missing} of {task.name} are in no part of "
                                 f"{self.folder.split(task.name)}; delete it to split again")
            train, val, test = (table[part == p] for p in ("train", "validation", "test"))
            if min(len(train), len(val), len(test)) == 0:
                raise ValueError(f"{task.name}: the split leaves a part with no queries "
                                 f"(train {len(train)}, validation {len(val)}, test {len(test)} candidates); "
                                 f"use more users or other split fractions")
            models = {}
            for kind in ("constant", *self.config.reward_models):
                model_dir = self.folder.reward_model(task.name, policy, kind)
                if (model_dir / "model.pt").exists():
                    models[kind] = RewardModel.load(model_dir)
                    continue
                console.print(f"training {kind} reward model on {task.name} / {policy}")
                model = RewardModel(RewardConfig(kind=kind, seed=self.config.seed))
                model.fit(*_xyg(train), *_xyg(val))
                model.save(model_dir)
                models[kind] = model
            write_parquet_atomic(self.folder.scores(task.name, policy, "validation"),
                                 selector_scores(models, val, kappa=self.config.lcb_kappa))
            scores = selector_scores(models, test, kappa=self.config.lcb_kappa)
            write_parquet_atomic(self.folder.scores(task.name, policy), scores)
            result = evaluate_selectors(scores, self.config.bootstrap, self.config.seed)
            write_json_atomic(self.folder.reward_eval(task.name, policy), result)
            out[(task.name, policy)] = result
        return out

    # ---- diagnosis and report -------------------------------------------------------------
    def diagnose(self) -> dict:
        out = {}
        for task, policy in self.cells():
            path = self.folder.scores(task.name, policy)
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: run the rewards stage first (`ttp rewards`)")
            result = _diagnose_cell(pd.read_parquet(path), self.config.collapse_tau)
            write_json_atomic(self.folder.diagnosis(task.name, policy), result)
            out[(task.name, policy)] = result
        return out

    def allocate(self) -> dict:
        """Law-guided allocation vs uniform N at equal budgets, on test users' pools."""
        from ttp.analysis.control import POLICIES, calibration, evaluate_policy
        from ttp.tasks.utility import PRIMARY

        out = {}
        selector = self.config.controller_selector
        for task, policy in self.cells():
            matrices = {}
            for part in ("validation", "test"):
                path = self.folder.scores(task.name, policy, part)
                if not path.exists():
                    raise FileNotFoundError(f"{path} is missing: run the rewards stage first (`ttp rewards`)")
                frame = pd.read_parquet(path)
                _, users, u = pool_matrix(frame, PRIMARY)
                _, _, s = pool_matrix(frame, f"score:{selector}")
                matrices[part] = (s, u, users)
            kappa = calibration(*matrices["validation"][:2])
            s, u, users = matrices["test"]
            m = u.shape[1]
            budgets = [b for b in (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32) if b <= m]
            curves = {}
            for name in POLICIES:
                rows = [evaluate_policy(name, s, u, users, b, kappa, seed=self.config.seed) for b in budgets]
                curves[name] = {
                    "budget": budgets,
                    "samples_per_query": [r["samples_per_query"] for r in rows],
                    "curve": [user_bootstrap(r["per_query"][:, None], users, self.config.bootstrap,
                                             seed=self.config.seed).to_dict() for r in rows],
                }
            target = _uniform_at(curves["uniform"], 8)
            for c in curves.values():
                c["samples_to_reach_uniform_8"] = _samples_to_reach(c, target)
            result = {"selector": selector, "kappa": kappa, "queries": int(len(u)),
                      "uniform_8": target, "policies": curves}
            write_json_atomic(self.folder.allocation(task.name, policy), result)
            out[(task.name, policy)] = result
        return out

    def generate(self, task_name: str, policy: str = "personalized", query_id: str | None = None,
                 user: str | None = None, text: str | None = None, budget: int = 8, min_gain: float = 1e-3):
        """Online test-time personalization for one query: sample adaptively with the law as
        controller, pick with the trained reward model; returns a ``control.Decision``."""
        from dataclasses import replace

        from ttp.analysis.control import calibration, choose_online
        from ttp.tasks.data import Query
        from ttp.rewards.features import FEATURES, EmbeddingCache, candidate_features
        from ttp.rewards.models import RewardModel, selection_scores
        from ttp.tasks.utility import PRIMARY

        tasks = {t.name: t for t in self.tasks}
        if task_name not in tasks:
            raise KeyError(f"task {task_name!r} is not in this run; tasks: {sorted(tasks)}")
        task = tasks[task_name]
        if query_id is not None:
            if query_id not in task.by_id():
                raise KeyError(f"query {query_id!r} is not in task {task_name}")
            query = task.by_id()[query_id]
        else:
            mine = [q for q in task.queries if q.user == user]
            if not mine or not text:
                raise ValueError(f"give a query id, or a user of {task_name} and a text; user {user!r} "
                                 f"has {len(mine)} queries in the task")
            profile = {item.id: item for q in mine for item in q.profile}
            query = Query("online", user, text, tuple(profile.values()), gold="")
        kind, _, rule = self.config.controller_selector.partition("/")
        model = RewardModel.load(self.folder.reward_model(task.name, policy, kind))
        validation = pd.read_parquet(self.folder.scores(task.name, policy, "validation"))
        _, _, u = pool_matrix(validation, PRIMARY)
        _, _, s = pool_matrix(validation, f"score:{self.config.controller_selector}")
        kappa, dataset_spread = calibration(s, u), float(s.std(axis=1).mean())
        if self._backend is None:
            self._backend = make_backend(self.config)
        prompt = PromptBuilder(task.layout, policy, self.config.shots)(query)
        drawn = []
        cache = EmbeddingCache(self.folder.embeddings(task.name))

        def draw(k: int) -> list[str]:
            params = replace(self.config.sampling, n=k, seed=self.config.sampling.seed + len(drawn))
            drawn.extend(self._backend.sample(prompt, params))
            return [c.text for c in drawn[-k:]]

        def score(texts: list[str]):
            frame = pd.DataFrame({"query_id": query.id, "user": query.user, "candidate": range(len(texts)),
                                  "text": texts, "logprob": [c.logprob for c in drawn],
                                  "n_tokens": [c.n_tokens for c in drawn]})
            X = candidate_features(frame, {query.id: query}, cache, k=self.config.shots)[list(FEATURES)]
            X = X.to_numpy(np.float32)
            groups = np.zeros(len(texts))
            if model.is_probabilistic:
                mean, sd = model.predict_dist(X)
            else:
                mean, sd = model.predict(X), np.full(len(texts), np.nan)
            return selection_scores(model, X, groups, rule or "mean", self.config.lcb_kappa), mean, sd

        return choose_online(draw, score, budget, kappa, dataset_spread, min_gain=min_gain)

    def report(self):
        from ttp.runs.report import write_report

        return write_report(self)


def _uniform_at(curve: dict, budget: float) -> float | None:
    if budget not in curve["budget"]:
        return None
    return curve["curve"][curve["budget"].index(budget)]["mean"][0]


def _samples_to_reach(curve: dict, target: float | None) -> float | None:
    """Fewest average samples per query at which the policy's score reaches ``target``
    (linear interpolation between measured budgets); None if it never does."""
    if target is None:
        return None
    spent = curve["samples_per_query"]
    means = [c["mean"][0] for c in curve["curve"]]
    for i, value in enumerate(means):
        if value >= target - 1e-12:
            if i == 0:
                return spent[0]
            frac = (target - means[i - 1]) / (value - means[i - 1])
            return spent[i - 1] + frac * (spent[i] - spent[i - 1])
    return None


def _xyg(frame: pd.DataFrame):
    from ttp.rewards.features import FEATURES
    from ttp.tasks.utility import PRIMARY

    return frame[list(FEATURES)].to_numpy(np.float32), frame[PRIMARY].to_numpy(np.float32), \
        frame["query_id"].to_numpy()


def _diagnose_cell(scores: pd.DataFrame, tau: float) -> dict:
    from ttp.analysis.scaling import diagnose
    from ttp.runs.evaluation import selectors
    from ttp.tasks.utility import PRIMARY

    query_ids, users, u = pool_matrix(scores, PRIMARY)
    result = {}
    for name in selectors(scores):
        _, _, s = pool_matrix(scores, f"score:{name}")
        d = diagnose(s, u, users, query_ids, collapse_tau=tau)
        result[name] = {**d.summary(),
                        "rho_q": d.per_query["rho"].tolist(),
                        "flat_q": d.per_query["flat"].tolist(),
                        "user_score_spread": d.user_score_spread}
    return result
