"""Selectors on held-out users: every reward model with every selection rule it offers, scored
on held-out pools and judged by the exact Best-of-N curve against the oracle.

The score table holds the candidates with one ``score:<selector>`` column per selector (see
``ttp.rewards.selection.Selector``) and ``sd:<model>`` for probabilistic models."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ttp.analysis.bon import bon_curves, gain_share, oracle_curves, user_bootstrap
from ttp.analysis.pools import Pools
from ttp.analysis.stats import bootstrap_draws, group_index, group_sums, within_pool_correlation
from ttp.rewards.families import family_of
from ttp.rewards.features import FEATURES
from ttp.rewards.selection import Selector, selection_scores, selectors_of
from ttp.tasks.utility import PRIMARY

REPORTED_N = (1, 2, 4, 8, 16, 32)


def selector_scores(models: dict, candidates: pd.DataFrame, kappa: float = 1.0) -> pd.DataFrame:
    """The candidates (features dropped) with a score column per selector and an sd column per
    probabilistic model; ``models`` maps each name to ``(model, its inputs for these candidates)``."""
    groups = candidates["query_id"].to_numpy()
    out = candidates.drop(columns=list(FEATURES)).copy()
    for name, (model, X) in models.items():
        if model.is_probabilistic:
            out[f"sd:{name}"] = model.predict(X, return_std=True)[1]
        for selector in selectors_of(name, model):
            out[selector.column] = selection_scores(model, X, groups, selector.rule or "mean", kappa)
    return out


def selectors(pools: Pools) -> list[Selector]:
    return [Selector.from_column(c) for c in pools.columns("score:")]


def evaluate_selectors(pools: Pools, n_boot: int = 1000, seed: int = 0, metric: str = PRIMARY) -> dict:
    """Best-of-N curve with a user-bootstrap band, share of oracle gain captured (at N in
    ``REPORTED_N`` and M) and mean within-pool Spearman, for every selector, next to the oracle."""
    u, users, m = pools[metric], pools.users, pools.size
    oracle_q = oracle_curves(u)
    oracle = user_bootstrap(oracle_q, users, n_boot, seed=seed)
    reported = sorted({n for n in REPORTED_N if n <= m} | {m})
    result = {"metric": metric, "queries": len(pools), "users": int(len(set(users))),
              "pool_size": m, "oracle": oracle.to_json(), "selectors": {}}
    user_ids, inverse = group_index(users)
    draws = bootstrap_draws(len(user_ids), n_boot, seed)
    oracle_sums = group_sums(oracle_q - oracle_q[:, :1], inverse, len(user_ids))
    for selector in selectors(pools):
        s = pools[selector.column]
        per_query = bon_curves(s, u)
        curve = user_bootstrap(per_query, users, n_boot, seed=seed)
        # the share of oracle gain is a ratio of means: bootstrap it with the same user draws
        sums = group_sums(per_query - per_query[:, :1], inverse, len(user_ids))
        share = gain_share(sums.sum(0), oracle_sums.sum(0))
        boot_share = gain_share(draws @ sums, draws @ oracle_sums)
        entry = {
            "curve": curve.to_json(),
            "oracle_gain_share": {str(n): [float(share[n - 1]),
                                           float(np.nanquantile(boot_share[:, n - 1], 0.025)),
                                           float(np.nanquantile(boot_share[:, n - 1], 0.975))]
                                  for n in reported if n > 1},
            "mean_spearman": float(within_pool_correlation(s, u, method="spearman").mean()),
        }
        sd_column = f"sd:{selector.model}"
        if sd_column in pools.frame:
            # does the model's uncertainty rise with its own prediction inside a pool?
            mean = pools[(Selector(selector.model, "mean") if selector.rule else selector).column]
            entry["mean_sd_correlation"] = float(within_pool_correlation(mean, pools[sd_column]).mean())
        result["selectors"][str(selector)] = entry
    untrained = [str(s) for s in selectors(pools) if family_of(s.model) == "zero-shot"]
    if untrained:
        # the bar a trained model must clear: the untrained selector best at N = M, paired per user
        best = max(untrained, key=lambda n: result["selectors"][n]["curve"]["mean"][-1])
        base = group_sums(bon_curves(pools[Selector.parse(best).column], u), inverse, len(user_ids))
        counts = np.bincount(inverse)[:, None]
        for name, entry in result["selectors"].items():
            diff = (group_sums(bon_curves(pools[Selector.parse(name).column], u), inverse, len(user_ids)) - base)
            boot = (draws @ diff) / (draws @ counts)
            entry["vs_best_untrained"] = {"selector": best, **{
                str(n): [float(diff[:, n - 1].sum() / counts.sum()), float(np.quantile(boot[:, n - 1], 0.025)),
                         float(np.quantile(boot[:, n - 1], 0.975))] for n in reported if n > 1}}
    return result
