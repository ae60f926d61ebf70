"""The seven stages of a run, each one ``Stage``: its name, what it reads and writes in the run
folder (``RunFolder``'s paths, for every task and prompting), and the function that does it.
``ORDER`` is the data flow (docs/design.md §7):

    tasks -> user split -> prompts -> pools -> utilities -> curves
          -> features -> reward models -> scores on held-out users -> diagnosis -> allocation -> report

Each reads what earlier stages wrote and skips work already on disk, so any stage can be rerun
or resumed alone.  The work itself lives in the modules each stage calls."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from rich.console import Console

from ttp.analysis.allocation import OnlineRule
from ttp.analysis.bon import oracle_curves, random_curves, user_bootstrap
from ttp.analysis.control import ControllerConfig
from ttp.analysis.pools import Pools
from ttp.analysis.scaling import diagnose as diagnose_selector
from ttp.analysis.scaling import fit_ceiling, held_out_top_compression
from ttp.files import write_json_atomic, write_parquet_atomic
from ttp.rewards.families import FAMILIES, servable
from ttp.rewards.selection import Selector
from ttp.runs.evaluation import evaluate_selectors, selector_scores, selectors
from ttp.runs.report import write_report
from ttp.runs.results import cached_table, read_table, write_diagnoses
from ttp.runs.sampling import read_pools, sample_pools
from ttp.tasks.data import PARTS
from ttp.tasks.prompts import PromptBuilder
from ttp.tasks.utility import METRICS, PRIMARY, candidate_table

if TYPE_CHECKING:
    from ttp.runs.pipeline import Pipeline

console = Console(stderr=True)       # progress bars and notes, apart from the tables on standard output


@dataclass(frozen=True)
class Stage:
    """One stage: ``reads`` and ``writes`` name ``RunFolder`` paths; ``run(pipeline)`` does it."""
    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    run: Callable[[Pipeline], object]

    @property
    def summary(self) -> str:
        return f"reads {', '.join(self.reads)}; writes {', '.join(self.writes)}"


def sample(pipeline: Pipeline) -> None:
    c = pipeline.config
    executor = None
    try:
        for task, policy in pipeline.cells():
            path = pipeline.folder.pools(task.name, policy)
            done = {r["query_id"] for r in read_pools(path, c.sampling.n, warn=False)}
            if all(q.id in done for q in task.queries):
                continue
            if c.engine.ray_workers > 0 and executor is None:
                from ttp.runs.ray_executor import RAY_CHUNK, RayExecutor

                executor = RayExecutor(pipeline.factory(), c.engine.ray_workers, c.engine.ray_address,
                                       c.engine.ray_cpus_per_worker, c.engine.ray_gpus_per_worker,
                                       c.engine.chunk_size or RAY_CHUNK)
            sample_pools(list(task.queries), PromptBuilder(task.layout, policy, c.shots, c.convention),
                         None if executor else pipeline.backend(), c.sampling, path,
                         description=f"{task.name} / {policy}", show_progress=pipeline.show_progress,
                         executor=executor)
        for task, policy in pipeline.cells() if c.history_items else ():
            sample_pools(pipeline.history_queries(task), PromptBuilder(task.layout, policy, c.shots, c.convention),
                         pipeline.backend(), pipeline.history_sampling(),
                         pipeline.folder.history_pools(task.name, policy),
                         description=f"{task.name} / {policy} history", show_progress=pipeline.show_progress)
    finally:
        if executor is not None:
            executor.shutdown()


def utilities(pipeline: Pipeline) -> None:
    for task, policy in pipeline.cells():
        path = pipeline.folder.candidates(task.name, policy)
        pools = read_pools(pipeline.folder.pools(task.name, policy), pipeline.config.sampling.n)
        wanted = {q.id for q in task.queries}
        pools = [p for p in pools if p["query_id"] in wanted]
        if len(pools) < len(wanted):
            raise RuntimeError(f"{pipeline.folder.pools(task.name, policy)} has {len(pools)} of "
                               f"{len(wanted)} pools: finish the sampling stage first (`ttp run --out RUN`)")
        done = cached_table(path, columns=["query_id"])
        if done is not None and done.query_id.nunique() == len(pools):
            continue
        write_parquet_atomic(path, candidate_table(pools, task.by_id(), pipeline.config.convention))


def curves(pipeline: Pipeline) -> None:
    for task, policy in pipeline.cells():
        pools, result = Pools.from_frame(pipeline.candidates(task, policy)), {}
        for metric in METRICS:
            oracle = user_bootstrap(oracle_curves(pools[metric]), pools.users, pipeline.config.bootstrap,
                                    seed=pipeline.config.seed)
            rand = user_bootstrap(random_curves(pools[metric]), pools.users, pipeline.config.bootstrap,
                                  seed=pipeline.config.seed)
            result[metric] = {"oracle": oracle.to_json(), "random": rand.to_json(),
                              "ceiling_fits": [f.__dict__ for f in fit_ceiling(oracle.mean)],
                              "queries": len(pools), "users": int(len(set(pools.users)))}
        write_json_atomic(pipeline.folder.curves(task.name, policy), result)


def rewards(pipeline: Pipeline) -> None:
    for task, policy in pipeline.cells():
        table = pipeline.features(task, policy)
        split = pipeline.splits[task.name]
        rows = {p: split.rows(table["user"], p) for p in PARTS}
        y, groups = table[PRIMARY].to_numpy(), table["query_id"].to_numpy()
        held_out = rows["validation"] | rows["test"]
        models, inputs, train_seconds = {}, pipeline.reward_inputs(task, policy), {}
        for family in map(FAMILIES.get, pipeline.config.families):
            dirs = {family.model_name(h): (h, pipeline.folder.reward_model(task.name, policy, family.model_name(h)))
                    for h in family.heads(pipeline.config.reward_models)}
            # the training users' inputs are built only while some model still has to learn
            wanted = held_out | rows["train"] if any(not family.is_saved(d) for _, d in dirs.values()) \
                else held_out
            X, note = family.batch_inputs(table[wanted], inputs)
            subset_rows = {p: r[wanted] for p, r in rows.items()}
            yw, gw = y[wanted], groups[wanted]
            for name, (head, model_dir) in dirs.items():
                if family.is_saved(model_dir):
                    model = family.load(model_dir)
                    train_seconds[name] = getattr(model, "inputs_", {}).get("train_seconds")
                else:
                    console.print(f"training {name} reward model on {task.name} / {policy}")
                    start = time.perf_counter()
                    model = family.fit(head, pipeline.config.seed, X, yw, gw, subset_rows["train"],
                                       subset_rows["validation"], inputs)
                    train_seconds[name] = round(time.perf_counter() - start, 1)
                    model.save(model_dir, {**note, "train_seconds": train_seconds[name]})
                models[name] = (model, X, subset_rows)
        for part in ("validation", "test"):
            scores = selector_scores({n: (m, X[r[part]]) for n, (m, X, r) in models.items()},
                                     table[rows[part]], kappa=pipeline.config.lcb_kappa)
            for path in sorted(pipeline.folder.external_scores(task.name, policy).glob("*.parquet")):
                imported = read_table(path, f"ttp scores {pipeline.folder.root} YOUR_SCORES --task-name {task.name} "
                                            f"--prompting {policy} --name {path.stem}")
                imported = imported.rename(columns={"score": f"score:{path.stem}", "sd": f"sd:{path.stem}"})
                scores = scores.merge(imported, on=["query_id", "candidate"], how="left", validate="1:1")
            write_parquet_atomic(pipeline.folder.scores(task.name, policy, part), scores)
        evaluation = evaluate_selectors(pipeline.pools(task, policy, "test"), pipeline.config.bootstrap,
                                        pipeline.config.seed)
        write_json_atomic(pipeline.folder.reward_eval(task.name, policy),
                          {**evaluation, "train_seconds": train_seconds})


def diagnose(pipeline: Pipeline) -> None:
    """The laws on the test users' pools; the copula per-query law also with the top
    compression of the validation users' pools, so that the report shows λ̂ carried over."""
    tau = pipeline.config.collapse_tau
    for task, policy in pipeline.cells():
        val, test = (pipeline.pools(task, policy, part) for part in ("validation", "test"))
        write_diagnoses(pipeline.folder, task.name, policy, {
            str(s): diagnose_selector(test[s.column], test[PRIMARY], test.users, test.query_ids, collapse_tau=tau,
                             held_out=held_out_top_compression(val[s.column], val[PRIMARY], val.users, tau))
            for s in selectors(test)})


