"""Utilities: ROUGE-1 and ROUGE-L F1 of a candidate against the user's gold output.

ROUGE-L is the primary utility (it rewards the gold's word order, which titles keep);
ROUGE-1 is reported beside it.  Scored with ``rouge-score`` with Porter stemming on.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from rouge_score import rouge_scorer

METRICS = ("rougeL", "rouge1")
PRIMARY = "rougeL"


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)


def rouge(candidates: list[str], gold: str) -> dict[str, np.ndarray]:
    """F1 of each candidate against one gold output, per metric."""
    scores = [_scorer().score(gold, c) for c in candidates]
    return {m: np.array([s[m].fmeasure for s in scores]) for m in METRICS}
