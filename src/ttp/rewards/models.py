"""Personalized reward models as scikit-learn-style estimators.

``RewardModel(kind=...).fit(X, y, groups, X_val, y_val, groups_val)`` learns from the candidate
pools of training users (``groups`` names each candidate's pool) and stops early on validation
users; ``predict(X)`` gives the selection score, and ``predict(X, return_std=True)`` a
probabilistic model's ``(mean, sd)``.  Fitted attributes end in ``_``.  Every model is a small
MLP on standardized features; the objective comes from ``ttp.rewards.objectives``, the early
stopping from ``ttp.rewards.estimator``.

A saved model is data only: ``weights.safetensors`` (tensors) and ``model.json`` (settings and
feature names); loading never unpickles anything.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from ttp.analysis.stats import within_pool_correlation
from ttp.files import read_json, write_bytes_atomic, write_json_atomic
from ttp.rewards.estimator import train_early_stopped
from ttp.rewards.objectives import OBJECTIVES, TrainingData, gaussian_variance, within_pool_pairs
from ttp.typed import Settings, one_of

# each reward model: the objective it trains and whether it is a deep ensemble of that objective
REWARD_MODELS = {"pointwise": "pointwise", "bradley_terry": "bradley_terry", "probabilistic": "probabilistic",
                 "ensemble": "pointwise", "constant": None}
RewardModelName = one_of(REWARD_MODELS)
WEIGHTS, SETTINGS = "weights.safetensors", "model.json"
FORMAT = 1


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; nothing is saved, earlier results stay as they were."""


class ModelFileError(ValueError):
    """A saved reward model cannot be loaded; the message names the file and what to do."""


class RewardConfig(Settings):
    """How to train one reward model."""

    kind: RewardModelName = "pointwise"
    hidden: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    max_epochs: int = Field(300, ge=1)
    patience: int = Field(30, ge=1)
    seed: int = 0
    variance_floor: float = Field(1e-4, gt=0)     # probabilistic: s^2 >= floor keeps the NLL finite
    beta: float = Field(0.0, ge=0, le=1)          # probabilistic: beta-NLL weight (0 = plain Gaussian NLL)
    members: int = Field(5, ge=1)                 # ensemble size


def _features(X, names: list[str] | None, where: str) -> tuple[np.ndarray, list[str] | None]:
    """Validated float32 features; a DataFrame is reordered to ``names`` when those are known."""
    columns = None
    if hasattr(X, "columns"):
        columns = [str(c) for c in X.columns]
        if names is not None:
            missing = [n for n in names if n not in columns]
            if missing:
                raise ValueError(f"{where}: missing feature columns {missing}; the model was fitted on {names}")
            X = X[names]
            columns = list(names)
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"{where}: features must be a 2-D (candidates, features) array, got shape {X.shape}")
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if bad.size:
        raise ValueError(f"{where}: features of {bad.size} candidates are NaN or infinite (first row {bad[0]}); "
                         f"recompute the features or drop those pools")
    return X, columns


def _targets(y, groups, n: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float32)
    if y.shape != (n,) or not np.isfinite(y).all():
        raise ValueError(f"{where}: need one finite utility per candidate; compute utilities first")
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"{where}: need one pool id per candidate")
    return y, groups


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Linear(hidden, n_out))


def saved_settings(path: Path, family: str, version: int, what: str) -> dict:
    """The ``model.json`` of a model that ``family`` saved in format ``version``, refused with a
    message naming the folder when it is missing, another family's or another format's."""
    if not RewardModel.is_saved(path):
        raise ModelFileError(f"{path}: no saved {what} ({WEIGHTS} and {SETTINGS}); train one first")
    settings = read_json(path / SETTINGS)
    if settings.get("format") != version or settings.get("family") != family:
        raise ModelFileError(f"{path}: not a {what} this version of ttp can load (format "
                             f"{settings.get('format')!r}, family {settings.get('family')!r}); retrain it "
                             f"(`ttp compare RUN --family {family}`)")
    return settings


