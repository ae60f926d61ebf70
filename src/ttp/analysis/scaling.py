"""The oracle ceiling, the four-quantity scaling law and its failure modes (docs/design.md §3-4).

Everything here takes plain arrays of (query, user, score, utility), so it explains any
reward model's Best-of-N curve, simulated or real.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache

import numpy as np
from scipy import integrate, special, stats

from ttp.analysis.bon import bon_curves, oracle_curves, oracle_gain
from ttp.analysis.copula import copula_correlation, copula_curves
from ttp.analysis.copula_fit import TopCompression, posterior_copula_curves, top_compression
from ttp.analysis.stats import SPREAD_EPS, collapsed, group_index, group_means, within_pool_correlation
from ttp.files import number

_SQRT_2PI = np.sqrt(2 * np.pi)


@lru_cache(maxsize=None)
def _expected_max_normal(n: int) -> float:
    if n == 1:
        return 0.0
    # scipy.stats.norm's pdf and cdf, without its per-call overhead (quad calls this thousands of times)
    integrand = lambda x: x * n * np.exp(-x**2 / 2.0) / _SQRT_2PI * special.ndtr(x) ** (n - 1)  # noqa: E731
    value, _ = integrate.quad(integrand, -12.0, 12.0, limit=200, epsabs=1e-12)
    return value


def expected_max_normal(n_max: int) -> np.ndarray:
    """``e_N`` for ``N = 1..n_max``: the expected maximum of N standard normals (exact quadrature)."""
    return np.array([_expected_max_normal(n) for n in range(1, n_max + 1)])


CEILING_FORMS = {
    "a + b ln N": lambda n: np.log(n),
    "a + b sqrt(ln N)": lambda n: np.sqrt(np.log(n)),
    "a + b e_N": lambda n: expected_max_normal(int(n.max()))[n - 1],
}


@dataclass(frozen=True)
class CeilingFit:
    form: str
    a: float
    b: float
    rmse: float
    max_abs_error: float


def fit_ceiling(oracle_curve: np.ndarray) -> list[CeilingFit]:
    """Least-squares fits of the oracle curve by each form in ``CEILING_FORMS``, best first."""
    y = np.asarray(oracle_curve, dtype=float)
    n = np.arange(1, len(y) + 1)
    fits = []
    for name, basis in CEILING_FORMS.items():
        x = np.column_stack([np.ones_like(y), basis(n)])
        (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
        residual = y - x @ np.array([a, b])
        fits.append(CeilingFit(name, float(a), float(b),
                               float(np.sqrt(np.mean(residual**2))), float(np.abs(residual).max())))
    return sorted(fits, key=lambda f: f.rmse)


LAW_TOLERANCE = 0.05   # issue 14's target: the copula per-query law within 5% of the oracle gain


def chance_misses(residuals: list[np.ndarray], tolerance: float, draws: int = 4000, seed: int = 0) -> np.ndarray:
    """How many of several laws, each exact for every query, would still show a mean error above
    ``tolerance`` at one point at least, in each of ``draws`` seeded draws.  ``residuals`` holds
    one ``(Q, K)`` block of ``BoN_q(N) − law_q(N)`` per law (its K points side by side; laws on
    the same pools share the queries); the mean over queries of all blocks together is drawn as
    normal with mean zero and their covariance over ``Q``, so shared pools count once."""
    blocks = [np.asarray(r, dtype=float) for r in residuals]
    joined = np.hstack(blocks)
    if len(joined) < 2 or joined.shape[1] == 0:
        return np.zeros(draws, dtype=int)
    covariance = np.atleast_2d(np.cov(joined, rowvar=False)) / len(joined)
    means = np.random.default_rng(seed).multivariate_normal(np.zeros(len(covariance)), covariance, size=draws,
                                                            method="eigh")
    beyond = np.abs(means) > tolerance
    edges = np.cumsum([0] + [b.shape[1] for b in blocks])
    return sum(beyond[:, a:b].any(axis=1).astype(int) for a, b in zip(edges[:-1], edges[1:]) if b > a)


def chance_error_exceeds(residuals: np.ndarray, tolerance: float, draws: int = 4000, seed: int = 0) -> float:
    """How often a law exact for every query would still show a mean error above ``tolerance`` at
    one of the points (columns) of ``residuals`` at least (``chance_misses`` of one law)."""
    return float(chance_misses([residuals], tolerance, draws, seed).mean())


HELD_OUT_LAW = "copula_per_query_held_out"   # present where diagnose was given another pools' λ̂
LAWS = ("per_query", "four_quantity", "per_query_oracle_anchored", "four_quantity_oracle_anchored",
        "copula_per_query", "copula_pooled", HELD_OUT_LAW)
# whose residuals Diagnosis.per_query keeps, per query
PER_QUERY_LAWS = ("per_query", "copula_per_query", HELD_OUT_LAW)


@dataclass
class Diagnosis:
    """The four quantities, the failure modes, and the laws' curves for one reward model."""

    mu_bar: float
    sigma_bar: float
    collapse_rate: float
    rho_bar: float
    hacked_share: float
    rho_bar_pos: float
    rho_bar_neg: float
    flat_pool_share: float
    zero_utility_share: float
    rho_sigma_correlation: float     # the four-quantity law assumes it is near 0
    hacked_share_informative: float
    hacked_share_expected_by_chance: float
    collapsed_users: list
    hacked_queries: list
    observed: np.ndarray
    oracle: np.ndarray
    laws: dict
    law_errors: dict
    law_gaps: dict                   # where the laws part: factorization vs non-Gaussian utilities
    copula_r_bar: float
    per_query: dict = field(repr=False)
    user_score_spread: dict = field(repr=False)
    collapse_threshold: float = 0.0
    observed_se: np.ndarray | None = None   # standard error over queries of the observed gain over μ_q
    law_se: dict | None = None              # per law: standard error over queries of observed − law
    chance_beyond_tolerance: dict | None = None   # per law: how often an exact law would miss LAW_TOLERANCE at N >= 2
    copula_top_compression: float = 1.0     # λ of the copula laws (a run written before it had none: 1)
    copula_top_compression_se: float | None = None   # its standard error (None: not measured)
    held_out_top_compression: float | None = None    # λ̂ of other users' pools, for HELD_OUT_LAW (None: none)
    held_out_top_compression_se: float | None = None

    @property
    def collapse_tau(self) -> float:
        """The collapse threshold as a share of the median user's score spread."""
        median = float(np.median(list(self.user_score_spread.values())))
        return self.collapse_threshold / median if median > 0 else 0.0

    def to_json(self) -> dict:
        """Every field but ``per_query`` as JSON-ready values (what ``diagnosis.json`` holds per
        selector); ``per_query``, Q values per field and Q x M residuals per law, is a table."""
        return _jsonable({k: v for k, v in asdict(self).items() if k != "per_query"})

    @classmethod
    def from_json(cls, data: dict, per_query: dict | None = None) -> "Diagnosis":
        """From ``to_json``'s fields and ``per_query`` (a run written before the per-query
        table kept it among the fields, which then serve)."""
        data = dict(data)
        for f in fields(cls):
            if f.type in ("float", "float | None") and data.get(f.name) is not None:
                number(data[f.name], f.name)
        data.setdefault("per_query", per_query)
        data["observed"], data["oracle"] = np.asarray(data["observed"]), np.asarray(data["oracle"])
        data["laws"] = {k: np.asarray(v) for k, v in data["laws"].items()}
        data["per_query"] = {k: np.asarray(v) for k, v in data["per_query"].items()}
        if data.get("observed_se") is not None:
            data["observed_se"] = np.asarray(data["observed_se"])
        if data.get("law_se") is not None:
            data["law_se"] = {k: np.asarray(v) for k, v in data["law_se"].items()}
        return cls(**data)

    @property
    def top_compression_text(self) -> str:
        """λ̂ with its standard error where one was measured: ``0.53 ± 0.24``."""
        return _compression_text(self.copula_top_compression, self.copula_top_compression_se)

    @property
    def held_out_compression_text(self) -> str:
        """The held-out λ̂ as ``top_compression_text`` writes λ̂, or ``-`` where there is none."""
        if self.held_out_top_compression is None:
            return "-"
        return _compression_text(self.held_out_top_compression, self.held_out_top_compression_se)

    def error_in_se(self, law: str) -> float | None:
        """A law's largest error over N >= 2 in standard errors of its residual at that N: the
        spread over queries of ``BoN_q(N) − law_q(N)``, over √Q.  If the law were each query's
        expected curve given what it measures, its error would be chance of this size; so an
        error of a few of these is a misfit, whatever the observed curve's own spread."""
        if self.law_se is None or len(self.observed) < 2:
            return None
        return float((np.abs(self.laws[law] - self.observed) / np.maximum(self.law_se[law], 1e-12))[1:].max())


