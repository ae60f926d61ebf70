"""The allocation study: every allocation policy and the oracle-informed bound at equal
average budgets on held-out pools, with bootstrap bands (of each utility, and of the samples a
policy needs to reach uniform N = 8), and the choice of the online rule.
``allocation_study`` is the entry point; ``AllocationStudy`` is what ``allocation.json`` holds."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from ttp.analysis.bon import user_bootstrap
from ttp.analysis.control import (
    ALLOCATION_POLICIES,
    REFERENCES,
    ControllerConfig,
    evaluate_policy,
    validation_calibration,
)
from ttp.analysis.stats import bootstrap_draws, group_index
from ttp.files import number, read_records

STUDY_BUDGETS = (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32)
REFERENCE_BUDGET = 8   # policies are compared by the samples they need to match uniform N = 8
# how strongly the online rule may shrink a query's score spread toward the typical one, in
# pseudo-draws: chosen on validation pools, as the rule itself is
PRIOR_STRENGTHS = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def samples_to_reach(spent, means, target: float) -> float | None:
    """Fewest average samples per query at which a curve of ``means`` at ``spent`` samples
    reaches ``target`` (linear interpolation between measured budgets); None if it never does."""
    for i, value in enumerate(means):
        if value >= target - 1e-12:
            if i == 0:
                return float(spent[0])
            frac = (target - means[i - 1]) / (value - means[i - 1])
            return float(spent[i - 1] + frac * (spent[i] - spent[i - 1]))
    return None


def samples_to_reach_bands(per_query: dict, budgets: tuple[float, ...], users: np.ndarray, n_boot: int = 1000,
                           level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile band, over resampled users, of the samples each policy needs to reach uniform
    N = 8.  ``per_query`` maps a policy to ``(utility, spent)``, each ``(budgets, queries)``.
    Each resample recomputes every policy's utility and spend and the uniform reference on the
    same users, so the band is of the paired comparison; ``inf`` where a resample's curve never
    reaches the reference."""
    user_ids, inverse = group_index(users)
    copies = bootstrap_draws(len(user_ids), n_boot, seed)[:, inverse]   # (n_boot, queries)
    total = copies.sum(axis=1, keepdims=True)
    curves = {p: (copies @ u.T / total, copies @ s.T / total) for p, (u, s) in per_query.items()}
    reference = curves["uniform"][0][:, budgets.index(REFERENCE_BUDGET)]
    alpha = round((1 - level) / 2, 12)   # so that 1000 resamples at 95% cut at the 25th, not the 26th
    bands = {}
    for policy, (means, spent) in curves.items():
        needs = [samples_to_reach(spent[k], means[k], reference[k]) for k in range(n_boot)]
        needs = np.array([np.inf if need is None else need for need in needs])
        # order statistics, not interpolation, since some resamples may never reach (inf)
        bands[policy] = tuple(float(v) for v in np.quantile(needs, [alpha, 1 - alpha], method="inverted_cdf"))
    return bands


class OnlineChoice(NamedTuple):
    """The online rule chosen on validation pools, and how strongly it shrinks the score spread
    of a query's draws toward the typical one (``ControllerConfig.prior_strength``)."""

    rule: str
    prior_strength: float


class OnlineRule(NamedTuple):
    """What ``ttp generate`` and the server need to stop sampling with one selector: the rule
    and shrinkage chosen on validation pools, and the calibration measured there."""

    rule: str
    prior_strength: float
    kappa: float
    dataset_spread: float

    @classmethod
    def choose(cls, scores: np.ndarray, utilities: np.ndarray, users: np.ndarray,
               config: ControllerConfig = ControllerConfig(), seed: int = 0,
               chosen: OnlineChoice | None = None) -> "OnlineRule":
        """Calibrate on validation ``(scores, utilities, users)`` and choose the rule there
        (``chosen``: a choice already made on these pools, by the allocation study)."""
        kappa, spread = validation_calibration(scores, utilities)
        choice = chosen or choose_online_rule(scores, utilities, users, kappa, spread, config, seed)
        return cls(choice.rule, float(choice.prior_strength), float(kappa), float(spread))


