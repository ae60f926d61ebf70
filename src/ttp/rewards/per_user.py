"""A global reward model with a per-user affine of its output, fitted on each user's own pools.

``PerUserRewardModel(kind=...).fit(X, y, groups, ...)`` reads a ``user`` column beside the
features: it trains one ``RewardModel`` on every row, then, for each user, the slope and
intercept of the global score that best explain that user's utilities within their pools
(ridge toward the global slope with ``prior_pools`` pools' worth of weight).  Only the slope
changes a ranking, and a negative one reverses it: a user whose taste runs against everyone
else's is ranked by it, where a per-user bias alone would change nothing within a pool.  Two
numbers per user are what four history pools of eight candidates can pin down; a last layer
of 32 weights per user is not.  A user without pools of their own keeps the global model.

Saved as data only: the global model's folder (``global/``) and ``per_user.json``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ttp.analysis.stats import group_index
from ttp.files import read_json, write_json_atomic
from ttp.rewards.models import ModelFileError, RewardConfig, RewardModel

USER = "user"
PER_USER = "per_user.json"


def _centred(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    _, inverse = group_index(groups)
    means = np.bincount(inverse, weights=values) / np.bincount(inverse)
    return values - means[inverse]


class PerUserRewardModel:
    """``RewardModel`` then one ``(slope, intercept)`` per user; ``X`` holds a ``user`` column."""

    def __init__(self, config: RewardConfig | None = None, prior_pools: float = 4.0, **overrides):
        self.config = config or RewardConfig(**overrides)
        self.prior_pools = prior_pools

    @property
    def is_probabilistic(self) -> bool:
        return RewardModel(self.config).is_probabilistic

    @staticmethod
    def _split(X) -> tuple[pd.DataFrame, np.ndarray]:
        if not isinstance(X, pd.DataFrame) or USER not in X.columns:
            raise ValueError(f"a per-user reward model reads a DataFrame with a {USER!r} column beside the features")
        return X.drop(columns=USER), X[USER].astype(str).to_numpy()

    def fit(self, X, y, groups, X_val=None, y_val=None, groups_val=None) -> "PerUserRewardModel":
        features, users = self._split(X)
        val = self._split(X_val)[0] if X_val is not None else None
        self.global_ = RewardModel(self.config).fit(features, y, groups, val, y_val, groups_val)
        raw = self.global_.predict(features)
        score = _centred(raw, np.asarray(groups))
        utility = _centred(np.asarray(y, dtype=float), np.asarray(groups))
        slope = float(score @ utility / max(score @ score, 1e-12))
        # a pool's worth of evidence: the median pool's sum of squared centred scores
        _, inverse = group_index(groups)
        weight = self.prior_pools * float(np.median(np.bincount(inverse, weights=score ** 2)))
        self.per_user_ = {}
        for user in np.unique(users):
            mine = users == user
            gain = (score[mine] @ utility[mine] + weight * slope) / (score[mine] @ score[mine] + weight)
            factor = gain / slope if slope else 1.0
            # the user's mean score is kept: only the spread within their pools is refitted
            self.per_user_[str(user)] = (float(factor), float((1 - factor) * raw[mine].mean()))
        return self

    def _affine(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pairs = np.array([self.per_user_.get(str(u), (1.0, 0.0)) for u in users]).reshape(-1, 2)
        return pairs[:, 0], pairs[:, 1]

    def predict(self, X, return_std: bool = False):
        features, users = self._split(X)
        factor, shift = self._affine(users)
        if not return_std:
            return factor * self.global_.predict(features) + shift
        mean, sd = self.global_.predict(features, return_std=True)
        return factor * mean + shift, np.abs(factor) * sd

    def save(self, path: str | Path, inputs: dict | None = None) -> None:
        path = Path(path)
        self.global_.save(path / "global", inputs)
        write_json_atomic(path / PER_USER, {"prior_pools": self.prior_pools,
                                            "per_user": {u: list(v) for u, v in self.per_user_.items()}})

    @staticmethod
    def is_saved(path: str | Path) -> bool:
        return (Path(path) / PER_USER).exists() and RewardModel.is_saved(Path(path) / "global")

    @classmethod
    def load(cls, path: str | Path) -> "PerUserRewardModel":
        path = Path(path)
        if not cls.is_saved(path):
            raise ModelFileError(f"{path}: no saved per-user reward model ({PER_USER} and global/); train one first")
        settings = read_json(path / PER_USER)
        try:
            model = cls(prior_pools=float(settings["prior_pools"]))
            model.global_ = RewardModel.load(path / "global")
            model.config = model.global_.config
            model.per_user_ = {str(u): (float(a), float(b)) for u, (a, b) in settings["per_user"].items()}
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFileError(f"{path / PER_USER}: not a per-user reward model ({type(err).__name__}: {err}); "
                                 f"retrain it (`ttp rewards RUN`)") from None
        return model
