"""The scaling law as a controller of test-time compute (DESIGN.md section 6).

For a reward model whose predicted means are calibrated, selecting the best of ``N`` by the
predicted mean gains about ``sd_q(μ̂)·e_N`` over a random pick (for the best linear
predictor ``μ̂ = ρ σ z``, the spread of the predictions *is* ``ρ_q σ_q``).  So the expected
gain of one more sample for query ``q`` after ``n`` is

    g_q(n) = κ · ŝ_q · (e_{n+1} − e_n)

where ``ŝ_q`` is the spread of the reward model's scores in a pilot (one query per user gets
``pilot`` samples), shrunk toward the user's and the dataset's spread (empirical Bayes), zero
for users whose spread shows collapse, and ``κ`` calibrates score spread to utility gain on
validation pools (``κ = mean(ρ_q σ_q) / mean(sd_q(score))``).  A collapsed user has
``ŝ ≈ 0`` and gets no extra samples; the budget goes where it buys the most.

All policies run against stored pools: a query's samples are drawn without replacement in a
seeded random order, so they are cheap to evaluate and comparable at equal budget.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from ttp.analysis.scaling import expected_max_normal, within_pool_correlation

POLICIES = ("uniform", "skip_collapsed", "greedy", "early_stop")


@dataclass(frozen=True)
class ControllerConfig:
    pilot: int = 4               # samples of each user's pilot query (the others start from 1)
    prior_strength: float = 8.0  # pseudo-degrees of freedom behind the user's and dataset's spread
    collapse_tau: float = 0.1    # a user whose spread is <= tau x the median user's is collapsed


def calibration(scores: np.ndarray, utilities: np.ndarray) -> float:
    """κ: utility gain per unit of score spread, fitted on validation pools."""
    rho_sigma = within_pool_correlation(scores, utilities) * utilities.std(axis=1)
    spread = scores.std(axis=1).mean()
    return float(rho_sigma.mean() / spread) if spread > 0 else 0.0


def _spread(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


class GainPredictor:
    """Per-query score spreads after the pilot: a collapsed user's are zero; the others are
    shrunk toward the user's and then the dataset's, weighting each estimate by its degrees of
    freedom against ``prior_strength`` pseudo-degrees of the level above."""

    def __init__(self, users: np.ndarray, config: ControllerConfig, kappa: float):
        self.users, self.config, self.kappa = users, config, kappa

    def spreads(self, drawn_scores: list[np.ndarray]) -> np.ndarray:
        k = self.config.prior_strength
        df = np.array([len(s) - 1 for s in drawn_scores], dtype=float)
        var = np.array([_spread(s) ** 2 for s in drawn_scores])
        _, inverse = np.unique(self.users, return_inverse=True)
        user_df = np.bincount(inverse, weights=df)
        user_var = np.bincount(inverse, weights=df * var) / np.maximum(user_df, 1e-12)
        dataset_var = float((df * var).sum() / max(df.sum(), 1e-12))
        observed = user_df > 0
        collapsed = observed & (np.sqrt(user_var) <= self.config.collapse_tau *
                                np.sqrt(np.median(user_var[observed])))
        user_var = np.where(observed, (user_df * user_var + k * dataset_var) / (user_df + k), dataset_var)
        query_var = (df * var + k * user_var[inverse]) / (df + k)
        return np.where(collapsed[inverse], 0.0, np.sqrt(query_var))

    def marginal_gain(self, spread: float, n: int, e_n: np.ndarray) -> float:
        """The law's gain of sample ``n + 1``: ``κ · ŝ · (e_{n+1} − e_n)``."""
        # a negative κ (selection hurt on validation) predicts no gain, not a negative one
        return max(self.kappa, 0.0) * spread * (e_n[n] - e_n[n - 1]) if n < len(e_n) else -np.inf