@dataclass(frozen=True)
class AllocationCurve:
    """One policy's utility at each average budget, with a bootstrap band over users."""

    policy: str
    budgets: tuple[float, ...]
    samples_per_query: tuple[float, ...]   # what the policy really spent at each budget
    mean: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def at(self, budget: float) -> tuple[float, float, float, float] | None:
        """``(mean, low, high, samples spent)`` at ``budget``; None where it was not measured."""
        if budget not in self.budgets:
            return None
        i = self.budgets.index(budget)
        return self.mean[i], self.low[i], self.high[i], self.samples_per_query[i]

    def samples_to_reach(self, target: float | None) -> float | None:
        return None if target is None else samples_to_reach(self.samples_per_query, self.mean, target)

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict) -> "AllocationCurve":
        return cls(data["policy"], *(tuple(number(v, k) for v in data[k])
                                     for k in ("budgets", "samples_per_query", "mean", "low", "high")))


@dataclass(frozen=True)
class AllocationStudy:
    """Every allocation policy at equal average budgets on one set of test pools."""

    selector: str
    kappa: float
    queries: int
    curves: dict = field(default_factory=dict)   # policy name -> AllocationCurve
    spread: float = 0.0                          # typical within-query score spread (validation)
    online_rule: str = "uniform"                 # what `ttp generate` and the server use
    reference_bands: dict = field(default_factory=dict)   # policy -> 95% band of samples_to_reach_reference
    # the expected-improvement rule's spread shrinkage, chosen on validation pools (a study
    # written before it was chosen used the controller's default)
    prior_strength: float = ControllerConfig().prior_strength

    @property
    def online_choice(self) -> OnlineChoice:
        return OnlineChoice(self.online_rule, self.prior_strength)

    @property
    def uniform_reference(self) -> float | None:
        """Uniform N = 8's utility, the level each policy's sample count is measured against."""
        point = self.curves["uniform"].at(REFERENCE_BUDGET)
        return point[0] if point else None

    def samples_to_reach_reference(self, policy: str) -> float | None:
        return self.curves[policy].samples_to_reach(self.uniform_reference)

    def to_json(self) -> dict:
        return {"selector": self.selector, "kappa": self.kappa, "queries": self.queries, "spread": self.spread,
                "online_rule": self.online_rule, "prior_strength": self.prior_strength,
                "reference_budget": REFERENCE_BUDGET, "uniform_reference": self.uniform_reference,
                "samples_to_reach_reference": {p: self.samples_to_reach_reference(p) for p in self.curves},
                "samples_to_reach_reference_band": {p: [None if math.isinf(v) else v for v in band]
                                                    for p, band in self.reference_bands.items()},
                "curves": {p: c.to_json() for p, c in self.curves.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "AllocationStudy":
        return cls(data["selector"], number(data["kappa"], "kappa"), number(data["queries"], "queries"),
                   read_records(data["curves"], "curve", lambda policy, c: AllocationCurve.from_json(c)),
                   number(data.get("spread", 0.0), "spread"), data.get("online_rule", "uniform"),
                   {p: _band_from_json(band) for p, band in data.get("samples_to_reach_reference_band", {}).items()},
                   _positive(data.get("prior_strength", ControllerConfig().prior_strength), "prior_strength"))


def _positive(value, name: str) -> float:
    if number(value, name) <= 0:
        raise ValueError(f"field {name!r} is {value!r}, not a positive number")
    return value


def _band_from_json(band) -> tuple[float, float]:
    # JSON has no infinity: null stands for it
    low, high = (math.inf if v is None else float(number(v, "samples_to_reach_reference_band")) for v in band)
    return low, high


def uniform_reference(scores, utilities, users, seed: int) -> float:
    """Uniform N = 8's mean utility on these pools: the level the rules' samples are counted to."""
    return evaluate_policy("uniform", scores, utilities, users, REFERENCE_BUDGET, 1.0, seed=seed)["mean"]


def samples_to_reach_uniform(scores, utilities, users, kappa: float, spread: float, config: ControllerConfig,
                             seed: int, reference: float) -> float | None:
    """The samples the expected-improvement rule needs to reach uniform N = 8 on these pools
    (``reference``, from ``uniform_reference``)."""
    budgets = tuple(b for b in STUDY_BUDGETS if b <= utilities.shape[1])
    rows = [evaluate_policy("expected_improvement", scores, utilities, users, b, kappa, config, seed=seed,
                            spread_prior=spread) for b in budgets]
    return samples_to_reach([r["samples_per_query"] for r in rows], [r["mean"] for r in rows], reference)


def choose_online_rule(scores: np.ndarray, utilities: np.ndarray, users: np.ndarray, kappa: float, spread: float,
                       config: ControllerConfig = ControllerConfig(), seed: int = 0) -> OnlineChoice:
    """The online rule for ``ttp generate`` and the server, chosen on validation pools: the
    expected-improvement rule with the spread shrinkage of ``PRIOR_STRENGTHS`` that reaches
    uniform N = 8 with the fewest samples, where that is fewer than 8; else uniform N."""
    if REFERENCE_BUDGET > utilities.shape[1]:
        return OnlineChoice("uniform", config.prior_strength)
    reference = uniform_reference(scores, utilities, users, seed)
    needs = {strength: samples_to_reach_uniform(scores, utilities, users, kappa, spread,
                                                replace(config, prior_strength=strength), seed, reference)
             for strength in PRIOR_STRENGTHS}
    needs = {strength: need for strength, need in needs.items() if need is not None}
    if not needs:
        return OnlineChoice("uniform", config.prior_strength)
    best = min(needs, key=needs.get)
    return OnlineChoice("expected_improvement" if needs[best] < REFERENCE_BUDGET else "uniform", best)


def allocation_study(selector: str, validation: tuple[np.ndarray, np.ndarray],
                     test: tuple[np.ndarray, np.ndarray, np.ndarray], config: ControllerConfig = ControllerConfig(),
                     n_boot: int = 1000, seed: int = 0, validation_users: np.ndarray | None = None) -> AllocationStudy:
    """Calibrate κ and the typical score spread on validation ``(scores, utilities)``, then run
    every policy and the oracle bound on the test ``(scores, utilities, users)`` at each budget
    of ``STUDY_BUDGETS`` that fits the pools.  With ``validation_users``, also choose the online
    rule and its spread shrinkage (``choose_online_rule``) on the validation pools themselves; the
    study's expected-improvement rule is then the one chosen."""
    kappa, spread = validation_calibration(*validation)
    choice = OnlineChoice("uniform", config.prior_strength)
    if validation_users is not None:
        choice = choose_online_rule(*validation, validation_users, kappa, spread, config, seed)
    scores, utilities, users = test
    budgets = tuple(b for b in STUDY_BUDGETS if b <= utilities.shape[1])
    curves, per_query = {}, {}
    for policy in (*ALLOCATION_POLICIES, *REFERENCES):
        policy_config = replace(config, prior_strength=choice.prior_strength) \
            if policy == "expected_improvement" else config
        rows = [evaluate_policy(policy, scores, utilities, users, b, kappa, policy_config, seed=seed,
                                spread_prior=spread) for b in budgets]
        bands = [user_bootstrap(r["per_query"][:, None], users, n_boot, seed=seed) for r in rows]
        curves[policy] = AllocationCurve(policy, budgets, tuple(r["samples_per_query"] for r in rows),
                                         *(tuple(float(getattr(b, k)[0]) for b in bands)
                                           for k in ("mean", "low", "high")))
        per_query[policy] = tuple(np.array([r[k] for r in rows]) for k in ("per_query", "spent_per_query"))
    reference_bands = {}
    if REFERENCE_BUDGET in budgets:
        reference_bands = samples_to_reach_bands(per_query, budgets, users, n_boot, seed=seed)
    return AllocationStudy(selector, kappa, int(len(utilities)), curves, spread, choice.rule, reference_bands,
                           choice.prior_strength)


