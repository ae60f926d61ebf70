"""Steps that add selectors or data to a run, between its stages: after one of them, the stages
after scoring (``AFTER_SCORES``) judge what it added like the trained reward models.

- ``add_history``: sample pools of the users' own profile items and train the history family;
- ``add_families``: train more reward-model families;
- ``zero_shot``: the policy's own zero-shot scorers;
- ``import_scores`` and ``score_from_url``: an outside reward model's scores, from a file or an endpoint."""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from rich.progress import Progress

from ttp.files import write_json_atomic, write_parquet_atomic
from ttp.rewards.external import check_selector_name, read_scores
from ttp.rewards.families import FAMILIES, check_families
from ttp.rewards.features import EmbeddingCache
from ttp.rewards.remote import RemoteScorer, append_checkpoint, read_checkpoint
from ttp.rewards.zero_shot import NEEDS_MODEL, ZERO_SHOT, zero_shot_scores
from ttp.runs.config import ConfigError
from ttp.runs.results import read_table
from ttp.runs.stages import console

if TYPE_CHECKING:
    from ttp.runs.pipeline import Pipeline


def add_history(pipeline: Pipeline, items_per_user: int, pool_size: int | None = None) -> None:
    """Sample history pools from now on (``items_per_user`` per user, pools of ``pool_size``)
    and train the history family on them; the run's configuration says so."""
    c = pipeline.config
    if c.history_items and (c.history_items, c.history_pool_size) != (items_per_user, pool_size):
        raise ConfigError(f"this run's history pools are drawn with {c.history_items} items per user and "
                          f"pools of {c.history_pool_size or c.sampling.n}; copy the run folder to try others")
    families = tuple(dict.fromkeys([*c.families, *(f for f in FAMILIES if FAMILIES[f].trains_on_history)]))
    pipeline.config = c.changed(history_items=items_per_user, history_pool_size=pool_size, families=families)
    write_json_atomic(pipeline.folder.config, pipeline.config.to_json())


def add_families(pipeline: Pipeline, families=(), rm_model: str | None = None) -> None:
    """Train these reward-model families from now on too (by default every registered family
    the run does not train yet and has the pools for), the ``lm`` family on ``rm_model`` if
    given; the run's configuration says so."""
    # the families that learn from history pools come with them (``add_history``)
    wanted = families or [f for f in FAMILIES if f not in pipeline.config.families
                          and (pipeline.config.history_items or not FAMILIES[f].trains_on_history)]
    families = tuple(dict.fromkeys([*pipeline.config.families, *wanted]))
    pipeline.config = pipeline.config.changed(families=check_families(families),
                                              rm_model=rm_model or pipeline.config.rm_model)
    write_json_atomic(pipeline.folder.config, pipeline.config.to_json())


def zero_shot(pipeline: Pipeline, scorers: tuple[str, ...] = ()) -> None:
    """Score the held-out users' pools with the zero-shot scorers on the run's own model
    (``scorers``, or every one a cell does not have yet), stored as the run's outside scores."""
    c = pipeline.config
    for task, policy in pipeline.cells():
        missing = [n for n in ZERO_SHOT if not pipeline.folder.external_scores(task.name, policy, n).exists()]
        wanted = tuple(scorers or missing)
        if not wanted:
            continue
        split = pipeline.splits[task.name]
        frame = pipeline.candidates(task, policy)
        held_out = frame[split.rows(frame["user"], "validation", "test")]
        with Progress(console=console, disable=not pipeline.show_progress) as bar:
            job = bar.add_task(f"{', '.join(wanted)} on {task.name} / {policy}", total=held_out.query_id.nunique())
            backend = pipeline.backend() if set(wanted) & set(NEEDS_MODEL) else None   # mbr reads no model
            table = zero_shot_scores(held_out, task.by_id(), task.layout, backend,
                                     EmbeddingCache(pipeline.folder.embeddings(task.name)), c.shots, c.convention,
                                     wanted, progress=lambda: bar.advance(job))
        for name in wanted:
            write_parquet_atomic(pipeline.folder.external_scores(task.name, policy, name),
                                 table[["query_id", "candidate", name]].rename(columns={name: "score"}))


def import_scores(pipeline: Pipeline, file, task: str, policy: str, name: str) -> pd.DataFrame:
    """Scores from another program for the pools of ``task`` / ``policy``, checked against them
    and stored as the selector ``name``."""
    check_selector_name(name, {"random", "constant", *pipeline.config.reward_models})
    candidates = pipeline.folder.candidates(task, policy)
    if not candidates.exists():
        raise FileNotFoundError(f"{candidates} is missing: the run has no pools of {task} / {policy} yet")
    table = read_scores(file, read_table(candidates, f"ttp utilities {pipeline.folder.root}",
                                         columns=["query_id", "candidate"]))
    write_parquet_atomic(pipeline.folder.external_scores(task, policy, name), table)
    return table


def score_from_url(pipeline: Pipeline, scorer: RemoteScorer, task: str, policy: str, name: str) -> pd.DataFrame:
    """The held-out users' pools of ``task`` / ``policy`` scored by an endpoint
    (``RemoteScorer``), stored as the selector ``name``.  Each pool's scores are appended to
    a checkpoint as they come, so an interrupted call asks again only for the pools left."""
    check_selector_name(name, {"random", "constant", *pipeline.config.reward_models})
    the_task = next((t for t in pipeline.tasks if t.name == task), None)
    if the_task is None or policy not in pipeline.config.policies:
        raise KeyError(f"{task} / {policy} is not a cell of this run; cells: "
                       f"{[f'{t.name} / {p}' for t, p in pipeline.cells()]}")
    frame = pipeline.candidates(the_task, policy)
    held_out = frame[pipeline.splits[task].rows(frame["user"], "validation", "test")]
    target = pipeline.folder.external_scores(task, policy, name)
    checkpoint = target.with_suffix(".partial.jsonl")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    scored = read_checkpoint(checkpoint)
    queries = the_task.by_id()
    pools = [(q, pool) for q, pool in held_out.groupby("query_id", sort=False) if q not in scored]
    with Progress(console=console, disable=not pipeline.show_progress) as bar, open(checkpoint, "a") as out:
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
