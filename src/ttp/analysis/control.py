"""The scaling law as a controller of test-time compute (docs/design.md §6).

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
from scipy import stats

from ttp.analysis.bon import bon_curves
from ttp.analysis.scaling import expected_max_normal
from ttp.analysis.stats import collapsed, group_index, within_pool_correlation

ALLOCATION_POLICIES = ("uniform", "skip_collapsed", "greedy", "early_stop", "expected_improvement")
# not policies, references that know each query's full pool:
KNOWN_CALIBRATION = "known_calibration"   # expected improvement told each query's true κ_q and spread
ORACLE_BOUND = "oracle_bound"             # the best allocation given every query's true curve
REFERENCES = (KNOWN_CALIBRATION, ORACLE_BOUND)


@dataclass(frozen=True)
class ControllerConfig:
    pilot: int = 4               # draws before the collapse check looks (law rules: one query per user)
    chunk: int = 1               # expected improvement draws this many at a time (one batch), then may stop
    prior_strength: float = 8.0  # pseudo-degrees of freedom behind the user's and dataset's spread
    collapse_tau: float = 0.1    # a user whose spread is <= tau x the median user's is collapsed


def _gain_and_spread(scores: np.ndarray, utilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pool: the utility gain slope ``ρ_q σ_q`` and the score spread ``sd_q(score)``."""
    return within_pool_correlation(scores, utilities) * utilities.std(axis=1), scores.std(axis=1)


def calibration(scores: np.ndarray, utilities: np.ndarray) -> float:
    """κ: utility gain per unit of score spread, fitted on validation pools."""
    rho_sigma, spread = _gain_and_spread(scores, utilities)
    return float(rho_sigma.mean() / spread.mean()) if spread.mean() > 0 else 0.0


def validation_calibration(scores: np.ndarray, utilities: np.ndarray) -> tuple[float, float]:
    """What the online rules take from validation pools: ``κ`` (``calibration``) and the typical
    within-query score spread that a query's drawn spread is shrunk toward."""
    return calibration(scores, utilities), float(scores.std(axis=1).mean())


def sample_variance(values: np.ndarray) -> float:
    return float(np.var(values, ddof=1)) if len(values) > 1 else 0.0


def shrunk_variance(variance, dof, prior_variance, prior_strength: float):
    """Empirical-Bayes shrinkage: an estimate with ``dof`` degrees of freedom, pulled toward the
    level above with ``prior_strength`` pseudo-degrees."""
    return (dof * variance + prior_strength * prior_variance) / (dof + prior_strength)


def expected_improvement(best, mean, sd):
    """``E[(X − best)+]`` for ``X ~ N(mean, sd²)``: how far the next candidate's score is
    expected to rise above the best so far."""
    sd = np.maximum(np.asarray(sd, dtype=float), 1e-12)
    delta = (np.asarray(mean, dtype=float) - best) / sd
    return sd * (delta * stats.norm.cdf(delta) + stats.norm.pdf(delta))


def pilot_looks_collapsed(n, sd, typical_spread: float, config: ControllerConfig):
    """After ``n`` draws with score spread ``sd``: at least the pilot drawn, and a spread of at
    most ``collapse_tau`` times the typical one (the reward model cannot tell this query's
    candidates apart)."""
    return (np.asarray(n) >= config.pilot) & (np.asarray(sd) <= config.collapse_tau * typical_spread)


