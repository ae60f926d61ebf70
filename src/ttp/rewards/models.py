"""Personalized reward models with one interface (scikit-learn style).

``fit(X, y, groups, X_val, y_val, groups_val)`` learns from candidate pools of training
users (``groups`` names each candidate's pool) and stops early on validation users;
``predict(X)`` gives the selection score; probabilistic models also give
``predict_dist(X) -> (mean, sd)``.  Every model is a small MLP in PyTorch on standardized
features; all are early-stopped by the same criterion, the mean within-pool correlation of
score and utility on validation pools (the ``ρ̄`` of the scaling law), so the comparison
is fair.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch import nn

REWARD_KINDS = ("pointwise", "bradley_terry", "probabilistic", "ensemble", "constant")
SELECTION_RULES = ("mean", "lcb", "p_improve")


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; nothing is saved, earlier results stay as they were."""


@dataclass
class RewardConfig:
    """How to train one reward model."""

    kind: str = "pointwise"          # pointwise | bradley_terry | probabilistic | ensemble | constant
    hidden: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_epochs: int = 300
    patience: int = 30
    seed: int = 0
    variance_floor: float = 1e-4     # probabilistic: s^2 >= floor keeps the NLL finite
    beta: float = 0.0                # probabilistic: beta-NLL weight (0 = plain Gaussian NLL)
    members: int = 5                 # ensemble size

    def __post_init__(self):
        if self.kind not in REWARD_KINDS:
            raise ValueError(f"kind must be one of {sorted(REWARD_KINDS)}, got {self.kind!r}")


def _check(X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None, where: str):
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"{where}: features must be a 2-D (candidates, features) array, got shape {X.shape}")
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if bad.size:
        raise ValueError(f"{where}: features of {bad.size} candidates are NaN or infinite (first row {bad[0]}); "
                         f"recompute the features or drop those pools")
    if y is not None:
        y = np.asarray(y, dtype=np.float32)
        if y.shape != (len(X),) or not np.isfinite(y).all():
            raise ValueError(f"{where}: need one finite utility per candidate; compute utilities first")
    if groups is not None and len(groups) != len(X):
        raise ValueError(f"{where}: need one pool id per candidate")
    return X, y


def within_pool_pearson(scores: np.ndarray, utilities: np.ndarray, groups: np.ndarray) -> float:
    """Mean over pools of the correlation of score and utility (pools with no spread count 0)."""
    values = []
    for g in np.unique(groups):
        s, u = scores[groups == g], utilities[groups == g]
        values.append(0.0 if s.std() < 1e-12 or u.std() < 1e-12 else float(np.corrcoef(s, u)[0, 1]))
    return float(np.mean(values))


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Linear(hidden, n_out))


