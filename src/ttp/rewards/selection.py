"""Selection rules: what Best-of-N maximizes, given a reward model.  A ``Selector`` names one
(reward model, rule) pair of a run, e.g. ``probabilistic/lcb``; score-only models have no rule.

``mean``: the predicted mean.  ``lcb``: mean − κ·sd, distrusting candidates the model is unsure
about.  ``p_improve``: Φ((mean − b)/sd), the probability of beating the user's typical output
for this query, ``b`` being the pool's average predicted mean."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from ttp.analysis.stats import group_index
from ttp.rewards.models import RewardModel

SELECTION_RULES = ("mean", "lcb", "p_improve")
RANDOM = "random"   # the constant reward model's selector: random selection


@dataclass(frozen=True)
class Selector:
    model: str
    rule: str | None = None

    def __post_init__(self):
        if self.rule is not None and self.rule not in SELECTION_RULES:
            raise ValueError(f"rule must be one of {SELECTION_RULES}, got {self.rule!r}")

    def __str__(self) -> str:
        return self.model if self.rule is None else f"{self.model}/{self.rule}"

    @property
    def column(self) -> str:
        """The score column of this selector in a run's score tables."""
        return f"score:{self}"

    @classmethod
    def parse(cls, text: str) -> "Selector":
        model, _, rule = str(text).partition("/")
        return cls(model, rule or None)

    @classmethod
    def from_column(cls, column: str) -> "Selector":
        return cls.parse(column.split(":", 1)[1])


def selectors_of(model_name: str, model: RewardModel) -> list[Selector]:
    """Every selector a trained model offers (the constant model is ``random``)."""
    if model.config.kind == "constant":
        return [Selector(RANDOM)]
    if model.is_probabilistic:
        return [Selector(model_name, rule) for rule in SELECTION_RULES]
    return [Selector(model_name)]


def selection_scores(model: RewardModel, X, groups, rule: str = "mean", kappa: float = 1.0) -> np.ndarray:
    """Scores that Best-of-N maximizes under ``rule``; ``groups`` names each candidate's pool."""
    if rule not in SELECTION_RULES:
        raise ValueError(f"rule must be one of {SELECTION_RULES}, got {rule!r}")
    if rule == "mean":
        return model.predict(X)
    if not model.is_probabilistic:
        raise ValueError(f"rule {rule!r} needs a probabilistic reward model, not {model.config.kind}")
    return rule_scores(*model.predict(X, return_std=True), groups, rule, kappa)


def rule_scores(mean: np.ndarray, sd: np.ndarray, groups, rule: str, kappa: float = 1.0) -> np.ndarray:
    """``rule`` applied to predictions already made: a predicted ``mean`` and ``sd`` per candidate."""
    if rule == "mean":
        return mean
    if rule == "lcb":
        return mean - kappa * sd
    _, inverse = group_index(groups)
    baseline = np.bincount(inverse, weights=mean) / np.bincount(inverse)
    return stats.norm.cdf((mean - baseline[inverse]) / np.maximum(sd, 1e-9))