def _compression_text(compression: float, se: float | None) -> str:
    return f"{compression:.2f}" + (f" ± {se:.2f}" if se is not None else "")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _curve_errors(predicted: np.ndarray, observed: np.ndarray, oracle_gain: float) -> dict:
    err = np.abs(predicted - observed)
    scale = oracle_gain if oracle_gain > 0 else np.nan
    return {
        "max_abs": float(err.max()),
        "mean_abs": float(err.mean()),
        "max_share_of_oracle_gain": float(err.max() / scale),
        "mean_share_of_oracle_gain": float(err.mean() / scale),
    }


def _user_collapse(scores: np.ndarray, users: np.ndarray, collapse_tau: float):
    """``(user ids, each user's mean score spread, collapsed mask per user, threshold, each
    query's user index)``."""
    user_ids, spread = group_means(scores.std(axis=1), users)
    _, inverse = group_index(users)
    collapsed_user, threshold = collapsed(spread, collapse_tau)
    return user_ids, spread, collapsed_user, threshold, inverse


def held_out_top_compression(scores, utilities, users, collapse_tau: float = 0.1) -> TopCompression | None:
    """The top compression λ̂ that ``diagnose`` would measure on these pools (other users' than
    the ones it is then given, e.g. the validation users'), or None where they are too few to
    measure it."""
    scores, utilities = np.asarray(scores, dtype=float), np.asarray(utilities, dtype=float)
    *_, collapsed_user, _, inverse = _user_collapse(scores, np.asarray(users), collapse_tau)
    measured = top_compression(scores, utilities, ~collapsed_user[inverse], np.asarray(users))
    return measured if measured.standard_error is not None else None


