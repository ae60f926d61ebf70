"""Simulated candidate pools where the truth is known: planted correlations, collapsed
users and hacked queries.  Used by the tests and docs to show the law and detectors work."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttp.analysis.copula import compress_top

# how a candidate's utility follows from its latent normal z (all monotone in z, so the score
# and the utility always form a Gaussian copula with the planted correlation, its upper half
# compressed by the planted top compression):
#   gaussian       mu + sigma z
#   skewed         ROUGE-like: zero below z = -0.3 (38%), a right-skewed spread above
#   lognormal      right-skewed, no zeros
#   zero_inflated  zero below z = 0 (half the candidates), linear above
UTILITIES = ("gaussian", "skewed", "lognormal", "zero_inflated")


@dataclass(frozen=True)
class SimulationConfig:
    n_users: int = 40
    queries_per_user: int = 10
    pool_size: int = 64
    utility: str = "gaussian"          # one of UTILITIES
    rho_mean: float = 0.5              # typical within-query score-utility correlation
    rho_sd: float = 0.15
    collapsed_user_share: float = 0.0  # users whose RM gives near-constant scores
    hacked_query_share: float = 0.0    # queries where scores are anti-correlated with utility
    hacked_rho: float = -0.6
    top_compression: float = 1.0       # λ: the RM orders the better half of the latents λ times as sharply
    seed: int = 0


@dataclass(frozen=True)
class SimulatedPools:
    scores: np.ndarray
    utilities: np.ndarray
    users: np.ndarray
    query_ids: np.ndarray
    true_rho: np.ndarray
    collapsed_users: np.ndarray
    hacked_queries: np.ndarray


def simulate(config: SimulationConfig = SimulationConfig()) -> SimulatedPools:
    """Draw pools of (score, utility) pairs with a planted correlation per query."""
    rng = np.random.default_rng(config.seed)
    q = config.n_users * config.queries_per_user
    m = config.pool_size
    users = np.repeat(np.arange(config.n_users), config.queries_per_user)
    rho = np.clip(rng.normal(config.rho_mean, config.rho_sd, q), -0.95, 0.95)
    hacked = rng.random(q) < config.hacked_query_share
    rho[hacked] = config.hacked_rho
    n_collapsed = int(round(config.collapsed_user_share * config.n_users))
    collapsed_users = rng.choice(config.n_users, n_collapsed, replace=False)
    collapsed = np.isin(users, collapsed_users)

    z_u = rng.standard_normal((q, m))
    noise = rng.standard_normal((q, m))
    z_s = rho[:, None] * compress_top(z_u, config.top_compression) + np.sqrt(1 - rho[:, None] ** 2) * noise
    mu = rng.uniform(0.2, 0.4, q)[:, None]
    sigma = rng.uniform(0.05, 0.15, q)[:, None]
    if config.utility == "gaussian":
        utilities = mu + sigma * z_u
    elif config.utility == "skewed":
        utilities = np.where(z_u < -0.3, 0.0, mu * np.exp(sigma * 3 * z_u))
    elif config.utility == "lognormal":
        utilities = mu * np.exp(6 * sigma * z_u)
    elif config.utility == "zero_inflated":
        utilities = np.where(z_u < 0, 0.0, sigma * 2 * z_u)
    else:
        raise ValueError(f"utility must be one of {UTILITIES}, got {config.utility!r}")
    # the RM predicts on the utility scale: its spread tracks the pool's utility spread, while
    # its correlation with utility is the planted rho (negative on hacked queries)
    scores = mu + 0.5 * sigma * z_s
    # a collapsed user's scores barely move and carry no information about utility
    scores[collapsed] = mu[collapsed] + 0.005 * sigma[collapsed] * rng.standard_normal((collapsed.sum(), m))
    return SimulatedPools(scores, utilities, users, np.arange(q), rho,
                          np.sort(collapsed_users), np.flatnonzero(hacked & ~collapsed))
