"""Utilities: ROUGE-1 and ROUGE-L F1 of a candidate against the user's gold output.

ROUGE-L is the primary utility (it rewards the gold's word order, which titles keep);
ROUGE-1 is reported beside it.  Two conventions, chosen per run (``CONVENTIONS``):

* ``ttp`` (default): ``rouge-score`` with Porter stemming on, as docs/design.md asks;
* ``lamp``: LaMP's own evaluation, Hugging Face ``evaluate``'s rouge, which is ``rouge-score``
  with stemming off, so numbers compare with published LaMP results.  The convention also sets
  retrieval (``ttp.tasks.prompts.retrieve``).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Literal, get_args

import numpy as np
from rouge_score import rouge_scorer

METRICS = ("rougeL", "rouge1")
PRIMARY = "rougeL"
Convention = Literal["ttp", "lamp"]
CONVENTIONS = get_args(Convention)


@lru_cache(maxsize=2)
def _scorer(stem: bool) -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(METRICS), use_stemmer=stem)


def rouge(candidates: list[str], gold: str, convention: str = "ttp") -> dict[str, np.ndarray]:
    """F1 of each candidate against one gold output, per metric, under ``convention``."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    scorer = _scorer(convention == "ttp")
    scores = [scorer.score(gold, c) for c in candidates]
    return {m: np.array([s[m].fmeasure for s in scores]) for m in METRICS}


def candidate_table(pools: list[dict], queries: dict, convention: str = "ttp"):
    """One row per candidate: its query, user, text, log-probability, tokens and utilities."""
    import pandas as pd

    rows = []
    for pool in pools:
        query = queries[pool["query_id"]]
        utilities = rouge(pool["texts"], query.gold, convention)
        for j, text in enumerate(pool["texts"]):
            rows.append({"query_id": query.id, "user": query.user, "candidate": j, "text": text,
                         "logprob": pool["logprobs"][j], "n_tokens": pool["n_tokens"][j],
                         **{m: float(utilities[m][j]) for m in METRICS}})
    return pd.DataFrame(rows)