def improvement_gains(scores: np.ndarray, kappa, spread_prior: float, config: ControllerConfig = ControllerConfig(),
                      known_spread: np.ndarray | None = None) -> np.ndarray:
    """``(Q, M)``: the expected utility gain of drawing sample ``n + 1`` after the first ``n``
    of each row (column ``n − 1``; the last column is −inf).  The next score is taken as normal
    with the drawn scores' mean and their spread shrunk toward ``spread_prior`` (the typical
    within-query spread on validation pools); the gain is ``κ`` times its expected rise above
    the best so far (shrunk with ``config.prior_strength`` pseudo-degrees).  Selection is by
    score, so the expected utility of the pick moves only through that rise.  A query whose
    pilot looks collapsed (``pilot_looks_collapsed``) gains nothing.
    ``kappa`` is one calibration or one per row; ``known_spread`` (one per row) replaces the
    estimated spread (the known-calibration reference)."""
    scores = np.asarray(scores, dtype=float)
    q, m = scores.shape
    n = np.arange(1, m + 1, dtype=float)
    mean = np.cumsum(scores, axis=1) / n
    variance = np.maximum(np.cumsum(scores**2, axis=1) / n - mean**2, 0) * n / np.maximum(n - 1, 1)
    if known_spread is None:
        spread = np.sqrt(shrunk_variance(variance, n - 1, spread_prior**2, config.prior_strength))
    else:
        spread = np.asarray(known_spread, dtype=float)[:, None]
    kappa = np.maximum(np.broadcast_to(np.asarray(kappa, dtype=float), (q,)), 0.0)[:, None]
    gains = kappa * expected_improvement(np.maximum.accumulate(scores, axis=1), mean, spread)
    if known_spread is None:
        gains[pilot_looks_collapsed(n, np.sqrt(variance), spread_prior, config)] = 0.0
    gains[:, -1] = -np.inf
    return gains


def stopping_points(m: int, chunk: int) -> np.ndarray:
    """``(M,)``: after which numbers of draws (column ``n − 1``) the expected-improvement rule
    may stop: after each chunk, and at the whole pool."""
    n = np.arange(1, m + 1)
    return (n % max(chunk, 1) == 0) | (n == m)


