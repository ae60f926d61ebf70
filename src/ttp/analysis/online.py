"""The online stopping rule for one query: draw, score, and stop when the chosen rule says one
more sample is not worth it (``choose_online``); what ``ttp generate`` and ``ttp serve`` run."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttp.analysis.control import (
    ControllerConfig,
    expected_improvement,
    law_gains,
    pilot_looks_collapsed,
    sample_variance,
    shrunk_variance,
)
from ttp.analysis.scaling import expected_max_normal

ONLINE_RULES = ("uniform", "law", "expected_improvement")


@dataclass(frozen=True)
class Decision:
    """What the online controller returns for one (user, query)."""

    text: str
    score: float
    mean: float
    sd: float
    samples: int
    stopped_because: str
    candidates: list[str]
    scores: list[float]


def choose_online(draw, score, budget: int, kappa: float, dataset_spread: float,
                  config: ControllerConfig = ControllerConfig(), min_gain: float = 1e-3,
                  at_least: int = 1, rule: str = "law") -> Decision:
    """Spend at most ``budget`` samples on one query and pick the best-scored candidate.

    ``rule``: ``uniform`` draws the whole budget; ``law`` stops when the law's predicted gain of
    the next sample, ``κ·ŝ·(e_{n+1} − e_n)``, falls below ``min_gain`` (in utility);
    ``expected_improvement`` stops when ``κ`` times the next score's expected rise above the best
    so far falls below ``min_gain``.  Both stop when the pilot's scores look collapsed (their
    spread at most ``collapse_tau`` times the typical one).  ``draw(k)`` returns ``k`` new candidate
    texts; ``score(texts)`` returns arrays ``(selection_score, mean, sd)`` for them.
    ``dataset_spread`` (the typical within-query score spread on validation pools) is the prior
    the drawn scores' spread is shrunk toward.  The law rule first looks after ``config.pilot``
    draws, expected improvement after ``config.chunk``; both then after each ``config.chunk``
    more, as the allocation study does (``control.stopping_points``).  ``at_least`` samples are
    drawn whatever the rule says (a caller returning several picks).
    """
    if rule not in ONLINE_RULES:
        raise ValueError(f"rule must be one of {ONLINE_RULES}, got {rule!r}")
    if not 1 <= at_least <= budget:
        raise ValueError(f"need 1 <= at_least <= budget, got at_least = {at_least}, budget = {budget}")
    e_n = expected_max_normal(max(budget, 2))
    # the law needs the pilot's spread; expected improvement may stop after any chunk
    first = {"uniform": budget, "law": config.pilot}.get(rule, config.chunk)
    first = min(max(first, at_least, 1), budget)
    texts = list(draw(first))
    reason = "budget spent"
    while True:
        sel, mean, sd = (np.asarray(a, float) for a in score(texts))
        n = len(texts)
        if n >= budget:
            break
        variance = sample_variance(sel)
        spread = np.sqrt(shrunk_variance(variance, n - 1, dataset_spread ** 2, config.prior_strength))
        if pilot_looks_collapsed(n, np.sqrt(variance), dataset_spread, config):
            reason = "collapsed: scores do not vary"
            break
        if rule == "law":
            gain = law_gains(kappa, spread, e_n)[n - 1]
        else:
            gain = max(kappa, 0.0) * float(expected_improvement(sel.max(), sel.mean(), spread))
        if gain < min_gain:
            reason = f"predicted gain of one more sample below {min_gain} ({rule})"
            break
        texts += draw(min(config.chunk, budget - n))
    best = int(np.argmax(sel))
    return Decision(texts[best], float(sel[best]), float(mean[best]), float(sd[best]), len(texts), reason, texts,
                    sel.tolist())
