"""Candidate pools: sample ``M`` candidates per query, resumably, and store them with utilities.

``pools.jsonl`` gets one line per finished query, flushed and synced before the next query
starts: a rerun skips finished queries, and a kill loses at most the query in flight.
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

from ttp.policy import PolicyBackend, SamplingParams
from ttp.tasks.data import Query
from ttp.tasks.prompts import PromptBuilder
from ttp.tasks.utility import METRICS, rouge


def query_seed(seed: int, query_id: str) -> int:
    """A per-query seed that does not depend on order, so a resumed run draws the same pools."""
    return zlib.crc32(f"{seed}:{query_id}".encode())


def read_pools(path: str | Path) -> list[dict]:
    """Finished pools; a torn last line (a kill mid-write) is ignored, it will be redrawn."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn())


def sample_pools(
    queries: list[Query],
    prompts: PromptBuilder,
    backend: PolicyBackend,
    params: SamplingParams,
    path: str | Path,
    description: str = "sampling",
    show_progress: bool = True,
    executor=None,
) -> list[dict]:
    """Sample a pool for every query not yet in ``path``; return all pools in query order.

    ``executor(queries, prompts, params)``, if given, yields pool records in any order (e.g.
    ``ttp.policy.ray_executor.RayExecutor``); this process stays the only writer of the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {r["query_id"] for r in read_pools(path)}
    todo = [q for q in queries if q.id not in done]
    _drop_torn_tail(path)
    with path.open("a", encoding="utf-8") as fh, _progress() as bar:
        job = bar.add_task(description, total=len(queries), completed=len(done), rate="",
                           visible=show_progress)
        results = executor(todo, prompts, params) if executor else (
            draw_pool(backend, prompts, params, query) for query in todo)
        for i, record in enumerate(results, 1):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            elapsed = bar.tasks[0].elapsed or 1e-9
            bar.update(job, advance=1, rate=f"{i / elapsed:.2f} queries/s")
    by_id = {r["query_id"]: r for r in read_pools(path)}
    return [by_id[q.id] for q in queries if q.id in by_id]


def draw_pool(backend: PolicyBackend, prompts: PromptBuilder, params: SamplingParams, query: Query) -> dict:
    """One query's pool as the record stored in ``pools.jsonl``."""
    completions = backend.sample(prompts(query), params.with_seed(query_seed(params.seed, query.id)))
    return {
        "query_id": query.id, "user": query.user,
        "texts": [c.text for c in completions],
        "logprobs": [c.logprob for c in completions],
        "n_tokens": [c.n_tokens for c in completions],
    }


def _drop_torn_tail(path: Path) -> None:
    """Cut a half-written last line so appended records start on a line of their own."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def score_utilities(pools: list[dict], queries: dict[str, Query]) -> pd.DataFrame:
    """One row per candidate: its text, log-probability and ROUGE utilities against the gold."""
    rows = []
    for pool in pools:
        query = queries[pool["query_id"]]
        utilities = rouge(pool["texts"], query.gold)
        for j, text in enumerate(pool["texts"]):
            rows.append({"query_id": query.id, "user": query.user, "candidate": j, "text": text,
                         "logprob": pool["logprobs"][j], "n_tokens": pool["n_tokens"][j],
                         **{m: float(utilities[m][j]) for m in METRICS}})
    return pd.DataFrame(rows)


def pool_matrix(candidates: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(query_ids, users, values)``: ``values`` is ``(Q, M)``, one row per query's pool."""
    if column not in candidates:
        raise KeyError(f"the candidate table has no column {column!r}; columns: {list(candidates.columns)}")
    frame = candidates.sort_values(["query_id", "candidate"])
    sizes = frame.groupby("query_id", sort=True).size()
    if sizes.nunique() != 1:
        raise ValueError(f"pools differ in size ({sorted(sizes.unique())}); every query needs M candidates")
    m = int(sizes.iloc[0])
    values = frame[column].to_numpy(dtype=float).reshape(-1, m)
    firsts = frame.iloc[::m]
    return firsts["query_id"].to_numpy(), firsts["user"].to_numpy(), values