@dataclass(frozen=True)
class Collapse:
    """User-level collapse: users whose scores barely move within their pools."""
    rate: float                  # c: the share of queries whose user collapsed
    users: list                  # {user, score_spread, queries} per collapsed user
    user_score_spread: dict      # each user's mean within-pool score spread
    threshold: float             # the spread at or below which a user collapsed
    per_query: np.ndarray        # True where the query's user collapsed


def user_collapse(scores: np.ndarray, users: np.ndarray, collapse_tau: float) -> Collapse:
    """A user is collapsed when the mean within-query spread of its scores is at most
    ``collapse_tau`` times the median user's."""
    user_ids, spread, collapsed_user, threshold, inverse = _user_collapse(scores, users, collapse_tau)
    listed = [{"user": _jsonable(user_ids[i]), "score_spread": float(spread[i]), "queries": int((inverse == i).sum())}
              for i in np.flatnonzero(collapsed_user)]
    per_query = collapsed_user[inverse]
    return Collapse(float(per_query.mean()), listed, dict(zip(user_ids.tolist(), spread.tolist())), threshold,
                    per_query)


@dataclass(frozen=True)
class Hacking:
    """Query-level reward hacking: pools where the scores run against the utility."""
    share: float                 # h: the share of non-collapsed queries with ρ_q < 0
    share_informative: float     # the same among pools whose utilities spread
    share_expected_by_chance: float
    rho_bar: float               # ρ̄ over non-collapsed queries, = (1 − h) ρ̄₊ − h |ρ̄₋|
    rho_bar_pos: float
    rho_bar_neg: float
    queries: list                # {query, user, rho, p_value} of the significant ones, most negative first


def query_hacking(rho_q: np.ndarray, flat: np.ndarray, active: np.ndarray, m: int, users: np.ndarray,
                  query_ids: np.ndarray, hack_alpha: float) -> Hacking:
    """A query is hacked when its score-utility correlation is negative; those with a one-sided
    p-value below ``hack_alpha`` are listed, so noise and hacking can be told apart."""
    # flat pools keep rho_q = 0 inside the average, so rho_bar = (1-h) rho_pos - h |rho_neg|
    rho_active = rho_q[active]
    hacked_mask = active & (rho_q < 0)
    pos, neg = rho_active[rho_active >= 0], rho_active[rho_active < 0]
    # sampling sd of a correlation from M points (Fisher z): if every informative pool had
    # their mean correlation, this share of estimates would still come out negative by chance
    # (flat pools, with no utility spread, say nothing about the RM)
    informative = rho_q[active & ~flat]
    typical = float(informative.mean()) if informative.size else 0.0
    z_se = 1 / np.sqrt(max(m - 3, 1))
    t = rho_q * np.sqrt(max(m - 2, 1) / np.maximum(1 - rho_q**2, 1e-12))
    p_neg = stats.t.cdf(t, df=max(m - 2, 1))
    listed = [{"query": _jsonable(query_ids[i]), "user": _jsonable(users[i]), "rho": float(rho_q[i]),
               "p_value": float(p_neg[i])} for i in np.flatnonzero(hacked_mask & (p_neg < hack_alpha))]
    listed.sort(key=lambda d: d["rho"])
    return Hacking(
        share=float(hacked_mask.sum() / max(int(active.sum()), 1)),
        share_informative=float(hacked_mask.sum() / max(int((active & ~flat).sum()), 1)),
        share_expected_by_chance=float(stats.norm.cdf(-np.arctanh(np.clip(typical, -0.999, 0.999)) / z_se)),
        rho_bar=float(rho_active.mean()) if rho_active.size else 0.0,
        rho_bar_pos=float(pos.mean()) if pos.size else 0.0,
        rho_bar_neg=float(neg.mean()) if neg.size else 0.0,
        queries=listed)