def _pair_index(y: np.ndarray, groups: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (winner, loser) with different utilities inside each pool."""
    win, lose = [], []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        a, b = np.meshgrid(idx, idx, indexing="ij")
        better = y[a] > y[b]
        win.append(a[better])
        lose.append(b[better])
    return torch.as_tensor(np.concatenate(win)), torch.as_tensor(np.concatenate(lose))


class RewardModel:
    """One reward model; ``kind`` picks the objective (see ``RewardConfig``)."""

    def __init__(self, config: RewardConfig | None = None, **overrides):
        self.config = config or RewardConfig(**overrides)
        self.networks: list[nn.Module] = []
        self.feature_mean = self.feature_sd = None
        self.history: list[dict] = []

    @property
    def is_probabilistic(self) -> bool:
        return self.config.kind in ("probabilistic", "ensemble")

    def _standardize(self, X: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((X - self.feature_mean) / self.feature_sd, dtype=torch.float32)

    def fit(self, X, y, groups, X_val=None, y_val=None, groups_val=None) -> "RewardModel":
        X, y = _check(X, y, groups, "training pools")
        groups = np.asarray(groups)
        if X_val is None:
            X_val, y_val, groups_val = X, y, groups
        X_val, y_val = _check(X_val, y_val, groups_val, "validation pools")
        self.feature_mean = X.mean(axis=0)
        self.feature_sd = np.where(X.std(axis=0) > 1e-8, X.std(axis=0), 1.0)
        self.networks, self.history = [], []
        if self.config.kind == "constant":
            return self
        n_members = self.config.members if self.config.kind == "ensemble" else 1
        for member in range(n_members):
            self.networks.append(self._train_one(X, y, groups, X_val, y_val, np.asarray(groups_val),
                                                 seed=self.config.seed + member))
        return self

    def _train_one(self, X, y, groups, X_val, y_val, groups_val, seed: int) -> nn.Module:
        cfg = self.config
        torch.manual_seed(seed)
        n_out = 2 if cfg.kind == "probabilistic" else 1
        net = _mlp(X.shape[1], cfg.hidden, n_out)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        xt, yt = self._standardize(X), torch.as_tensor(y)
        xv = self._standardize(X_val)
        pairs = _pair_index(y, groups) if cfg.kind == "bradley_terry" else None
        best, best_state, since_best = -np.inf, None, 0
        for epoch in range(cfg.max_epochs):
            net.train()
            opt.zero_grad()
            loss = self._loss(net(xt), yt, pairs)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"{cfg.kind} reward model: loss became {loss.item()} at epoch {epoch}; "
                                       f"lower lr (now {cfg.lr}) or raise variance_floor")
            loss.backward()
            opt.step()
            net.eval()
            with torch.no_grad():
                val_score = net(xv)[:, 0].numpy()
            rho = within_pool_pearson(val_score, y_val, groups_val)
            self.history.append({"member_seed": seed, "epoch": epoch, "loss": loss.item(), "val_rho": rho})
            if rho > best + 1e-6:
                best, since_best = rho, 0
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                since_best += 1
                if since_best >= cfg.patience:
                    break
        net.load_state_dict(best_state)
        net.eval()
        return net

    def _loss(self, out: torch.Tensor, y: torch.Tensor, pairs) -> torch.Tensor:
        cfg = self.config
        if cfg.kind == "bradley_terry":
            win, lose = pairs
            return nn.functional.softplus(-(out[win, 0] - out[lose, 0])).mean()
        if cfg.kind == "probabilistic":
            mean = out[:, 0]
            var = nn.functional.softplus(out[:, 1]) + cfg.variance_floor
            nll = 0.5 * (torch.log(var) + (y - mean) ** 2 / var)
            if cfg.beta > 0:
                nll = nll * var.detach() ** cfg.beta
            return nll.mean()
        return ((out[:, 0] - y) ** 2).mean()

    def _outputs(self, X) -> np.ndarray:
        if self.feature_mean is None:
            raise RuntimeError("this reward model is not fitted yet; call fit() or load() first")
        X, _ = _check(X, None, None, "features to score")
        if self.config.kind == "constant":
            return np.zeros((1, len(X), 2))
        with torch.no_grad():
            return np.stack([net(self._standardize(X)).numpy() for net in self.networks])

    def predict_dist(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Predicted utility mean and standard deviation for each candidate."""
        out = self._outputs(X)
        if self.config.kind == "probabilistic":
            var = np.logaddexp(0, out[0, :, 1]) + self.config.variance_floor  # softplus, as in training
            return out[0, :, 0], np.sqrt(var)
        if self.config.kind == "ensemble":
            return out[:, :, 0].mean(axis=0), out[:, :, 0].std(axis=0)
        raise TypeError(f"a {self.config.kind} reward model gives scores only; use predict()")

    def predict(self, X) -> np.ndarray:
        """The selection score (the predicted mean for probabilistic models)."""
        out = self._outputs(X)
        return out[:, :, 0].mean(axis=0)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / "model.pt.tmp"
        torch.save({"states": [n.state_dict() for n in self.networks],
                    "feature_mean": self.feature_mean, "feature_sd": self.feature_sd}, tmp)
        tmp.replace(path / "model.pt")
        (path / "config.json").write_text(json.dumps(asdict(self.config), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "RewardModel":
        path = Path(path)
        model = cls(RewardConfig(**json.loads((path / "config.json").read_text())))
        blob = torch.load(path / "model.pt", weights_only=False)
        model.feature_mean, model.feature_sd = blob["feature_mean"], blob["feature_sd"]
        n_out = 2 if model.config.kind == "probabilistic" else 1
        for state in blob["states"]:
            net = _mlp(len(model.feature_mean), model.config.hidden, n_out)
            net.load_state_dict(state)
            net.eval()
            model.networks.append(net)
        return model



def selection_scores(model: RewardModel, X, groups, rule: str = "mean", kappa: float = 1.0) -> np.ndarray:
    """Scores that Best-of-N maximizes, by selection rule.

    ``mean``: the predicted mean.  ``lcb``: mean − κ·sd, distrusting candidates the model is
    unsure about.  ``p_improve``: Φ((mean − b)/sd), the probability of beating the user's
    typical output for this query, ``b`` being the pool's average predicted mean.
    """
    if rule not in SELECTION_RULES:
        raise ValueError(f"rule must be one of {SELECTION_RULES}, got {rule!r}")
    if rule == "mean" or not model.is_probabilistic:
        if rule != "mean":
            raise ValueError(f"rule {rule!r} needs a probabilistic reward model, not {model.config.kind}")
        return model.predict(X)
    mean, sd = model.predict_dist(X)
    if rule == "lcb":
        return mean - kappa * sd
    groups = np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    baseline = np.bincount(inverse, weights=mean) / np.bincount(inverse)
    return stats.norm.cdf((mean - baseline[inverse]) / np.maximum(sd, 1e-9))
