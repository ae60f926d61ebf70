"""What averaging over the uncertainty in r_q, and the top compression λ, buy: the copula
per-query law with each pool's measured ``r̂_q`` plugged in; averaged over the posterior of
``r_q`` given ``r̂_q`` with the Gaussian copula (λ = 1; ``posterior_copula_curves``;
docs/method.md, "Noise in r̂_q"); and the law ``ttp diagnose`` reports, which does the same
with the pools' top compression λ̂ (docs/method.md, "Top compression"), taken from
``diagnose`` so that it is the law reported.  On a run it adds the same law on the test pools
with λ measured on the validation users' pools instead (``diagnose``'s held-out law): whether λ̂
is a property of the reward model that carries over to other users, or a parameter fitted to
the pools it is judged on.

    python scripts/copula_posterior.py [runs/pep-titles]

It prints each law's max error over N as a share of the oracle gain and in paired standard
errors, and its mean signed error (observed − law) at N = 2, 4, 8 and 16: on the simulator
(1,200 queries per setting, seed 3), and on a run's test pools for every selector, with the
count of selectors within 5% and within 2 paired SE, and for the pointwise RM's λ̂ its 95% band
over 200 resamples of the test users (the collapsed ones left out) beside the standard error
``top_compression`` gives it, and whether the feature selectors' λ̂ differs between test and
validation users more than between random splits of the same users (``split_permutation``).
For the simulator it also prints the prior's slope ``b`` on log
utility spread, the least-squares fit of ``r̂_q`` on ``log σ_q`` over pools with spread (what
``correlation_posterior`` fits), and what carrying λ̂ over from other users costs where every
user has the same λ, at the size of pep-titles' test and validation users.
"""
import sys

import numpy as np
import pandas as pd

from ttp.analysis.bon import bon_curves, oracle_curves, oracle_gain
from ttp.analysis.copula import copula_correlation, copula_curves
from ttp.analysis.copula_fit import posterior_copula_curves, top_compression
from ttp.analysis.pools import Pools
from ttp.analysis.scaling import HELD_OUT_LAW, diagnose, held_out_top_compression
from ttp.analysis.simulate import UTILITIES, SimulationConfig, simulate
from ttp.rewards.families import family_of
from ttp.runs.evaluation import selectors
from ttp.runs.pipeline import Pipeline
from ttp.tasks.utility import PRIMARY

SIGNED_AT = np.array([2, 4, 8, 16])
PERMUTATIONS = 200   # random splits of the users in split_permutation
NAMES = ("plug-in r̂", "posterior, λ = 1", "the law (λ̂)", "λ̂ of validation users")


def errors(residual: np.ndarray, utilities: np.ndarray) -> tuple[float, float, np.ndarray]:
    """From each query's ``observed − law``: ``(max error over N as a share of the oracle gain,
    max error in paired standard errors, mean signed error at SIGNED_AT as a share of the gain)``."""
    gain = oracle_gain(oracle_curves(utilities).mean(axis=0))
    se = residual.std(axis=0, ddof=1) / np.sqrt(len(residual))
    mean = residual.mean(axis=0)
    signed = mean[SIGNED_AT[SIGNED_AT <= len(mean)] - 1] / gain
    return float(np.abs(mean).max() / gain), float((np.abs(mean) / np.maximum(se, 1e-15))[1:].max()), signed


