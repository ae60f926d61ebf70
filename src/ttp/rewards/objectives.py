"""Training objectives of the reward models, kept apart from the model code and named in one
registry, ``OBJECTIVES``.  Each takes the network's outputs on every training candidate and
returns the loss to minimize; ``outputs`` says how many numbers per candidate it needs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ttp.typed import one_of


@dataclass(frozen=True)
class TrainingData:
    """Standardized features, utilities and, for pairwise objectives, every within-pool pair
    (winner, loser) whose utilities differ."""

    x: torch.Tensor
    y: torch.Tensor
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class Objective:
    name: str
    outputs: int                     # numbers per candidate the network must produce
    probabilistic: bool              # a (mean, sd) prediction, not a score only
    pairwise: bool                   # needs the within-pool pairs
    loss: Callable[..., torch.Tensor]


def mean_squared_error(out: torch.Tensor, data: TrainingData, **_) -> torch.Tensor:
    return ((out[:, 0] - data.y) ** 2).mean()


def bradley_terry(out: torch.Tensor, data: TrainingData, **_) -> torch.Tensor:
    win, lose = data.pairs
    if not len(win):                 # no pool tells two candidates apart: nothing to learn, not NaN
        return out.sum() * 0.0
    return nn.functional.softplus(-(out[win, 0] - out[lose, 0])).mean()


def gaussian_variance(raw: torch.Tensor, floor: float) -> torch.Tensor:
    """The variance head's output made positive: softplus plus a floor that keeps the NLL finite."""
    return nn.functional.softplus(raw) + floor


def gaussian_nll(out: torch.Tensor, data: TrainingData, variance_floor: float = 1e-4,
                 beta: float = 0.0, **_) -> torch.Tensor:
    """½ log s² + (y − μ)² / (2 s²); with ``beta > 0`` each term is weighted by s^(2β) (β-NLL)."""
    var = gaussian_variance(out[:, 1], variance_floor)
    nll = 0.5 * (torch.log(var) + (data.y - out[:, 0]) ** 2 / var)
    if beta > 0:
        nll = nll * var.detach() ** beta
    return nll.mean()


def thurstone(out: torch.Tensor, data: TrainingData, variance_floor: float = 1e-4, **_) -> torch.Tensor:
    """The pairwise Gaussian likelihood: each candidate's utility is N(μ, s²), so the winner of a
    pair wins with probability Φ((μ_w − μ_l) / √(s_w² + s_l²)) (Thurstone's case III; PURM's
    generalization of Bradley–Terry).  Its negative log, averaged over the pairs."""
    win, lose = data.pairs
    if not len(win):
        return out.sum() * 0.0
    var = gaussian_variance(out[:, 1], variance_floor)
    return -torch.special.log_ndtr((out[win, 0] - out[lose, 0]) / torch.sqrt(var[win] + var[lose])).mean()


OBJECTIVES = {o.name: o for o in (
    Objective("pointwise", 1, False, False, mean_squared_error),
    Objective("bradley_terry", 1, False, True, bradley_terry),
    Objective("probabilistic", 2, True, False, gaussian_nll),
    Objective("thurstone", 2, True, True, thurstone),
)}
ObjectiveName = one_of(OBJECTIVES)


def within_pool_pairs(y: np.ndarray, groups: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (winner, loser) with different utilities inside each pool."""
    win, lose = [], []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        a, b = np.meshgrid(idx, idx, indexing="ij")
        better = y[a] > y[b]
        win.append(a[better])
        lose.append(b[better])
    return torch.as_tensor(np.concatenate(win)), torch.as_tensor(np.concatenate(lose))
