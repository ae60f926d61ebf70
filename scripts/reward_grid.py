"""Would a hyperparameter search make the feature reward models better?  A grid over width,
learning rate and weight decay, each model chosen on the validation users by the criterion that
early-stops it (the mean within-pool correlation ρ̄), judged on the test users.

    python scripts/reward_grid.py runs/pep-titles

For each policy and reward model, prints the default configuration's share of the oracle gain
at N = M on the test users, the configuration the validation users choose and its share, their
paired difference with a 95% band over resampled test users, the range of shares over the
grid with how well validation ρ̄ ranks the grid's test shares (Spearman), and, for scale, the
range of the default's share over five training seeds.
"""
import itertools
import sys

import numpy as np
from scipy import stats

from ttp.analysis.bon import bon_curves, oracle_curves, oracle_gain, user_bootstrap
from ttp.analysis.pools import Pools
from ttp.analysis.stats import within_pool_correlation
from ttp.rewards.features import FEATURES
from ttp.rewards.models import RewardConfig, RewardModel, TrainingDiverged
from ttp.runs.pipeline import Pipeline
from ttp.tasks.data import PARTS
from ttp.tasks.utility import PRIMARY

GRID = {"hidden": (16, 32, 64), "lr": (1e-3, 3e-3, 1e-2), "weight_decay": (1e-4, 1e-2)}
KINDS = ("pointwise", "bradley_terry", "probabilistic")
SEEDS = 5


def arrays(frame):
    return frame[list(FEATURES)].to_numpy(np.float32), frame[PRIMARY].to_numpy(np.float32), frame.query_id.to_numpy()


def main(run: str) -> None:
    pipeline = Pipeline.resume(run, show_progress=False)
    default = RewardConfig()
    for task, policy in pipeline.cells():
        table = pipeline.features(task, policy)
        split = pipeline.splits[task.name]
        parts = {p: table[split.rows(table.user, p)] for p in PARTS}
        train, validation, test = (arrays(parts[p]) for p in ("train", "validation", "test"))
        pools = Pools.from_frame(parts["test"])
        utilities = pools[PRIMARY]
        oracle = oracle_curves(utilities).mean(axis=0)
        print(f"{task.name} / {policy}: {len(GRID['hidden']) * len(GRID['lr']) * len(GRID['weight_decay'])} "
              f"configurations, {len(pools)} test queries")
        for kind in KINDS:
            def trained(config):
                """Validation ρ̄ and each test query's Best-of-N gain at N = M; None if it diverged."""
                try:
                    model = RewardModel(config).fit(*train, *validation)
                except TrainingDiverged:
                    return None
                rho = float(within_pool_correlation(model.predict(validation[0]), validation[1],
                                                    groups=validation[2]).mean())
                scores = Pools.from_frame(parts["test"].assign(_s=model.predict(test[0])))["_s"]
                gain = bon_curves(scores, utilities)
                return rho, gain[:, -1] - gain[:, 0]

            results = {values: trained(RewardConfig(kind=kind, seed=pipeline.config.seed, **dict(zip(GRID, values))))
                       for values in itertools.product(*GRID.values())}
            results = {values: result for values, result in results.items() if result is not None}
            seeds = [trained(RewardConfig(kind=kind, seed=pipeline.config.seed + s)) for s in range(SEEDS)]
            base = results[(default.hidden, default.lr, default.weight_decay)]
            chosen = max(results, key=lambda v: results[v][0])
            scale = oracle_gain(oracle)
            difference = user_bootstrap(((results[chosen][1] - base[1]) / scale)[:, None], pools.users, 1000)
            shares = {v: float(g.mean() / scale) for v, (_, g) in results.items()}
            ranking = stats.spearmanr([results[v][0] for v in results], [shares[v] for v in results])[0]
            print(f"  {kind:14s} default {shares[(default.hidden, default.lr, default.weight_decay)]:.3f}; "
                  f"validation picks hidden {chosen[0]}, lr {chosen[1]:g}, weight decay {chosen[2]:g}: "
                  f"{shares[chosen]:.3f}, difference {difference.mean[0]:+.3f} "
                  f"[{difference.low[0]:+.3f}, {difference.high[0]:+.3f}]; grid {min(shares.values()):.3f}–"
                  f"{max(shares.values()):.3f} ({len(results)} trained), Spearman(validation ρ̄, test share) "
                  f"{ranking:+.2f}; default over {SEEDS} seeds "
                  f"{min(g.mean() / scale for _, g in seeds):.3f}–{max(g.mean() / scale for _, g in seeds):.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/pep-titles")