def query_calibration(scores: np.ndarray, utilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's own ``(κ_q, score spread)`` from its full pool: utility gain per unit of
    score spread, ``ρ_q σ_q / sd_q(score)``, as ``calibration`` computes for a whole set."""
    rho_sigma, spread = _gain_and_spread(scores, utilities)
    return np.where(spread > 0, rho_sigma / np.maximum(spread, 1e-12), 0.0), spread


def best_allocation(curves: np.ndarray, budget: int) -> np.ndarray:
    """Samples per query maximizing ``Σ curves[q, n_q − 1]`` with ``Σ n_q <= budget`` and
    ``1 <= n_q <= M`` (exact, by dynamic programming over the budget)."""
    q, m = curves.shape
    value = np.full(budget + 1, -np.inf)
    value[0] = 0.0
    choice = np.zeros((q, budget + 1), dtype=np.int16)
    for i in range(q):
        best = np.full(budget + 1, -np.inf)
        for n in range(1, m + 1):
            candidate = np.full(budget + 1, -np.inf)
            candidate[n:] = value[:-n] + curves[i, n - 1]
            better = candidate > best
            best[better], choice[i, better] = candidate[better], n
        value = best
    spent = int(np.argmax(value))
    allocation = np.zeros(q, dtype=int)
    for i in range(q - 1, -1, -1):
        allocation[i] = choice[i, spent]
        spent -= allocation[i]
    return allocation


def law_gains(kappa: float, spread, e_n: np.ndarray) -> np.ndarray:
    """The law's gain of sample ``n + 1`` after ``n`` draws, ``κ · ŝ · (e_{n+1} − e_n)``, in
    column ``n − 1`` for each spread ``ŝ`` (shape ``spread.shape + (len(e_n),)``); −inf in the
    last column, past the table's end.  A negative κ (selection hurt on validation) predicts no
    gain, not a negative one."""
    spread = np.asarray(spread, dtype=float)[..., None]
    gains = np.full(spread.shape[:-1] + (len(e_n),), -np.inf)
    gains[..., :-1] = max(kappa, 0.0) * spread * np.diff(e_n)
    return gains


class GainPredictor:
    """Per-query score spreads after the pilot: a collapsed user's are zero; the others are
    shrunk toward the user's and then the dataset's, weighting each estimate by its degrees of
    freedom against ``prior_strength`` pseudo-degrees of the level above."""

    def __init__(self, users: np.ndarray, config: ControllerConfig, kappa: float):
        self.users, self.config, self.kappa = users, config, kappa

    def spreads(self, drawn_scores: list[np.ndarray]) -> np.ndarray:
        k = self.config.prior_strength
        df = np.array([len(s) - 1 for s in drawn_scores], dtype=float)
        var = np.array([sample_variance(s) for s in drawn_scores])
        _, inverse = group_index(self.users)
        user_df = np.bincount(inverse, weights=df)
        user_var = np.bincount(inverse, weights=df * var) / np.maximum(user_df, 1e-12)
        dataset_var = float((df * var).sum() / max(df.sum(), 1e-12))
        observed = user_df > 0
        is_collapsed = np.zeros(len(user_df), dtype=bool)
        is_collapsed[observed] = collapsed(np.sqrt(user_var[observed]), self.config.collapse_tau)[0]
        user_var = np.where(observed, shrunk_variance(user_var, user_df, dataset_var, k), dataset_var)
        query_var = shrunk_variance(var, df, user_var[inverse], k)
        return np.where(is_collapsed[inverse], 0.0, np.sqrt(query_var))


THRESHOLD_POLICIES = ("early_stop", "expected_improvement", KNOWN_CALIBRATION)   # stop below a gain threshold


def _allocate(policy: str, scores: np.ndarray, users: np.ndarray, orders: np.ndarray, budget: int,
              config: ControllerConfig, kappa) -> np.ndarray:
    """Samples per query under a policy that shares out ``budget`` samples in total (the
    threshold policies stop by ``_stopping_gains`` instead)."""
    q, m = scores.shape
    if policy == "uniform":
        per = np.full(q, budget // q)
        per[: budget % q] += 1
        return np.clip(per, 1, m)
    n, spread = _law_pilot(scores, users, orders, budget, config, kappa)
    e_n = expected_max_normal(m)
    if policy == "skip_collapsed":
        # collapsed users keep what the pilot spent; the rest share the budget evenly
        return _fill(n, lambda i: 0.0 if spread[i] > 0 else -np.inf, budget, m)
    if policy == "greedy":
        gains = law_gains(kappa, spread, e_n)
        return _fill(n, lambda i: gains[i, n[i] - 1], budget, m)
    raise ValueError(f"policy must be one of {ALLOCATION_POLICIES + REFERENCES}, got {policy!r}")


def _law_pilot(scores, users, orders, budget: int, config: ControllerConfig, kappa) -> tuple[np.ndarray, np.ndarray]:
    """``(samples, spreads)`` after the law rules' pilot: one query per user gets ``pilot``
    samples and reveals the user's score spread (a collapsed user shows it there); every other
    query starts from one sample (never more than the average budget, so small budgets are not
    spent on the pilot)."""
    q, m = scores.shape
    n = np.ones(q, dtype=int)
    _, first_of_user = np.unique(users, return_index=True)
    n[first_of_user] = min(max(2, min(config.pilot, budget // q)), m)
    # spreads are frozen after the pilot: re-estimating them from the samples the controller
    # chose to draw would chase lucky draws (measured: worse than uniform on simulated pools)
    spread = GainPredictor(users, config, kappa).spreads([scores[i, orders[i, :n[i]]] for i in range(q)])
    return n, spread


def _stopping_gains(policy: str, scores, users, orders, budget: int, config: ControllerConfig, kappa,
                    spread_prior: float, known_spread) -> np.ndarray:
    """``(Q, M)``: the gain a threshold policy weighs against its threshold after ``n`` draws
    (column ``n − 1``), ``+inf`` where it may not stop; it stops at the first gain below the
    threshold.  It does not depend on the threshold, so the bisection computes it once."""
    m = scores.shape[1]
    if policy == "early_stop":
        n0, spread = _law_pilot(scores, users, orders, budget, config, kappa)
        gains = law_gains(kappa, spread, expected_max_normal(m))
        return np.where(np.arange(1, m + 1) >= n0[:, None], gains, np.inf)
    # each query on its own: sample while the next sample's expected gain exceeds the threshold,
    # looking only where the online rule looks (after each chunk)
    gains = improvement_gains(np.take_along_axis(scores, orders, axis=1), kappa, spread_prior, config, known_spread)
    return np.where(stopping_points(m, config.chunk), gains, np.inf)


def stop_below(gains: np.ndarray, threshold: float) -> np.ndarray:
    """Samples per query: the first ``n`` whose gain is below ``threshold`` (the last column's
    gain is ``−inf``, so every query stops by the pool's end)."""
    return (gains < threshold).argmax(axis=1) + 1


def budget_threshold(gains: np.ndarray, budget: int) -> float:
    """The smallest threshold (bisection on log scale) at which ``stop_below`` spends at most
    ``budget`` samples in total: how a threshold rule is held to an average budget offline."""
    lo, hi = 1e-12, 1.0
    for _ in range(50):
        mid = np.sqrt(lo * hi)
        lo, hi = (lo, mid) if stop_below(gains, mid).sum() <= budget else (mid, hi)
    return hi


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
                    repeats: int = 20, seed: int = 0, spread_prior: float = 0.0) -> dict:
    """Mean realized utility and samples spent under ``policy`` at an average budget of
    ``samples_per_query``, averaged over ``repeats`` seeded draw orders of every pool, overall
    and per query (``per_query``, ``spent_per_query``).
    ``ORACLE_BOUND`` gives the best allocation knowing every query's true Best-of-N curve
    (selection still by score): the most any allocation could reach at this budget.
    ``KNOWN_CALIBRATION`` is the expected-improvement rule told each query's own κ_q and score
    spread (``query_calibration`` on its full pool): what that rule could reach if the draws
    revealed how this query's scores translate into utility."""
    scores, utilities, users = np.asarray(scores, float), np.asarray(utilities, float), np.asarray(users)
    q, m = scores.shape
    budget = int(round(samples_per_query * q))
    if not q <= budget <= q * m:
        raise ValueError(f"a budget of {samples_per_query} samples per query must lie in [1, {m}]")
    if policy == ORACLE_BOUND:
        curves = bon_curves(scores, utilities)
        n = best_allocation(curves, budget)
        per_query = curves[np.arange(q), n - 1]
        return {"policy": policy, "per_query": per_query, "mean": float(per_query.mean()),
                "spent_per_query": n.astype(float), "samples_per_query": float(n.sum() / q)}
    known_spread = None
    if policy == KNOWN_CALIBRATION:
        kappa, known_spread = query_calibration(scores, utilities)

    def allocate(orders):
        if policy in THRESHOLD_POLICIES:
            gains = _stopping_gains(policy, scores, users, orders, budget, config, kappa, spread_prior, known_spread)
            return stop_below(gains, budget_threshold(gains, budget))
        return _allocate(policy, scores, users, orders, budget, config, kappa)

    return {"policy": policy, **evaluate_allocation(allocate, scores, utilities, repeats, seed)}


def evaluate_allocation(allocate, scores: np.ndarray, utilities: np.ndarray, repeats: int = 20,
                        seed: int = 0) -> dict:
    """Mean realized utility and samples spent, overall and per query, when ``allocate(orders)``
    gives each query's samples for ``repeats`` seeded random draw orders of every pool (``orders``
    ``(Q, M)``: row i is the order query i's candidates are drawn in).  What ``evaluate_policy``
    runs for each policy; open to any other rule."""
    q, m = scores.shape
    rng = np.random.default_rng(seed)
    per_query = np.zeros((repeats, q))
    spent = np.zeros((repeats, q))
    for r in range(repeats):
        orders = np.argsort(rng.random((q, m)), axis=1)
        n = allocate(orders)
        per_query[r] = _realized(scores, utilities, orders, n)
        spent[r] = n
    return {"per_query": per_query.mean(axis=0), "mean": float(per_query.mean()),
            "spent_per_query": spent.mean(axis=0), "samples_per_query": float(spent.mean())}
