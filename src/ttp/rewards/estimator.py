"""What every reward model of every family is: ``Estimator``, the small protocol the pipeline
and the server call, and ``train_early_stopped``, the one training loop's stopping rule; and
``TunedTextModel``, the half that the models tuning a text-reading network share.

Every model stops on the same criterion, the mean within-pool correlation of score and utility
on validation pools (the ``ρ̄`` of the scaling law), so that no model is favoured by its own loss."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from ttp.rewards.objectives import OBJECTIVES, gaussian_variance

MIN_IMPROVEMENT = 1e-6   # a validation ρ̄ must beat the best by this much to count as better


@runtime_checkable
class Estimator(Protocol):
    """``fit`` on training pools with early stopping on validation pools, ``predict`` the
    selection score (``return_std=True``: a probabilistic model's ``(mean, sd)``), and a saved
    form that is data only."""

    is_probabilistic: bool

    def fit(self, X, y, groups, X_val=None, y_val=None, groups_val=None) -> "Estimator": ...

    def predict(self, X, return_std: bool = False): ...

    def save(self, path: str | Path, inputs: dict | None = None) -> None: ...

    @classmethod
    def load(cls, path: str | Path) -> "Estimator": ...

    @staticmethod
    def is_saved(path: str | Path) -> bool: ...


class TunedTextModel:
    """What the models that tune a network reading text share (``cross_encoder``, ``lm``): the
    objective their config's ``kind`` names, training pools checked and encoded (``encode``),
    and ``predict`` from ``_predicted(X)``, the network's outputs as an array."""

    what = "reward model"      # how messages name the model

    @property
    def objective(self):
        return OBJECTIVES[self.config.kind]

    @property
    def is_probabilistic(self) -> bool:
        return self.objective.probabilistic

    def _training_pools(self, X, y, groups, X_val, y_val, groups_val) -> tuple:
        """``(X, y, groups, X_val, y_val, groups_val)`` encoded and checked; the training pools
        stand in for validation pools not given."""
        X, y, groups = self.encode(X), np.asarray(y, dtype=np.float32), np.asarray(groups)
        if len(y) != len(X) or len(groups) != len(X) or not np.isfinite(y).all():
            raise ValueError("training pools: need one finite utility and one pool id per candidate")
        if X_val is None:
            return X, y, groups, X, y, groups
        return X, y, groups, self.encode(X_val), np.asarray(y_val, dtype=np.float32), np.asarray(groups_val)

    def predict(self, X, return_std: bool = False):
        out = self._predicted(X)
        if not return_std:
            return out[:, 0]
        if not self.is_probabilistic:
            raise TypeError(f"a {self.config.kind} {self.what} gives scores only; call predict(X) without return_std")
        return out[:, 0], np.sqrt(gaussian_variance(torch.as_tensor(out[:, 1]), self.config.variance_floor).numpy())


def train_early_stopped(module: nn.Module, run_epoch: Callable[[int], None], validation_rho: Callable[[], float],
                        max_epochs: int, patience: int) -> float:
    """Run ``run_epoch(epoch)`` until ``patience`` epochs in a row bring no better
    ``validation_rho()``; leave ``module`` at its best epoch's weights, in eval mode, and
    return that ρ̄ (``-inf`` where it was never finite: the last epoch's weights stay)."""
    best, best_state, since_best = -np.inf, None, 0
    for epoch in range(max_epochs):
        module.train()
        run_epoch(epoch)
        module.eval()
        rho = validation_rho()
        if rho > best + MIN_IMPROVEMENT:
            best, since_best = rho, 0
            best_state = {k: v.clone() for k, v in module.state_dict().items()}
        else:
            since_best += 1
            if since_best >= patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return float(best)
