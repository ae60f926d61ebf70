"""Could the online stopping rule learn each query's calibration from its draws?  Probes on the
stored pools of an existing run (docs/results.md, "The law as a controller").

    python scripts/allocation_probes.py runs/pep-titles

For each task and policy, on the validation and the test users:
1. how well what the draws show predicts the query's gain slope ρ_q σ_q (the utility that one
   unit of score spread buys, which the known-calibration reference is told): Pearson
   correlations with the spread of the first four scores, the reward model's mean predicted sd
   over them, the policy's mean token log-probability and the candidates' mean pairwise word
   overlap;
2. the samples per query the expected-improvement rule needs to match uniform N = 8 with more
   or less shrinkage of its score spread, and with other selectors.
"""
import sys

import numpy as np
import pandas as pd

from ttp.analysis.allocation import STUDY_BUDGETS, AllocationCurve
from ttp.analysis.control import ControllerConfig, evaluate_policy, validation_calibration
from ttp.analysis.pools import Pools
from ttp.analysis.stats import within_pool_correlation
from ttp.runs.evaluation import Selector
from ttp.runs.pipeline import Pipeline
from ttp.tasks.utility import PRIMARY

FIRST = 4
PRIOR_STRENGTHS = (2.0, 8.0, 32.0, 1000.0)
SELECTORS = ("probabilistic/mean", "pointwise", "bradley_terry", "ensemble/mean")


def _word_overlap(texts: list[str]) -> float:
    words = [set(t.lower().split()) for t in texts]
    pairs = [len(a & b) / max(len(a | b), 1) for i, a in enumerate(words) for b in words[i + 1:]]
    return float(np.mean(pairs)) if pairs else 0.0


def observables(frame: pd.DataFrame, selector: Selector) -> pd.DataFrame:
    """Per query: its gain slope, and what the first draws show."""
    rows = []
    for _, pool in frame.sort_values(["query_id", "candidate"]).groupby("query_id", sort=False):
        scores, utilities = pool[selector.column].to_numpy(), pool[PRIMARY].to_numpy()
        first = pool.head(FIRST)
        rho = within_pool_correlation(scores[None], utilities[None])[0]
        rows.append({"slope": rho * utilities.std(),
                     "score spread": first[selector.column].std(ddof=0),
                     "predicted sd": first[f"sd:{selector.model.split('/')[0]}"].mean()
                     if f"sd:{selector.model.split('/')[0]}" in pool else np.nan,
                     "token logprob": (first.logprob / first.n_tokens.clip(lower=1)).mean(),
                     "word overlap": _word_overlap(first.text.tolist())})
    return pd.DataFrame(rows)


def samples_to_match_uniform(val: Pools, test: Pools, column: str, config: ControllerConfig) -> float | None:
    kappa, spread = validation_calibration(val[column], val[PRIMARY])
    budgets = tuple(b for b in STUDY_BUDGETS if b <= test[PRIMARY].shape[1])
    rows = [evaluate_policy("expected_improvement", test[column], test[PRIMARY], test.users, b, kappa, config,
                            spread_prior=spread) for b in budgets]
    curve = AllocationCurve("expected_improvement", budgets, tuple(r["samples_per_query"] for r in rows),
                            tuple(r["mean"] for r in rows), (), ())
    uniform = evaluate_policy("uniform", test[column], test[PRIMARY], test.users, 8, kappa, config)["mean"]
    return curve.samples_to_reach(uniform)


def main(run: str) -> None:
    pipeline = Pipeline.resume(run, show_progress=False)
    for task, policy in pipeline.cells():
        frames = {part: pd.read_parquet(pipeline.folder.scores(task.name, policy, part))
                  for part in ("validation", "test")}
        print(f"\n{task.name} / {policy}: correlation with the gain slope ρ_q σ_q "
              f"(first {FIRST} draws, {pipeline.config.controller_selector})")
        selector = Selector.parse(pipeline.config.controller_selector)
        for part, frame in frames.items():
            table = observables(frame, selector)
            corr = table.corr()["slope"].drop("slope")
            print(f"  {part:10s} ({len(table)} queries): " + ", ".join(f"{k} {v:+.2f}" for k, v in corr.items()))
        pools = {part: Pools.from_frame(frame) for part, frame in frames.items()}
        print("  expected improvement, samples per query to match uniform N = 8 on the test users:")
        for strength in PRIOR_STRENGTHS:
            need = samples_to_match_uniform(pools["validation"], pools["test"], selector.column,
                                            ControllerConfig(prior_strength=strength))
            print(f"    spread shrinkage {strength:6.0f} pseudo-samples: {need:.2f}" if need else "    not reached")
        for name in SELECTORS:
            column = Selector.parse(name).column
            if column in frames["test"]:
                need = samples_to_match_uniform(pools["validation"], pools["test"], column, ControllerConfig())
                print(f"    selector {name:22s}: " + (f"{need:.2f}" if need else "not reached"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/pep-titles")
