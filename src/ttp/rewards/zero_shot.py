"""Zero-shot scorers: selectors built on the policy model itself, with no training.

* ``likelihood``: the mean token log-probability of the candidate under the personalized prompt;
* ``pmi``: log p(candidate | personalized prompt) − log p(candidate | plain prompt), how much the
  user's examples raise the candidate;
* ``profile_similarity``: the candidate's mean sentence-embedding similarity to the user's past
  outputs.

A candidate is scored as the model would have produced it: a space, its text, and the newline
that ends it.  Teacher forcing shares each prompt's KV cache across the pool
(``LlamaCppBackend.score``).  The scores are stored beside imported ones
(``RunFolder.external_scores``), so every later stage judges them like the trained RMs."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ttp.rewards.features import EmbeddingCache, candidate_features
from ttp.tasks.data import ProfileLayout, Query
from ttp.tasks.prompts import PromptBuilder

ZERO_SHOT = ("likelihood", "pmi", "profile_similarity")


def zero_shot_scores(candidates: pd.DataFrame, queries: dict[str, Query], layout: ProfileLayout, backend,
                     cache: EmbeddingCache, shots: int = 3, convention: str = "ttp",
                     progress=None) -> pd.DataFrame:
    """``query_id, candidate`` and one column per scorer of ``ZERO_SHOT`` for every candidate."""
    if not hasattr(backend, "score"):
        raise TypeError(f"the {backend.name} backend cannot score a given text; zero-shot scorers need one "
                        f"that can (the embedded llama-cpp backend)")
    personalized = PromptBuilder(layout, "personalized", shots, convention)
    plain = PromptBuilder(layout, "plain", shots, convention)
    similarity = candidate_features(candidates, queries, cache, k=shots, convention=convention)["sim_profile_mean"]
    blocks = []
    for query_id, pool in candidates.groupby("query_id", sort=False):
        query = queries[query_id]
        texts = [f" {t}\n" for t in pool["text"]]
        with_profile = backend.score(personalized(query), texts)
        without = backend.score(plain(query), texts)
        blocks.append(pd.DataFrame({
            "query_id": query_id, "candidate": pool["candidate"].to_numpy(),
            "likelihood": [lp / max(n, 1) for lp, n in with_profile],
            "pmi": [a[0] - b[0] for a, b in zip(with_profile, without)],
            "profile_similarity": similarity.loc[pool.index].to_numpy(),
        }))
        if progress:
            progress()
    table = pd.concat(blocks, ignore_index=True)
    if not np.isfinite(table[list(ZERO_SHOT)].to_numpy()).all():
        raise ValueError("a zero-shot score came out non-finite; check the pools' texts")
    return table
