"""Selectors on held-out users: every reward model with every selection rule it supports,
scored on the test pools and judged by the exact Best-of-N curve against oracle and random.

A *selector* is a named score column of the test table: ``random`` (the constant model),
``pointwise``, ``bradley_terry``, ``probabilistic/mean``, ``probabilistic/lcb``,
``probabilistic/p_improve``, and the same three rules for ``ensemble``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ttp.analysis.bon import bon_curves, oracle_curves, user_bootstrap
from ttp.rewards.features import FEATURES
from ttp.policy.sampling import pool_matrix
from ttp.rewards.models import SELECTION_RULES, RewardModel, selection_scores
from ttp.analysis.scaling import within_pool_correlation
from ttp.tasks.utility import PRIMARY

REPORTED_N = (1, 2, 4, 8, 16, 32)


def selector_scores(models: dict[str, RewardModel], test: pd.DataFrame, kappa: float = 1.0) -> pd.DataFrame:
    """The test candidates with one ``score:<selector>`` column per selector (and ``sd:<model>``)."""
    X = test[list(FEATURES)].to_numpy(np.float32)
    groups = test["query_id"].to_numpy()
    out = test.drop(columns=list(FEATURES)).copy()
    for kind, model in models.items():
        name = "random" if kind == "constant" else kind
        if model.is_probabilistic:
            out[f"sd:{kind}"] = model.predict_dist(X)[1]
            for rule in SELECTION_RULES:
                out[f"score:{name}/{rule}"] = selection_scores(model, X, groups, rule, kappa)
        else:
            out[f"score:{name}"] = model.predict(X)
    return out


def selectors(scores: pd.DataFrame) -> list[str]:
    return [c.split(":", 1)[1] for c in scores.columns if c.startswith("score:")]


def evaluate_selectors(scores: pd.DataFrame, n_boot: int = 1000, seed: int = 0, metric: str = PRIMARY) -> dict:
    """Best-of-N curve with a user-bootstrap band, ROUGE@N, share of oracle gain captured and
    mean within-pool Spearman, for every selector, next to the oracle."""
    _, users, u = pool_matrix(scores, metric)
    m = u.shape[1]
    oracle_q = oracle_curves(u)
    oracle = user_bootstrap(oracle_q, users, n_boot, seed=seed)
    reported = sorted({n for n in REPORTED_N if n <= m} | {m})
    result = {"metric": metric, "queries": int(len(u)), "users": int(len(set(users))),
              "pool_size": int(m), "oracle": oracle.to_dict(), "selectors": {}}
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(users, return_inverse=True)
    n_users = inverse.max() + 1
    draws = rng.multinomial(n_users, np.full(n_users, 1 / n_users), size=n_boot)
    for name in selectors(scores):
        _, _, s = pool_matrix(scores, f"score:{name}")
        per_query = bon_curves(s, u)
        curve = user_bootstrap(per_query, users, n_boot, seed=seed)
        # the share of oracle gain is a ratio of means: bootstrap it with the same user draws
        sel_sums = np.zeros((n_users, m))
        orc_sums = np.zeros((n_users, m))
        np.add.at(sel_sums, inverse, per_query - per_query[:, :1])
        np.add.at(orc_sums, inverse, oracle_q - oracle_q[:, :1])
        with np.errstate(invalid="ignore", divide="ignore"):
            share = sel_sums.sum(0) / orc_sums.sum(0)
            boot_share = (draws @ sel_sums) / (draws @ orc_sums)
        result["selectors"][name] = {
            "curve": curve.to_dict(),
            "rouge_at": {str(n): curve.at(n) for n in reported},
            "oracle_gain_share": {str(n): [float(share[n - 1]),
                                           float(np.nanquantile(boot_share[:, n - 1], 0.025)),
                                           float(np.nanquantile(boot_share[:, n - 1], 0.975))]
                                  for n in reported if n > 1},
            "mean_spearman": float(within_pool_correlation(s, u, "spearman").mean()),
        }
        kind = name.split("/")[0]
        if f"sd:{kind}" in scores:
            # does the model's uncertainty rise with its own prediction inside a pool?
            _, _, sd = pool_matrix(scores, f"sd:{kind}")
            _, _, mean = pool_matrix(scores, f"score:{kind}/mean")
            result["selectors"][name]["mean_sd_correlation"] = float(
                within_pool_correlation(mean, sd).mean())
    return result
