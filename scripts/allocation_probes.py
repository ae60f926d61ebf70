"""Could the online stopping rule learn each query's calibration from its draws?  Probes on the
stored pools of an existing run (docs/results.md, "The law as a controller").

    python scripts/allocation_probes.py runs/pep-titles

For each task and policy, on the validation and the test users:
0. whether κ_q is a property of the query or the luck of its pool: the correlation of κ_q
   computed on the first and on the second half of each pool's candidates (and from it, how
   closely anything known of the query could predict a full pool's κ_q); and whether it is a
   property of the user (which a calibration on the user's own history could find): the share
   of its variance between users;
1. how well what the draws show predicts the query's gain slope ρ_q σ_q (the utility that one
   unit of score spread buys, which the known-calibration reference is told): Pearson
   correlations with the spread of the first four scores, the reward model's mean predicted sd
   over them, the policy's mean token log-probability and the candidates' mean pairwise word
   overlap;
2. the samples per query the expected-improvement rule needs to match uniform N = 8 with each
   shrinkage of its score spread the allocate stage may choose (on the validation and the test
   users); with the chosen one, told each query's own κ_q, its pool's score spread, or both; in
   chunks of 2; without its collapse check; and with each of the run's other selectors;
   and how good an estimate of κ_q (and of the score spread) would have to be: the rule told,
   in place of each query's own values, estimates whose normal scores correlate c with theirs;
3. whether a model of κ_q can be learned with more queries than the validation users have: the
   selector's reward model (features family) is cross-fitted over five folds of the training and
   validation users, which gives out-of-fold scores for all their queries; a ridge regression of
   κ_q on what the first four draws show is fitted there and used by the rule on the test users.
"""
import sys
from dataclasses import replace
from functools import partial

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from ttp.analysis.allocation import (
    PRIOR_STRENGTHS,
    STUDY_BUDGETS,
    AllocationCurve,
    choose_online_rule,
    samples_to_reach_uniform,
    uniform_reference,
)
from ttp.analysis.control import (
    ControllerConfig,
    budget_threshold,
    evaluate_allocation,
    improvement_gains,
    query_calibration,
    stop_below,
    validation_calibration,
)
from ttp.analysis.pools import Pools
from ttp.analysis.stats import within_pool_correlation
from ttp.rewards.families import FAMILIES, family_of
from ttp.rewards.features import FEATURES
from ttp.runs.evaluation import Selector, selectors
from ttp.runs.pipeline import Pipeline
from ttp.tasks.utility import PRIMARY

FIRST = 4
FOLDS = 5
DRAWN = ("sim_input", "sim_pool", "sim_profile_max", "logprob_per_token")   # features of the drawn candidates
RIDGE = 10.0
SIGNAL_QUALITIES = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
NOISE_DRAWS = 20


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


def intraclass_correlation(values: np.ndarray, users: np.ndarray) -> float:
    """The share of the values' variance that lies between users (one-way ANOVA estimate)."""
    frame = pd.DataFrame({"value": values, "user": users})
    groups = frame.groupby("user").value
    size = groups.size().mean()
    between = (groups.size() * (groups.mean() - frame.value.mean()) ** 2).sum() / (groups.ngroups - 1)
    within = ((frame.value - groups.transform("mean")) ** 2).sum() / (len(frame) - groups.ngroups)
    return float((between - within) / (between + (size - 1) * within))


def query_level_ceiling(halves: float) -> float:
    """How well a full pool's κ_q can correlate with what any property of its query predicts,
    given ``halves``, the correlation of κ_q between two halves of each pool: the square root of
    the full pool's reliability, ``2 r / (1 + r)`` (Spearman–Brown)."""
    return float(np.sqrt(max(2 * halves / (1 + halves), 0.0)))


def samples_to_match_uniform(val: Pools, test: Pools, column: str, config: ControllerConfig) -> float | None:
    """Samples per query expected improvement, calibrated on the validation pools, needs to
    match uniform N = 8 on the test pools."""
    kappa, spread = validation_calibration(val[column], val[PRIMARY])
    reference = uniform_reference(test[column], test[PRIMARY], test.users, seed=0)
    return samples_to_reach_uniform(test[column], test[PRIMARY], test.users, kappa, spread, config, 0, reference)


def chosen_config(val: Pools, column: str) -> ControllerConfig:
    """The controller with the spread shrinkage the allocate stage chooses on the validation pools."""
    kappa, spread = validation_calibration(val[column], val[PRIMARY])
    return ControllerConfig(prior_strength=choose_online_rule(val[column], val[PRIMARY], val.users, kappa,
                                                              spread).prior_strength)