class RewardModel:
    """One reward model; ``kind`` picks the objective (see ``RewardConfig``, ``REWARD_MODELS``)."""

    def __init__(self, config: RewardConfig | None = None, **overrides):
        self.config = config or RewardConfig(**overrides)

    @property
    def objective(self):
        name = REWARD_MODELS[self.config.kind]
        return OBJECTIVES[name] if name else None

    @property
    def is_probabilistic(self) -> bool:
        return self.config.kind == "ensemble" or bool(self.objective and self.objective.probabilistic)

    @property
    def _members(self) -> int:
        return self.config.members if self.config.kind == "ensemble" else 1

    def _standardize(self, X: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((X - self.feature_mean_) / self.feature_scale_, dtype=torch.float32)

    def fit(self, X, y, groups, X_val=None, y_val=None, groups_val=None) -> "RewardModel":
        """Train on candidate pools; early-stop on validation pools (the training pools if none)."""
        X, names = _features(X, None, "training pools")
        y, groups = _targets(y, groups, len(X), "training pools")
        if X_val is None:
            X_val, y_val, groups_val = X, y, groups
        else:
            X_val, _ = _features(X_val, names, "validation pools")
            y_val, groups_val = _targets(y_val, groups_val, len(X_val), "validation pools")
        self.feature_names_in_ = names
        self.n_features_in_ = X.shape[1]
        self.feature_mean_ = X.mean(axis=0)
        self.feature_scale_ = np.where(X.std(axis=0) > 1e-8, X.std(axis=0), 1.0).astype(np.float32)
        self.networks_ = []
        if self.objective is None:
            return self
        pairs = within_pool_pairs(y, groups) if self.objective.pairwise else None
        data = TrainingData(self._standardize(X), torch.as_tensor(y), pairs)
        for member in range(self._members):
            self.networks_.append(self._train_one(data, self._standardize(X_val), y_val, groups_val,
                                                  seed=self.config.seed + member))
        return self

    def _train_one(self, data: TrainingData, x_val, y_val, groups_val, seed: int) -> nn.Module:
        cfg, objective = self.config, self.objective
        torch.manual_seed(seed)
        net = _mlp(data.x.shape[1], cfg.hidden, objective.outputs)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        def run_epoch(epoch: int) -> None:
            opt.zero_grad()
            loss = objective.loss(net(data.x), data, variance_floor=cfg.variance_floor, beta=cfg.beta)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"{cfg.kind} reward model: loss became {loss.item()} at epoch {epoch}; "
                                       f"lower lr (now {cfg.lr}) or raise variance_floor")
            loss.backward()
            opt.step()

        def validation_rho() -> float:
            with torch.no_grad():
                val_score = net(x_val)[:, 0].numpy()
            return float(within_pool_correlation(val_score, y_val, groups=groups_val).mean())

        train_early_stopped(net, run_epoch, validation_rho, cfg.max_epochs, cfg.patience)
        return net

    def _outputs(self, X) -> np.ndarray:
        if not hasattr(self, "feature_mean_"):
            raise RuntimeError("this reward model is not fitted yet; call fit() or load() first")
        X, _ = _features(X, self.feature_names_in_, "features to score")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"features to score: {X.shape[1]} columns, but the model was fitted on "
                             f"{self.n_features_in_}")
        if not self.networks_:
            return np.zeros((1, len(X), 2), dtype=np.float32)
        with torch.no_grad():
            return np.stack([net(self._standardize(X)).numpy() for net in self.networks_])

    def predict(self, X, return_std: bool = False):
        """The selection score of each candidate (the predicted mean for probabilistic models);
        with ``return_std=True``, a probabilistic model's ``(mean, sd)``."""
        out = self._outputs(X)
        mean = out[:, :, 0].mean(axis=0)
        if not return_std:
            return mean
        if not self.is_probabilistic:
            raise TypeError(f"a {self.config.kind} reward model gives scores only; "
                            f"call predict(X) without return_std")
        if self.config.kind == "ensemble":
            return mean, out[:, :, 0].std(axis=0)
        var = gaussian_variance(torch.as_tensor(out[0, :, 1]), self.config.variance_floor).numpy()
        return mean, np.sqrt(var)

    def save(self, path: str | Path, inputs: dict | None = None) -> None:
        """Write the model; ``inputs`` describes what it reads (family, layer, prompt), for the record."""
        path = Path(path)
        tensors = {"feature_mean": torch.as_tensor(self.feature_mean_),
                   "feature_scale": torch.as_tensor(self.feature_scale_)}
        for i, net in enumerate(self.networks_):
            tensors.update({f"member{i}.{k}": v.contiguous() for k, v in net.state_dict().items()})
        write_bytes_atomic(path / WEIGHTS, save(tensors))
        write_json_atomic(path / SETTINGS, {"format": FORMAT, "config": self.config.model_dump(),
                                            "members": len(self.networks_),
                                            "n_features_in": int(self.n_features_in_),
                                            "feature_names": self.feature_names_in_, "inputs": inputs or {}})

    @staticmethod
    def is_saved(path: str | Path) -> bool:
        return (Path(path) / WEIGHTS).exists() and (Path(path) / SETTINGS).exists()

    @classmethod
    def load(cls, path: str | Path) -> "RewardModel":
        """Load tensors and settings; nothing in the folder is executed."""
        path = Path(path)
        if not cls.is_saved(path):
            if (path / "model.pt").exists():
                raise ModelFileError(f"{path / 'model.pt'} is a pickled model, which can run code when "
                                     f"loaded, so ttp does not load it; delete {path} and retrain "
                                     f"(`ttp rewards RUN`)")
            raise ModelFileError(f"{path}: no saved reward model ({WEIGHTS} and {SETTINGS}); train one first")
        settings = read_json(path / SETTINGS)
        try:
            if settings.get("format") != FORMAT:
                raise ValueError(f"format {settings.get('format')!r}, expected {FORMAT}")
            model = cls(RewardConfig(**settings["config"]))
            tensors = load_file(str(path / WEIGHTS))
            model.feature_mean_ = tensors["feature_mean"].numpy()
            model.feature_scale_ = tensors["feature_scale"].numpy()
            model.n_features_in_ = int(settings["n_features_in"])
            model.feature_names_in_ = settings["feature_names"]
            model.inputs_ = settings.get("inputs", {})
            model.networks_ = []
            for i in range(int(settings["members"])):
                net = _mlp(model.n_features_in_, model.config.hidden, model.objective.outputs)
                prefix = f"member{i}."
                net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
                net.eval()
                model.networks_.append(net)
        except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as err:
            raise ModelFileError(f"{path}: not a reward model this version of ttp can load "
                                 f"({type(err).__name__}: {err}); retrain it (`ttp rewards RUN`)") from None
        return model