def allocate(pipeline: Pipeline) -> None:
    """Law-guided allocation vs uniform N at equal budgets, on test users' pools; and the
    stopping rule of every trained selector, chosen on validation users, for `ttp generate`
    and the server."""
    selector = Selector.parse(pipeline.config.controller_selector)
    controller = ControllerConfig(collapse_tau=pipeline.config.collapse_tau)
    for task, policy in pipeline.cells():
        val, test = (pipeline.pools(task, policy, part) for part in ("validation", "test"))
        study = pipeline.allocation_study(selector, val, test)
        write_json_atomic(pipeline.folder.allocation(task.name, policy), study.to_json())
        rules = {str(s): OnlineRule.choose(val[s.column], val[PRIMARY], val.users, controller, pipeline.config.seed,
                                           study.online_choice if str(s) == study.selector else None)
                 for s in selectors(val) if servable(s.model)}
        write_json_atomic(pipeline.folder.online_rules(task.name, policy),
                          {name: rule._asdict() for name, rule in rules.items()})


def report(pipeline: Pipeline) -> str:
    """The report (report.md, report.json, figures); its path."""
    return write_report(pipeline.folder, pipeline.config, [t.name for t in pipeline.tasks])


ORDER = (
    Stage("sample", ("config", "split"), ("pools", "history_pools"), sample),
    Stage("utilities", ("pools",), ("candidates",), utilities),
    Stage("curves", ("candidates",), ("curves",), curves),
    Stage("rewards", ("candidates", "split", "external_scores", "history_pools"),
          ("features", "embeddings", "hidden_states", "reward_model", "scores", "reward_eval"), rewards),
    Stage("diagnose", ("scores",), ("diagnosis",), diagnose),
    Stage("allocate", ("scores",), ("allocation", "online_rules"), allocate),
    Stage("report", ("curves", "reward_eval", "diagnosis", "allocation"), ("report",), report),
)
BY_NAME = {stage.name: stage for stage in ORDER}
