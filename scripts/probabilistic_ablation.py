"""Why does the probabilistic RM not beat the standard ones on pep-titles?  Ablations of the
target scaling and the NLL weighting, on the features and split of an existing run.

    python scripts/probabilistic_ablation.py runs/pep-titles

For each policy, trains the probabilistic RM with (a) the raw utility, (b) the utility centered
within its pool (so the model learns the ranking inside a pool, not which queries are easy),
(c) beta-NLL (beta = 0.5), and prints the share of the oracle gain captured at N = M on the
test users for the mean and lcb rules, and the within-pool correlation of predicted mean and sd.
"""
import sys

import numpy as np
import pandas as pd

from ttp.analysis.bon import bon_curves, gain_share, oracle_curves
from ttp.analysis.pools import Pools
from ttp.analysis.stats import within_pool_correlation
from ttp.rewards.features import FEATURES
from ttp.rewards.models import RewardConfig, RewardModel
from ttp.rewards.selection import selection_scores
from ttp.runs.pipeline import Pipeline
from ttp.tasks.data import PARTS
from ttp.tasks.utility import PRIMARY


def share_at_m(frame: pd.DataFrame, scores: np.ndarray) -> float:
    pools = Pools.from_frame(frame.assign(_s=scores))
    u, s = pools[PRIMARY], pools["_s"]
    return float(gain_share(bon_curves(s, u).mean(axis=0), oracle_curves(u).mean(axis=0))[-1])


def main(run: str) -> None:
    pipeline = Pipeline.resume(run, show_progress=False)
    for task, policy in pipeline.cells():
        table = pipeline.features(task, policy)
        split = pipeline.splits[task.name]
        parts = {p: table[split.rows(table.user, p)] for p in PARTS}
        print(f"{task.name} / {policy}: {parts['test'].query_id.nunique()} test queries")
        for name, centered, beta in (("raw utility", False, 0.0), ("pool-centered utility", True, 0.0),
                                     ("beta-NLL 0.5", False, 0.5), ("centered + beta-NLL", True, 0.5)):
            def xyg(frame, centered=centered):
                y = frame[PRIMARY].to_numpy(np.float32)
                if centered:
                    y = y - frame.groupby("query_id")[PRIMARY].transform("mean").to_numpy(np.float32)
                return frame[list(FEATURES)].to_numpy(np.float32), y, frame["query_id"].to_numpy()

            model = RewardModel(RewardConfig(kind="probabilistic", beta=beta, seed=pipeline.config.seed))
            model.fit(*xyg(parts["train"]), *xyg(parts["validation"]))
            test = parts["test"]
            X, groups = test[list(FEATURES)].to_numpy(np.float32), test["query_id"].to_numpy()
            mean, sd = model.predict(X, return_std=True)
            test_m = Pools.from_frame(test.assign(_m=mean, _sd=sd))
            coupling = float(within_pool_correlation(test_m["_m"], test_m["_sd"]).mean())
            shares = {rule: share_at_m(test, selection_scores(model, X, groups, rule)) for rule in ("mean", "lcb")}
            print(f"  {name:24s} gain share mean {shares['mean']:.2f}  lcb {shares['lcb']:.2f}  "
                  f"corr(mean, sd) {coupling:+.2f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
