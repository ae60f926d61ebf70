"""Candidate pools: sample ``M`` candidates per query, resumably, into ``pools.jsonl``.

The file gets one line per finished query, flushed and synced before the next query starts:
a rerun skips finished queries, and a kill loses at most the query in flight.  Reading checks
every line: an unreadable line is skipped with a warning naming its number (its query is
drawn again), a repeated query keeps its first pool, and a pool of the wrong size stops the
run.  Before appending, the file is rewritten without the lines it cannot use; every valid
line stays byte for byte.
"""
from __future__ import annotations

import json
import math
import os
import warnings
import zlib
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ttp.files import write_bytes_atomic
from ttp.policy import ContextOverflow, PolicyBackend, SamplingParams
from ttp.tasks.data import Query
from ttp.tasks.prompts import PromptBuilder


class PoolFileError(ValueError):
    """A pool file cannot belong to this run; the message names the file, line and field."""


def query_seed(seed: int, query_id: str) -> int:
    """A per-query seed that does not depend on order, so a resumed run draws the same pools."""
    return zlib.crc32(f"{seed}:{query_id}".encode())


def _parse(line: bytes):
    """A pool record, or the reason the line is unusable."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"not a JSON object ({err})"
    if not isinstance(record, dict):
        return "not a JSON object"
    if not isinstance(record.get("query_id"), str) or not isinstance(record.get("user"), str):
        return "field 'query_id' or 'user' is missing or not a string"
    texts = record.get("texts")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return "field 'texts' must be a list of strings"
    for field in ("logprobs", "n_tokens"):
        values = record.get(field)
        if not isinstance(values, list) or len(values) != len(texts) or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
            return f"field {field!r} must be a list of numbers, one per text"
    record["logprobs"] = [math.nan if v is None else float(v) for v in record["logprobs"]]
    return record


def _scan(path: Path, n: int | None, warn: bool = True) -> tuple[list[dict], list[bytes], bool]:
    """``(records, their raw lines, whether the file needs rewriting)``, warning (with
    ``warn``) about each line it drops."""
    records, lines, dirty, seen = [], [], False, set()
    data = path.read_bytes()
    for number, line in enumerate(data.splitlines(keepends=True), 1):
        if not line.strip():
            dirty = True
            continue
        if not line.endswith(b"\n"):
            dirty = True     # a kill mid-write: the query is drawn again
            continue
        record = _parse(line)
        if isinstance(record, str):
            if warn:
                warnings.warn(f"{path}: line {number} skipped, {record}; its query will be sampled again",
                              stacklevel=3)
            dirty = True
            continue
        if record["query_id"] in seen:
            if warn:
                warnings.warn(f"{path}: line {number} repeats query {record['query_id']!r}; the first pool is "
                              f"kept", stacklevel=3)
            dirty = True
            continue
        if n is not None and len(record["texts"]) != n:
            raise PoolFileError(f"{path}: line {number}: query {record['query_id']!r} has "
                                f"{len(record['texts'])} candidates, but this run samples n = {n}; the file "
                                f"belongs to another configuration: move it away or use a new run folder")
        seen.add(record["query_id"])
        records.append(record)
        lines.append(line)
    return records, lines, dirty


def read_pools(path: str | Path, n: int | None = None, warn: bool = True) -> list[dict]:
    """The usable pools of ``path``, in file order (none if it does not exist); ``n``, if given,
    is the pool size every record must have.  ``warn=False`` reads without warning about the
    lines it drops (for a look before ``sample_pools``, which warns about them itself)."""
    path = Path(path)
    return _scan(path, n, warn)[0] if path.exists() else []


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
    ``ttp.runs.ray_executor.RayExecutor``); this process stays the only writer of the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    if path.exists():
        records, lines, dirty = _scan(path, params.n)
        if dirty:
            write_bytes_atomic(path, b"".join(lines))
        done = {r["query_id"] for r in records}
    todo = [q for q in queries if q.id not in done]
    with path.open("a", encoding="utf-8") as fh, _progress() as bar:
        job = bar.add_task(description, total=len(queries), completed=len(queries) - len(todo), rate="",
                           visible=show_progress)
        chunks = [todo[i:i + backend.chunk_size] for i in range(0, len(todo), backend.chunk_size)] if backend else []
        results = executor(todo, prompts, params) if executor else (
            record for chunk in chunks for record in draw_pools(backend, prompts, params, chunk))
        for i, record in enumerate(results, 1):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            elapsed = bar.tasks[0].elapsed or 1e-9
            bar.update(job, advance=1, rate=f"{i / elapsed:.2f} queries/s")
    by_id = {r["query_id"]: r for r in read_pools(path, params.n)}
    return [by_id[q.id] for q in queries if q.id in by_id]


def draw_pools(backend: PolicyBackend, prompts: PromptBuilder, params: SamplingParams,
               queries: list[Query]) -> list[dict]:
    """A chunk of queries' pools as the records stored in ``pools.jsonl``, in query order: one
    ``sample_many`` call, each query seeded from the run's seed and its id, so that its pool is
    the same whether it was drawn alone or in a chunk wherever the engine's numerics allow."""
    try:
        pools = backend.sample_many([prompts(q) for q in queries],
                                    [params.with_seed(query_seed(params.seed, q.id)) for q in queries])
    except ContextOverflow as err:
        which = ", ".join(f"{q.id!r} (user {q.user!r})" for q in queries)
        raise ContextOverflow(f"query {which}: {err}" if len(queries) == 1 else f"one of queries {which}: {err}") \
            from None
    return [{"query_id": q.id, "user": q.user,
             "texts": [prompts.layout.clean(c.text) for c in completions],
             "logprobs": [None if math.isnan(c.logprob) else c.logprob for c in completions],
             "n_tokens": [c.n_tokens for c in completions]} for q, completions in zip(queries, pools)]
