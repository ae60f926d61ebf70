"""How the lm reward model's share of the oracle gain moves with its training pools: the
Bradley–Terry head refitted on the first k of the training users' pools (a seeded order,
nested), judged on the run's test pools at N = 4 and M, with the pools read once.

    python scripts/lm_learning_curve.py runs/pep-titles-3 [--prompting personalized] [--shares 0.25,0.5,1]

The run must have pools and utilities (``ttp run``); nothing in it is written."""
import argparse
import time

import numpy as np
import pandas as pd

from ttp.analysis.bon import bon_curves, gain_share, oracle_curves
from ttp.analysis.pools import Pools
from ttp.analysis.stats import within_pool_correlation
from ttp.rewards.families import FAMILIES
from ttp.runs.pipeline import Pipeline
from ttp.tasks.data import PARTS
from ttp.tasks.utility import PRIMARY


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder with pools and utilities")
    parser.add_argument("--prompting", default="personalized")
    parser.add_argument("--shares", default="0.25,0.5,1", help="shares of the training pools (comma list)")
    parser.add_argument("--head", default="bradley_terry")
    args = parser.parse_args(argv)
    pipeline = Pipeline.resume(args.run)
    family = FAMILIES["lm"]
    for task in pipeline.tasks:
        table = pipeline.features(task, args.prompting)
        split = pipeline.splits[task.name]
        rows = {p: split.rows(table["user"], p) for p in PARTS}
        X, _ = family.batch_inputs(table, pipeline.reward_inputs(task, args.prompting))
        y, groups = table[PRIMARY].to_numpy(), table["query_id"].to_numpy()
        pools = pd.unique(groups[rows["train"]])
        order = np.random.default_rng(pipeline.config.seed).permutation(len(pools))
        test = table[rows["test"]]
        utilities = Pools.from_frame(test)[PRIMARY]
        m = utilities.shape[1]
        oracle = oracle_curves(utilities).mean(0)
        print(f"{task.name} / {args.prompting}: lm.{args.head} on the first k of {len(pools)} training pools; "
              f"{len(utilities)} test pools of {m}")
        print(f"{'pools':>6} {'gain share N=4':>15} {f'N={m}':>8} {'test ρ̄':>8} {'train min':>10}")
        for share in (float(s) for s in args.shares.split(",")):
            kept = set(pools[order[:max(1, round(share * len(pools)))]])
            train = rows["train"] & np.isin(groups, list(kept))
            start = time.perf_counter()
            model = family.new_model(args.head, pipeline.config.seed, X.reading).fit(
                X[train], y[train], groups[train], X[rows["validation"]], y[rows["validation"]],
                groups[rows["validation"]])
            minutes = (time.perf_counter() - start) / 60
            scored = Pools.from_frame(test.assign(score=model.predict(X[rows["test"]])))
            share_n = gain_share(bon_curves(scored["score"], utilities).mean(0), oracle)
            rho = np.nanmean(within_pool_correlation(scored["score"], utilities))
            print(f"{len(kept):>6} {share_n[3]:>15.2f} {share_n[m - 1]:>8.2f} {rho:>8.3f} {minutes:>10.1f}")


if __name__ == "__main__":
    main()