def told_the_pool(val: Pools, test: Pools, column: str, config: ControllerConfig) -> dict[str, float | None]:
    """Samples per query expected improvement needs to match uniform N = 8 when told, from each
    test query's full pool, its calibration κ_q, its score spread, or both (which is the
    known-calibration reference): which of the two the draws' not revealing costs more."""
    kappa, spread = validation_calibration(val[column], val[PRIMARY])
    kappa_q, spread_q = query_calibration(test[column], test[PRIMARY])
    need = partial(told_need, test, column, spread, config)
    return {"its own κ_q, its score spread still estimated from the draws": need(kappa_q, None),
            "its pool's score spread, κ still the validation one": need(kappa, spread_q),
            "both (the known-calibration reference)": need(kappa_q, spread_q)}


def told_need(test: Pools, column: str, spread_prior: float, config: ControllerConfig, kappa,
              known_spread: np.ndarray | None) -> float | None:
    """Samples per query expected improvement needs to match uniform N = 8 on the test pools
    when told ``kappa`` (one or one per query) and, unless None, each query's score spread."""
    scores = test[column]
    return samples_needed(scores, test[PRIMARY], test.users, lambda o: improvement_gains(
        _in_order(scores, o), kappa, spread_prior, config, known_spread=known_spread))


def estimate_of_quality(values: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    """A per-query estimate of ``values`` from a signal whose normal scores correlate ``quality``
    with theirs: the values' quantile at the signal's best guess of each normal score (so 0
    tells every query the median, 1 its own value)."""
    z = norm.ppf((rankdata(values) - 0.5) / len(values))
    signal = quality * z + np.sqrt(1 - quality**2) * rng.standard_normal(len(values))
    return np.quantile(values, norm.cdf(quality * signal), method="inverted_cdf")


def told_estimates(val: Pools, test: Pools, column: str, config: ControllerConfig) -> dict[float, tuple[str, str]]:
    """Per signal quality c, the samples per query expected improvement needs to match uniform
    N = 8 when told an estimate of each test query's κ_q of that quality (its spread still
    estimated from the draws), and estimates of both κ_q and its score spread (independent
    noise): how much of the known-calibration reference's lead a predictor of κ_q correlating c
    with it would keep.  The mean over ``NOISE_DRAWS`` draws of the noise (one at c = 0 and 1),
    ± its standard error, as text."""
    _, spread = validation_calibration(val[column], val[PRIMARY])
    kappa_q, spread_q = query_calibration(test[column], test[PRIMARY])
    rng = np.random.default_rng(0)

    def mean_need(quality, told_spread):
        needs = []
        for _ in range(1 if quality in (0.0, 1.0) else NOISE_DRAWS):
            kappa = estimate_of_quality(kappa_q, quality, rng)
            known_spread = estimate_of_quality(spread_q, quality, rng) if told_spread else None
            needs.append(told_need(test, column, spread, config, kappa, known_spread))
        if None in needs:
            return "not reached"
        standard_error = f" ± {np.std(needs, ddof=1) / np.sqrt(len(needs)):.2f}" if len(needs) > 1 else ""
        return f"{np.mean(needs):.2f}{standard_error}"

    return {quality: (mean_need(quality, False), mean_need(quality, True)) for quality in SIGNAL_QUALITIES}


def main(run: str) -> None:
    pipeline = Pipeline.resume(run, show_progress=False)
    for task, policy in pipeline.cells():
        frames = {part: pd.read_parquet(pipeline.folder.scores(task.name, policy, part))
                  for part in ("validation", "test")}
        print(f"\n{task.name} / {policy}: correlation with the gain slope ρ_q σ_q "
              f"(first {FIRST} draws, {pipeline.config.controller_selector})")
        selector = Selector.parse(pipeline.config.controller_selector)
        for part, frame in frames.items():
            pool = Pools.from_frame(frame)
            half = pool[PRIMARY].shape[1] // 2
            first, _ = query_calibration(pool[selector.column][:, :half], pool[PRIMARY][:, :half])
            second, _ = query_calibration(pool[selector.column][:, half:], pool[PRIMARY][:, half:])
            kappa_q, _ = query_calibration(pool[selector.column], pool[PRIMARY])
            halves = np.corrcoef(first, second)[0, 1]
            print(f"  {part:10s} κ_q of the two halves of each pool ({half} candidates each) correlate "
                  f"{halves:+.2f}, so a full pool's κ_q correlates about {query_level_ceiling(halves):.2f} with "
                  f"the query's own; share of κ_q's variance between users "
                  f"{intraclass_correlation(kappa_q, pool.users):+.2f}")
            table = observables(frame, selector)
            corr = table.corr()["slope"].drop("slope")
            print(f"  {part:10s} ({len(table)} queries): " + ", ".join(f"{k} {v:+.2f}" for k, v in corr.items()))
        pools = {part: Pools.from_frame(frame) for part, frame in frames.items()}
        chosen = chosen_config(pools["validation"], selector.column)
        print("  expected improvement, samples per query to match uniform N = 8 on the test users (validation "
              "| test); the rule uses the spread shrinkage that needs the fewest samples on validation:")
        for strength in PRIOR_STRENGTHS:
            needs = [samples_to_match_uniform(pools["validation"], pools[part], selector.column,
                                              ControllerConfig(prior_strength=strength))
                     for part in ("validation", "test")]
            print(f"    spread shrinkage {strength:4.0f} pseudo-samples: {' | '.join(map(_format, needs))}"
                  + ("  (chosen)" if strength == chosen.prior_strength else ""))
        print("  the rule with the chosen shrinkage, on the test users:")
        for told, need in told_the_pool(pools["validation"], pools["test"], selector.column, chosen).items():
            print(f"    told {told}: {_format(need)}")
        print("    told estimates whose normal scores correlate c with the pool's own values (mean over "
              f"{NOISE_DRAWS} draws of the noise ± its SE):")
        for quality, (kappa_only, both) in told_estimates(pools["validation"], pools["test"], selector.column,
                                                          chosen).items():
            print(f"      c = {quality:4.2f}: κ_q {kappa_only}, κ_q and score spread {both}")
        need = samples_to_match_uniform(pools["validation"], pools["test"], selector.column, replace(chosen, chunk=2))
        print(f"    drawing 2 at a time (a batch), stopping only after each pair: {_format(need)}")
        need = samples_to_match_uniform(pools["validation"], pools["test"], selector.column,
                                        replace(chosen, collapse_tau=0.0))
        print(f"    without the collapse check: {_format(need)}")
        # every selector of the run, each with its own calibration and shrinkage (a flat curve,
        # random's or a zero-shot scorer's that does not order the pools, "reaches" uniform N = 8 at once)
        for other in selectors(pools["test"]):
            if other.model != "random":
                config = chosen_config(pools["validation"], other.column)
                need = samples_to_match_uniform(pools["validation"], pools["test"], other.column, config)
                print(f"    selector {str(other):38s}: {_format(need)} (shrinkage {config.prior_strength:g})")

        if family_of(selector.model) == "features":
            crossfitted_calibration(pipeline, task, policy, selector, frames["test"], pools)


def crossfitted_scores(table: pd.DataFrame, head: str, seed: int) -> pd.DataFrame:
    """``table`` (features of the training and validation users' candidates) with out-of-fold
    ``score`` and ``sd`` columns: each fold of users scored by a model trained on the others."""
    users = np.array(sorted(table.user.unique()))
    fold = dict(zip(users, np.random.default_rng(seed).permutation(len(users)) % FOLDS))
    folds = table.user.map(fold).to_numpy()
    X, y, groups = table[list(FEATURES)].to_numpy(float), table[PRIMARY].to_numpy(), table.query_id.to_numpy()
    mean, sd = np.zeros(len(table)), np.zeros(len(table))
    for k in range(FOLDS):
        model = FAMILIES["features"].new_model(head, seed).fit(X[folds != k], y[folds != k], groups[folds != k])
        out = model.predict(X[folds == k], return_std=True) if model.is_probabilistic else \
            (model.predict(X[folds == k]), np.zeros((folds == k).sum()))
        mean[folds == k], sd[folds == k] = out
    return table.assign(score=mean, sd=sd)


def _drawn_features(pool_arrays: dict, order: np.ndarray) -> np.ndarray:
    """Per query, what the first ``FIRST`` draws of ``order`` show: score spread, mean and max
    score, mean predicted sd, and the drawn candidates' mean of each ``DRAWN`` feature."""
    drawn = {k: np.take_along_axis(v, order[:, :FIRST], axis=1) for k, v in pool_arrays.items()}
    s = drawn["score"]
    return np.column_stack([s.std(axis=1), s.mean(axis=1), s.max(axis=1), drawn["sd"].mean(axis=1),
                            *(drawn[c].mean(axis=1) for c in DRAWN)])


def _as_arrays(frame: pd.DataFrame, score: str, sd: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """``({name: (Q, M)}, utilities, users)`` of a frame of complete pools."""
    frame = frame.sort_values(["query_id", "candidate"])
    q = frame.query_id.nunique()
    grid = lambda column: frame[column].to_numpy(float).reshape(q, -1)  # noqa: E731
    arrays = {"score": grid(score), "sd": grid(sd) if sd in frame else np.zeros((q, len(frame) // q)),
              **{c: grid(c) for c in DRAWN}}
    return arrays, grid(PRIMARY), frame.groupby("query_id", sort=True).user.first().to_numpy()


def samples_needed(scores, utilities, users, gains_of, forced: int = 1, repeats: int = 20, seed: int = 0):
    """Samples per query a threshold rule needs to match uniform N = 8 when its gains for a draw
    order come from ``gains_of(order)`` (``(Q, M)``, as ``improvement_gains`` gives them; the
    first ``forced`` draws are always taken): the package's evaluation of a threshold rule, with
    the gains left open to the probes."""
    q, m = scores.shape
    budgets = tuple(b for b in STUDY_BUDGETS if forced <= b <= m)
    spent, means = [], []
    for budget in budgets:
        def allocate(order):
            gains = gains_of(order)
            gains[:, :forced - 1] = np.inf
            return stop_below(gains, budget_threshold(gains, int(round(budget * q))))

        result = evaluate_allocation(allocate, scores, utilities, repeats, seed)
        spent.append(result["samples_per_query"])
        means.append(result["mean"])
    reference = uniform_reference(scores, utilities, users, seed=0)
    return AllocationCurve("probe", budgets, tuple(spent), tuple(means), (), ()).samples_to_reach(reference)


def _in_order(scores, order):
    return np.take_along_axis(scores, order, axis=1)


def crossfitted_calibration(pipeline: Pipeline, task, policy: str, selector: Selector, test: pd.DataFrame,
                            pools: dict) -> None:
    features = pd.read_parquet(pipeline.folder.features(task.name, policy))
    fit_users = [*pipeline.splits[task.name].train, *pipeline.splits[task.name].validation]
    oof = crossfitted_scores(features[features.user.isin(fit_users)], selector.model.split("/")[0],
                             pipeline.config.seed)
    fit_arrays, fit_utilities, _ = _as_arrays(oof, "score", "sd")
    test = test.merge(features[["query_id", "candidate", *DRAWN]], on=["query_id", "candidate"], validate="1:1")
    test_arrays, test_utilities, test_users = _as_arrays(test, selector.column, f"sd:{selector.model.split('/')[0]}")
    fit_kappa, _ = query_calibration(fit_arrays["score"], fit_utilities)
    test_kappa, _ = query_calibration(test_arrays["score"], test_utilities)
    rng = np.random.default_rng(pipeline.config.seed)
    X = np.vstack([_drawn_features(fit_arrays, np.argsort(rng.random(fit_utilities.shape), axis=1))
                   for _ in range(30)])
    y = np.tile(fit_kappa, 30)
    center, scale = X.mean(axis=0), X.std(axis=0) + 1e-12
    design = np.column_stack([np.ones(len(X)), (X - center) / scale])
    beta = np.linalg.solve(design.T @ design + RIDGE * 30 * np.eye(design.shape[1]), design.T @ y)

    def predicted_kappa(order):
        z = (_drawn_features(test_arrays, order) - center) / scale
        return np.maximum(np.column_stack([np.ones(len(z)), z]) @ beta, 0.0)

    names = ("score spread", "mean score", "max score", "predicted sd", *DRAWN)
    probe_order = np.argsort(np.random.default_rng(1).random(test_utilities.shape), axis=1)
    fit_features = _drawn_features(fit_arrays, np.argsort(np.random.default_rng(1).random(fit_utilities.shape),
                                                          axis=1))
    test_features = _drawn_features(test_arrays, probe_order)
    print(f"  cross-fitted ({FOLDS} folds of {len(fit_users)} users, {len(fit_kappa)} out-of-fold queries): "
          f"correlation of the first {FIRST} draws with κ_q, out-of-fold | test")
    print("    " + ", ".join(f"{n} {np.corrcoef(fit_features[:, i], fit_kappa)[0, 1]:+.2f}|"
                             f"{np.corrcoef(test_features[:, i], test_kappa)[0, 1]:+.2f}"
                             for i, n in enumerate(names)))
    kappa, spread = validation_calibration(pools["validation"][selector.column], pools["validation"][PRIMARY])
    learned = predicted_kappa(probe_order)
    scores = test_arrays["score"]

    def need(kappa_of):
        return _format(samples_needed(scores, test_utilities, test_users,
                                      lambda o: improvement_gains(_in_order(scores, o), kappa_of(o), spread), FIRST))

    correlation = np.corrcoef(learned, test_kappa)[0, 1]
    print(f"    ridge model of κ_q: correlation with the test queries' κ_q {correlation:+.2f}; "
          f"samples to match uniform N = 8 (first {FIRST} always drawn): global κ {need(lambda o: kappa)}, "
          f"learned κ_q {need(predicted_kappa)}")


def _format(samples: float | None) -> str:
    return f"{samples:.2f}" if samples is not None else "not reached"


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/pep-titles")