def _allocate(policy: str, scores: np.ndarray, users: np.ndarray, orders: np.ndarray, budget: int,
              config: ControllerConfig, kappa: float, threshold: float | None = None) -> np.ndarray:
    """Samples per query under ``policy`` with ``budget`` samples in total."""
    q, m = scores.shape
    if policy == "uniform":
        per = np.full(q, budget // q)
        per[: budget % q] += 1
        return np.clip(per, 1, m)
    # the pilot: one query per user gets `pilot` samples and reveals the user's score spread
    # (a collapsed user shows it there); every other query starts from one sample
    # (never more than the average budget, so small budgets are not spent on the pilot)
    n = np.ones(q, dtype=int)
    _, first_of_user = np.unique(users, return_index=True)
    n[first_of_user] = min(max(2, min(config.pilot, budget // q)), m)
    predictor = GainPredictor(users, config, kappa)
    # spreads are frozen after the pilot: re-estimating them from the samples the controller
    # chose to draw would chase lucky draws (measured: worse than uniform on simulated pools)
    spread = predictor.spreads([scores[i, orders[i, :n[i]]] for i in range(q)])
    e_n = expected_max_normal(m)

    def gain(i):
        return predictor.marginal_gain(spread[i], n[i], e_n)

    if policy == "skip_collapsed":
        # collapsed users keep what the pilot spent; the rest share the budget evenly
        return _fill(n, lambda i: 0.0 if spread[i] > 0 else -np.inf, budget, m)
    if policy == "greedy":
        return _fill(n, gain, budget, m)
    if policy == "early_stop":
        for i in range(q):
            while n[i] < m and gain(i) > threshold:
                n[i] += 1
        return n
    raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")


def _fill(n: np.ndarray, value, budget: int, m: int) -> np.ndarray:
    """Give the samples left, one at a time, to the query of highest ``value(i)``; ties go to
    the query with fewer samples (so equal values mean uniform N); ``-inf`` gets none."""
    heap = [(-value(i), n[i], i) for i in range(len(n))]
    heapq.heapify(heap)
    left = budget - int(n.sum())
    while left > 0 and heap:
        key, _, i = heapq.heappop(heap)
        if key == np.inf:
            break
        n[i] += 1
        left -= 1
        if n[i] < m:
            heapq.heappush(heap, (-value(i), n[i], i))
    return n


def _realized(scores, utilities, orders, n) -> np.ndarray:
    """Utility of the best-scored candidate among each query's first ``n`` drawn samples."""
    out = np.empty(len(n))
    for i, k in enumerate(n):
        drawn = orders[i, :k]
        out[i] = utilities[i, drawn[np.argmax(scores[i, drawn])]]
    return out


def evaluate_policy(policy: str, scores: np.ndarray, utilities: np.ndarray, users: np.ndarray,
                    samples_per_query: float, kappa: float, config: ControllerConfig = ControllerConfig(),
                    repeats: int = 20, seed: int = 0) -> dict:
    """Mean realized utility and samples spent under ``policy`` at an average budget of
    ``samples_per_query``, averaged over ``repeats`` seeded draw orders of every pool."""
    scores, utilities, users = np.asarray(scores, float), np.asarray(utilities, float), np.asarray(users)
    q, m = scores.shape
    budget = int(round(samples_per_query * q))
    if not q <= budget <= q * m:
        raise ValueError(f"a budget of {samples_per_query} samples per query must lie in [1, {m}]")
    rng = np.random.default_rng(seed)
    per_query = np.zeros((repeats, q))
    spent = np.zeros(repeats)
    for r in range(repeats):
        orders = np.argsort(rng.random((q, m)), axis=1)
        threshold = None
        if policy == "early_stop":
            threshold = _budget_threshold(scores, users, orders, budget, config, kappa)
        n = _allocate(policy, scores, users, orders, budget, config, kappa, threshold)
        per_query[r] = _realized(scores, utilities, orders, n)
        spent[r] = n.sum() / q
    return {"policy": policy, "per_query": per_query.mean(axis=0), "mean": float(per_query.mean()),
            "samples_per_query": float(spent.mean())}


def _budget_threshold(scores, users, orders, budget, config, kappa) -> float:
    """The stopping threshold whose total spend matches the budget (bisection on log scale)."""
    lo, hi = 1e-9, 1.0
    for _ in range(40):
        mid = np.sqrt(lo * hi)
        spent = _allocate("early_stop", scores, users, orders, budget, config, kappa, mid).sum()
        lo, hi = (lo, mid) if spent <= budget else (mid, hi)
    return hi


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


def choose_online(draw, score, budget: int, kappa: float, dataset_spread: float,
                  config: ControllerConfig = ControllerConfig(), min_gain: float = 1e-3,
                  chunk: int = 2) -> Decision:
    """Spend at most ``budget`` samples on one query, stopping when the law's predicted gain of
    the next sample falls below ``min_gain`` (in utility) or the scores look collapsed.

    ``draw(k)`` returns ``k`` new candidate texts; ``score(texts)`` returns arrays
    ``(selection_score, mean, sd)`` for them.  ``dataset_spread`` (the typical within-query
    score spread on validation pools) is the prior the pilot's spread is shrunk toward.
    """
    if budget < 1:
        raise ValueError(f"budget must be at least 1 sample, got {budget}")
    e_n = expected_max_normal(max(budget, 2))
    texts = list(draw(min(max(config.pilot, 1), budget)))
    reason = "budget spent"
    while True:
        sel, mean, sd = (np.asarray(a, float) for a in score(texts))
        n = len(texts)
        k = config.prior_strength
        spread = np.sqrt(((n - 1) * _spread(sel) ** 2 + k * dataset_spread ** 2) / (n - 1 + k))
        if _spread(sel) <= config.collapse_tau * dataset_spread:
            reason = "collapsed: scores do not vary"
            break
        if n >= budget:
            break
        if kappa * spread * (e_n[n] - e_n[n - 1]) < min_gain:
            reason = f"predicted gain of one more sample below {min_gain}"
            break
        texts += draw(min(chunk, budget - n))
    best = int(np.argmax(sel))
    return Decision(texts[best], float(sel[best]), float(mean[best]), float(sd[best]), len(texts), reason, texts)
