"""The input of the generator-state ranker (the closest peer's method): the policy model's own
final hidden state after reading the personalized prompt and then the candidate.

Layer and pooling: llama.cpp's ``result_norm``, the last layer's output after the final norm
(the vector the language-model head reads), at the candidate's last token, its end of line,
where the model decides the text is finished.  The prompt is the personalized one for both
policies' pools, so the state has seen the user's examples.  The states of a pool come from
one teacher-forced pass of any backend that declares ``hidden_states`` (llama.cpp, sharing the
prompt's KV cache; transformers, the same state read from ``last_hidden_state``).

States are cached per run in ``hidden_states.npz`` (arrays only, loaded without pickle), saved
every few pools, so an interrupted extraction resumes where it stopped."""
from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ttp.files import write_bytes_atomic
from ttp.policy import HIDDEN_STATES, PolicyBackend
from ttp.tasks.data import ProfileLayout, Query
from ttp.tasks.prompts import PromptBuilder, as_generated

LAYER = "result_norm (last layer, after the final norm)"
POOLING = "last token of prompt + candidate + end of line"
SAVE_EVERY = 10   # pools between saves of the cache


def _load(path: Path) -> dict[tuple[str, int], np.ndarray]:
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            return {(q, int(c)): s for q, c, s in zip(data["query_id"].tolist(), data["candidate"], data["states"])}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        warnings.warn(f"{path}: unreadable hidden-state cache ({err}); extracting again")
        return {}


def _save(path: Path, states: dict[tuple[str, int], np.ndarray]) -> None:
    buffer = io.BytesIO()
    keys = list(states)
    np.savez(buffer, query_id=np.array([q for q, _ in keys]), candidate=np.array([c for _, c in keys]),
             states=np.stack([states[k] for k in keys]))
    write_bytes_atomic(path, buffer.getvalue())


def pool_states(backend: PolicyBackend, prompt: str, texts) -> np.ndarray:
    """The states of one pool's candidates after ``prompt`` (the personalized prompt)."""
    backend.require(HIDDEN_STATES, "the hidden_state reward model")
    return np.stack(backend.hidden_states(prompt, [as_generated(t) for t in texts]))


def hidden_state_matrix(candidates: pd.DataFrame, queries: dict[str, Query], layout: ProfileLayout,
                        get_backend: Callable[[], PolicyBackend], path: str | Path, shots: int = 3,
                        convention: str = "ttp", progress=None) -> np.ndarray:
    """One row of states per row of ``candidates``, from the cache at ``path`` or the backend
    that ``get_backend()`` returns (called only if a pool is missing from the cache, so a
    complete cache loads no model)."""
    path = Path(path)
    states = _load(path)
    prompt = PromptBuilder(layout, "personalized", shots, convention)
    new = 0
    for query_id, pool in candidates.groupby("query_id", sort=False):
        keys = [(query_id, int(c)) for c in pool["candidate"]]
        if all(k in states for k in keys):
            continue
        states.update(zip(keys, pool_states(get_backend(), prompt(queries[query_id]), pool["text"])))
        new += 1
        if new % SAVE_EVERY == 0:
            _save(path, states)
        if progress:
            progress()
    if new:
        _save(path, states)
    return np.stack([states[(q, int(c))] for q, c in zip(candidates["query_id"], candidates["candidate"])])
