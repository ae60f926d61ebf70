"""Untrained selectors from the utility alone, the ones a user tries before training anything:

* ``mbr`` (minimum Bayes risk): a candidate's mean ROUGE-L against the other candidates of its
  pool, the consensus pick;
* ``mbr_profile``: its mean ROUGE-L against the user's own past outputs (the query's profile).

Both use the run's ROUGE convention (``ttp.tasks.utility``) and read no model."""
from __future__ import annotations

import numpy as np

from ttp.tasks.data import Query
from ttp.tasks.utility import PRIMARY, rouge


def mbr_scores(texts: list[str], convention: str = "ttp") -> np.ndarray:
    """Each candidate's mean ROUGE-L F1 against the rest of its pool (F1 is symmetric, so each
    pair is scored once); 0 for a pool of one."""
    n = len(texts)
    agreement = np.zeros((n, n))
    for i in range(n - 1):
        agreement[i, i + 1:] = rouge(texts[i + 1:], texts[i], convention)[PRIMARY]
    agreement += agreement.T
    return agreement.sum(axis=1) / max(n - 1, 1)


def profile_agreement(texts: list[str], query: Query, convention: str = "ttp") -> np.ndarray:
    """Each candidate's mean ROUGE-L F1 against the outputs of the user's profile items."""
    outputs = [item.output for item in query.profile]
    return np.mean([rouge(texts, output, convention)[PRIMARY] for output in outputs], axis=0)