@dataclass(frozen=True)
class LawFit:
    """The laws' curves beside the observed and oracle ones, and how far each is off."""
    observed: np.ndarray
    oracle: np.ndarray
    observed_se: np.ndarray | None
    laws: dict                   # each law's curve over N
    errors: dict                 # each law's distance from the observed curve
    gaps: dict                   # where the laws part: factorization vs non-Gaussian utilities
    se: dict | None              # per law: standard error over queries of observed − law
    chance_beyond_tolerance: dict | None
    residuals: dict              # per law: each query's observed − law (Q x M)
    copula_r: np.ndarray
    copula_r_bar: float
    compression: float
    compression_se: float | None


def fit_laws(scores: np.ndarray, utilities: np.ndarray, users: np.ndarray, rho_q: np.ndarray, active: np.ndarray,
             collapse_rate: float, rho_bar: float, held_out: TopCompression | None) -> LawFit:
    """Each law per query (its mean over queries is the law's curve), so that its error can be
    measured against the chance left once it has had its say (``LawFit.se``)."""
    q, m = scores.shape
    mu_q, sigma_q = utilities.mean(axis=1), utilities.std(axis=1)
    observed_q = bon_curves(scores, utilities)
    observed = observed_q.mean(axis=0)
    oracle_q = oracle_curves(utilities)
    oracle = oracle_q.mean(axis=0)
    e_n = expected_max_normal(m)
    sigma_bar, c = float(sigma_q.mean()), collapse_rate
    oracle_gain_q = oracle_q - mu_q[:, None]
    # the copula laws keep each pool's own utilities and share the dataset's top compression;
    # pooled, every non-collapsed query gets the dataset's one copula correlation and a
    # collapsed one its random curve
    r_q = copula_correlation(scores, utilities)
    compression, compression_se, r_bar = top_compression(scores, utilities, active, users)
    laws_q = {
        "per_query": mu_q[:, None] + e_n * (rho_q * sigma_q)[:, None],
        "four_quantity": mu_q[:, None] + e_n * sigma_bar * (1 - c) * rho_bar,
        "per_query_oracle_anchored": mu_q[:, None] + rho_q[:, None] * oracle_gain_q,
        "four_quantity_oracle_anchored": mu_q[:, None] + (1 - c) * rho_bar * oracle_gain_q,
        "copula_per_query": posterior_copula_curves(scores, utilities, active, compression),
        "copula_pooled": copula_curves(utilities, np.where(active, r_bar, 0.0), compression=compression),
    }
    if held_out is not None:
        laws_q[HELD_OUT_LAW] = posterior_copula_curves(scores, utilities, active, held_out.compression)
    laws = {k: v.mean(axis=0) for k, v in laws_q.items()}
    residuals_q = {k: observed_q - v for k, v in laws_q.items()}
    gain = oracle_gain(oracle)
    scale = gain if gain > 0 else np.nan

    def gap(a: str, b: str) -> float:
        return float(np.abs(laws[a] - laws[b]).max() / scale)
    return LawFit(
        observed=observed, oracle=oracle,
        observed_se=(observed_q - mu_q[:, None]).std(axis=0, ddof=1) / np.sqrt(q) if q > 1 else None,
        laws=laws, errors={k: _curve_errors(v, observed, gain) for k, v in laws.items()},
        gaps={"factorization_gaussian": gap("four_quantity", "per_query"),
              "factorization_copula": gap("copula_pooled", "copula_per_query"),
              "non_gaussian_utilities": gap("per_query", "copula_per_query")},
        se={k: r.std(axis=0, ddof=1) / np.sqrt(q) for k, r in residuals_q.items()} if q > 1 else None,
        chance_beyond_tolerance={k: chance_error_exceeds(r[:, 1:], LAW_TOLERANCE * gain)
                                 for k, r in residuals_q.items()} if q > 1 and gain > 0 else None,
        residuals=residuals_q, copula_r=r_q, copula_r_bar=r_bar, compression=compression,
        compression_se=compression_se)


