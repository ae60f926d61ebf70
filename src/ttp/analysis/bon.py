"""Exact Best-of-N curves from one candidate pool per query (docs/design.md §2).

For a pool of ``M`` candidates sorted by score, the candidate of rank ``j`` is the
maximum of a uniformly random ``N``-subset with probability ``C(j-1, N-1) / C(M, N)``.
A BoN draw breaks ties uniformly at random, so utilities inside a tied block of scores
are replaced by the block mean first.  Everything is vectorized over queries.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from ttp.analysis.stats import bootstrap_draws, group_index, group_sums


def rank_weights(pool_size: int) -> np.ndarray:
    """Matrix ``W[N-1, j-1] = C(j-1, N-1) / C(M, N)`` for ``N, j = 1..M``, rows sum to one."""
    m = pool_size
    n = np.arange(1, m + 1)[:, None]
    j = np.arange(1, m + 1)[None, :]
    valid = j >= n
    jj, nn = np.broadcast_arrays(j, n)
    # log C(j-1, N-1) - log C(M, N), computed in log space so large pools stay finite
    log_w = (
        gammaln(jj) - gammaln(nn) - gammaln(np.maximum(jj - nn + 1, 1))
        - (gammaln(m + 1) - gammaln(nn + 1) - gammaln(m - nn + 1))
    )
    return np.where(valid, np.exp(np.where(valid, log_w, 0.0)), 0.0)


def _tie_averaged_sorted_utilities(scores: np.ndarray, utilities: np.ndarray) -> np.ndarray:
    """Utilities sorted by ascending score, each tied block replaced by its mean."""
    q, m = scores.shape
    order = np.argsort(scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, axis=1)
    u = np.take_along_axis(utilities, order, axis=1)
    new_block = np.ones((q, m), dtype=bool)
    new_block[:, 1:] = s[:, 1:] != s[:, :-1]
    block = np.cumsum(new_block, axis=1) - 1 + (np.arange(q) * m)[:, None]
    flat = block.ravel()
    sums = np.bincount(flat, weights=u.ravel(), minlength=q * m)
    counts = np.bincount(flat, minlength=q * m)
    return (sums[flat] / counts[flat]).reshape(q, m)


def bon_curves(scores: np.ndarray, utilities: np.ndarray) -> np.ndarray:
    """Per-query exact expected utility of Best-of-N, shape ``(Q, M)`` for ``N = 1..M``.

    ``scores`` and ``utilities`` are ``(Q, M)`` arrays: one row per query's pool.
    """
    scores = np.asarray(scores, dtype=float)
    utilities = np.asarray(utilities, dtype=float)
    if scores.ndim != 2 or scores.shape != utilities.shape:
        raise ValueError(
            f"scores and utilities must be (queries, pool size) arrays of one shape; "
            f"got {scores.shape} and {utilities.shape}"
        )
    if not (np.isfinite(scores).all() and np.isfinite(utilities).all()):
        raise ValueError("scores and utilities must be finite; drop or fix NaN/inf rows first")
    u_sorted = _tie_averaged_sorted_utilities(scores, utilities)
    return u_sorted @ rank_weights(scores.shape[1]).T


def oracle_curves(utilities: np.ndarray) -> np.ndarray:
    """Per-query oracle curves: select by the utility itself."""
    return bon_curves(utilities, utilities)


def oracle_gain(oracle_curve) -> float:
    """What perfect selection gains from N = 1 to the largest N: the scale that shares of the
    oracle gain, and laws' errors, are taken of."""
    return float(oracle_curve[-1] - oracle_curve[0])


def gain_share(curve, oracle_curve) -> np.ndarray:
    """The share of the oracle's gain a Best-of-N curve captures at every N,
    ``(curve(N) − curve(1)) / (oracle(N) − oracle(1))`` along the last axis (nan where the
    oracle gains nothing)."""
    curve, oracle = np.asarray(curve, dtype=float), np.asarray(oracle_curve, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (curve - curve[..., :1]) / (oracle - oracle[..., :1])


def random_curves(utilities: np.ndarray) -> np.ndarray:
    """Per-query random-selection curves: a constant score, the pool mean at every N."""
    utilities = np.asarray(utilities, dtype=float)
    return bon_curves(np.zeros_like(utilities), utilities)


@dataclass(frozen=True)
class Curve:
    """A dataset-level Best-of-N curve with a bootstrap band over users."""

    n: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def at(self, n: int) -> tuple[float, float, float]:
        i = int(n) - 1
        return float(self.mean[i]), float(self.low[i]), float(self.high[i])

    def to_json(self) -> dict:
        return {k: np.asarray(v).tolist() for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict) -> "Curve":
        values = []
        for key in ("n", "mean", "low", "high"):
            try:
                values.append(np.asarray(data[key], dtype=float))
            except (TypeError, ValueError):
                raise ValueError(f"field {key!r} is not a list of numbers") from None
        return cls(*values)


def user_bootstrap(
    per_query: np.ndarray,
    users: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Curve:
    """Mean over queries of per-query curves, with a percentile band from resampling users."""
    per_query = np.atleast_2d(np.asarray(per_query, dtype=float))
    user_ids, inverse = group_index(users)
    sums = group_sums(per_query, inverse, len(user_ids))
    counts = np.bincount(inverse, minlength=len(user_ids)).astype(float)
    draws = bootstrap_draws(len(user_ids), n_boot, seed)
    boot = (draws @ sums) / (draws @ counts)[:, None]
    alpha = (1 - level) / 2
    return Curve(
        n=np.arange(1, per_query.shape[1] + 1),
        mean=per_query.mean(axis=0),
        low=np.quantile(boot, alpha, axis=0),
        high=np.quantile(boot, 1 - alpha, axis=0),
    )