def compare(scores: np.ndarray, utilities: np.ndarray, users: np.ndarray, validation=None) -> tuple[list, str]:
    """Each law's errors (the plug-in law, the posterior law with λ = 1, and the law as ``ttp
    diagnose`` computes it, collapsed users outside the prior in all), and the λ̂ it measured
    with its standard error; with ``validation`` pools ``(scores, utilities, users)``, also the
    law with the λ̂ those measure (and it beside the other)."""
    observed = bon_curves(scores, utilities)
    held = None if validation is None else held_out_top_compression(*validation)
    d = diagnose(scores, utilities, users, held_out=held)
    active = ~d.per_query["collapsed"].astype(bool)
    plug_in = observed - copula_curves(utilities, copula_correlation(scores, utilities))
    gaussian = observed - posterior_copula_curves(scores, utilities, active)
    laws = [plug_in, gaussian, d.per_query["residual:copula_per_query"]]
    if held is None:
        return [errors(residual, utilities) for residual in laws], d.top_compression_text
    laws.append(d.per_query[f"residual:{HELD_OUT_LAW}"])
    return ([errors(residual, utilities) for residual in laws],
            f"{d.top_compression_text:>12s} {d.held_out_compression_text:>12s}")


def compression_band(scores: np.ndarray, utilities: np.ndarray, users: np.ndarray, active: np.ndarray,
                     resamples: int = 200, seed: int = 0) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of ``top_compression`` over resamples of the users."""
    rng = np.random.default_rng(seed)
    names = np.unique(users)
    rows_of = {name: np.flatnonzero(users == name) for name in names}
    estimates = []
    for _ in range(resamples):
        rows = np.concatenate([rows_of[name] for name in rng.choice(names, len(names))])
        estimates.append(top_compression(scores[rows], utilities[rows], active[rows]).compression)
    low, high = np.percentile(estimates, [2.5, 97.5])
    return float(low), float(high)


def prior_slope(scores: np.ndarray, utilities: np.ndarray) -> float:
    spread = (scores.std(axis=1) > 0) & (utilities.std(axis=1) > 0)
    return float(np.polyfit(np.log(utilities.std(axis=1)[spread]), copula_correlation(scores, utilities)[spread], 1)[0])


def header(names) -> str:
    return "   ".join(f"{name:>18s}" for name in names)


def cell(share: float, se: float) -> str:
    return f"{share:6.1%} ({se:4.1f} SE)"


def carried_over_on_simulator(seeds: int = 8) -> None:
    """What measuring λ on other users costs where every user has the same λ: simulated pools of
    16 at pep-titles' size (21 test users x 6 queries, 8 validation users x 6), each seed's law
    on the test pools with λ̂ from the test pools and from the validation pools."""
    print(f"\nλ̂ carried over, simulated at pep-titles' size ({seeds} seeds): mean error of the law, and how many "
          f"seeds it fits within 5% / within 2 paired SE, with λ̂ from the test pools -> from the validation pools")
    for utility, planted, rho in (("zero_inflated", 1.0, 0.5), ("zero_inflated", 0.4, 0.7), ("gaussian", 0.4, 0.7)):
        rows = []
        for seed in range(seeds):
            test, held = (simulate(SimulationConfig(n_users=users, queries_per_user=6, pool_size=16, utility=utility,
                                                    seed=offset + seed, top_compression=planted, rho_mean=rho))
                          for users, offset in ((21, 100), (8, 200)))
            d = diagnose(test.scores, test.utilities, test.users,
                         held_out=held_out_top_compression(held.scores, held.utilities, held.users))
            rows.append([*errors(d.per_query["residual:copula_per_query"], test.utilities)[:2],
                         *errors(d.per_query[f"residual:{HELD_OUT_LAW}"], test.utilities)[:2]])
        r = np.array(rows)
        print(f"  {utility:14s} planted λ = {planted}: " + " -> ".join(
            f"{r[:, k].mean():.1%}, {(r[:, k] <= 0.05).sum()} / {(r[:, k + 1] <= 2).sum()} of {seeds}" for k in (0, 2)),
            flush=True)


def split_permutation(validation: Pools, test: Pools, columns: list[str], permutations: int = PERMUTATIONS,
                      seed: int = 0) -> tuple[float, float, float]:
    """Is λ̂ on the test users larger or smaller than on the validation users beyond what any split
    of the same users would give?  ``(observed mean over columns of λ̂ test − λ̂ validation, its
    sd over random splits of the pooled users into groups of the same sizes, the share of those
    splits whose mean is at least as far from 0)``.  The reward models trained on neither group,
    so under the null of one λ for all of them every split is as likely as the real one; the
    columns share pools, so they are permuted together."""
    users = np.concatenate([validation.users, test.users])
    utilities = np.vstack([validation[PRIMARY], test[PRIMARY]])
    scores = {c: np.vstack([validation[c], test[c]]) for c in columns}

    def mean_difference(in_validation: np.ndarray) -> float:
        measured = [[held_out_top_compression(scores[c][rows], utilities[rows], users[rows])
                     for rows in (~in_validation, in_validation)] for c in columns]
        return float(np.mean([a.compression - b.compression for a, b in measured if a is not None and b is not None]))

    observed = mean_difference(np.arange(len(users)) < len(validation))
    names, rng = np.unique(users), np.random.default_rng(seed)
    size = len(np.unique(validation.users))
    split = np.array([mean_difference(np.isin(users, rng.choice(names, size, replace=False)))
                      for _ in range(permutations)])
    return observed, float(split.std()), float((np.abs(split) >= abs(observed)).mean())


def main(run: str | None) -> None:
    print(f"{'':38s} {header(NAMES[:3])}     λ̂   prior slope b")
    for utility in UTILITIES:
        for m in (8, 16, 64):
            sim = simulate(SimulationConfig(n_users=60, queries_per_user=20, pool_size=m, utility=utility, seed=3))
            cells, compression = compare(sim.scores, sim.utilities, sim.users)
            print(f"simulated {utility:14s} M = {m:2d}          " + "   ".join(cell(*c[:2]) for c in cells)
                  + f"   {compression}   {prior_slope(sim.scores, sim.utilities):+.3f}", flush=True)
    carried_over_on_simulator()
    if run is None:
        return
    pipeline = Pipeline.resume(run, show_progress=False)
    for task, policy in pipeline.cells():
        pools, validation = (Pools.from_frame(pd.read_parquet(pipeline.folder.scores(task.name, policy, part)))
                             for part in ("test", "validation"))
        print(f"\n{f'{task.name} / {policy}':38s} {header(NAMES)}      λ̂ (test)  λ̂ (validation)")
        results = []
        for selector in selectors(pools):
            if selector.model != "random":
                cells, compression = compare(pools[selector.column], pools[PRIMARY], pools.users,
                                             (validation[selector.column], validation[PRIMARY], validation.users))
                results.append(cells)
                print(f"  {str(selector):36s} " + "   ".join(cell(*c[:2]) for c in cells) + f"   {compression}",
                      flush=True)
        pointwise = pools["score:pointwise"] if "score:pointwise" in pools.frame.columns else None
        if pointwise is not None:
            d = diagnose(pointwise, pools[PRIMARY], pools.users)
            low, high = compression_band(pointwise, pools[PRIMARY], pools.users, ~d.per_query["collapsed"].astype(bool))
            print(f"  pointwise λ̂ {d.top_compression_text} (delta method), 95% band over resampled users: "
                  f"[{low:.2f}, {high:.2f}]")
        features = [s.column for s in selectors(pools) if family_of(s.model) == "features"]
        observed, spread, share = split_permutation(validation, pools, features)
        print(f"  λ̂ test − λ̂ validation, mean over the {len(features)} feature selectors: {observed:+.2f}; "
              f"over {PERMUTATIONS} random splits of the same users into groups of these sizes: sd {spread:.2f}, "
              f"as far from 0 in "
              f"{share:.0%}", flush=True)
        for i, name in enumerate(NAMES):
            share, se, signed = (np.array([r[i][k] for r in results]) for k in range(3))
            print(f"  {name}: within 5% for {(share <= 0.05).sum()} of {len(results)}, within 2 paired SE for "
                  f"{(se <= 2).sum()}; mean signed error (observed − law) at N = {', '.join(map(str, SIGNED_AT))}: "
                  + ", ".join(f"{v:+.1%}" for v in signed.mean(axis=0)))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