def diagnose(
    scores: np.ndarray,
    utilities: np.ndarray,
    users: np.ndarray,
    query_ids: np.ndarray | None = None,
    collapse_tau: float = 0.1,
    correlation: str = "pearson",
    hack_alpha: float = 0.05,
    held_out: TopCompression | None = None,
) -> Diagnosis:
    """Explain a reward model's Best-of-N curve by the scaling laws: the paper's Gaussian laws
    (per query, four quantities, oracle-anchored) and the Gaussian-copula laws that keep the
    pools' own utilities (per query, pooled); find its collapsed users (``user_collapse``) and
    hacked queries (``query_hacking``).

    ``scores``/``utilities`` are ``(Q, M)`` pools; ``users`` names each query's user.

    The copula laws measure the top compression λ̂ on these same pools, as the per-query laws
    measure ρ_q.  ``held_out``, a λ̂ measured on other users' pools
    (``held_out_top_compression``), adds the copula per-query law with that λ instead
    (``HELD_OUT_LAW``): how well the law does where λ is a property of the reward model carried
    over, not a number fitted to the pools it is judged on.
    """
    scores = np.asarray(scores, dtype=float)
    utilities = np.asarray(utilities, dtype=float)
    users = np.asarray(users)
    q, m = scores.shape
    query_ids = np.arange(q) if query_ids is None else np.asarray(query_ids)
    if len(users) != q or len(query_ids) != q:
        raise ValueError(f"need one user and one query id per pool row: {q} rows, "
                         f"{len(users)} users, {len(query_ids)} query ids")
    mu_q, sigma_q = utilities.mean(axis=1), utilities.std(axis=1)
    rho_q = within_pool_correlation(scores, utilities, method=correlation)
    flat = sigma_q <= SPREAD_EPS
    collapse = user_collapse(scores, users, collapse_tau)
    active = ~collapse.per_query
    hacking = query_hacking(rho_q, flat, active, m, users, query_ids, hack_alpha)
    fit = fit_laws(scores, utilities, users, rho_q, active, collapse.rate, hacking.rho_bar, held_out)
    return Diagnosis(
        mu_bar=float(mu_q.mean()), sigma_bar=float(sigma_q.mean()), collapse_rate=collapse.rate,
        rho_bar=hacking.rho_bar, hacked_share=hacking.share, rho_bar_pos=hacking.rho_bar_pos,
        rho_bar_neg=hacking.rho_bar_neg, flat_pool_share=float(flat.mean()),
        zero_utility_share=float((utilities == 0).mean()),
        rho_sigma_correlation=float(within_pool_correlation(rho_q[None], sigma_q[None])[0]),
        hacked_share_informative=hacking.share_informative,
        hacked_share_expected_by_chance=hacking.share_expected_by_chance,
        collapsed_users=collapse.users, hacked_queries=hacking.queries,
        observed=fit.observed, oracle=fit.oracle, laws=fit.laws, law_errors=fit.errors, law_gaps=fit.gaps,
        copula_r_bar=fit.copula_r_bar, copula_top_compression=fit.compression,
        copula_top_compression_se=fit.compression_se,
        held_out_top_compression=held_out.compression if held_out is not None else None,
        held_out_top_compression_se=held_out.standard_error if held_out is not None else None,
        per_query={"query": query_ids, "user": users, "mu": mu_q, "sigma": sigma_q,
                   "rho": rho_q, "copula_r": fit.copula_r, "collapsed": collapse.per_query, "flat": flat,
                   # rounded: they feed covariances, and diagnosis.json holds Q x M of them per law
                   **{f"residual:{law}": np.round(fit.residuals[law], 6) for law in PER_QUERY_LAWS
                      if law in fit.residuals}},
        user_score_spread=collapse.user_score_spread, collapse_threshold=collapse.threshold,
        observed_se=fit.observed_se, law_se=fit.se, chance_beyond_tolerance=fit.chance_beyond_tolerance,
    )
