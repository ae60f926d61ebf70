"""The ``lm`` reward model: a causal language model that reads the user's profile examples and
the query (the personalized prompt, as the policy reads it) and then the candidate, with LoRA
adapters (``peft``) on its top layers and a linear head on the candidate's last token, its end
of line.  The kind of reward model the personalized-RM literature trains.

Heads are the objectives of ``ttp.rewards.objectives``: ``pointwise`` (squared error), ``bradley_terry``
(pairs within a pool), ``probabilistic`` ((μ, log s²) by the Gaussian NLL of each candidate) and
``thurstone`` ((μ, log s²) by the pairwise Gaussian likelihood Φ((μ_a − μ_b)/√(s_a² + s_b²))).
Utilities are standardized within each pool first, since selection only compares candidates of
one pool.  Training stops early on the validation users' ρ̄ (``ttp.rewards.estimator``).

Cost on a CPU is what shapes it (``ttp.rewards.lm_backbone``): the lower layers stay frozen
and run once per pool, the context once and its cache shared by the pool's candidates; the
tuned top layers share the context the same way.  The loop is written here rather than with
``transformers``' ``Trainer`` or TRL's ``RewardTrainer``: both batch independent sequences, and
neither shares one context's cache among a pool's candidates, takes a two-output head, or
trains on cached lower-layer states.

Saved as data: ``weights.safetensors`` (adapters and head) and ``model.json`` (settings, how the
backbone reads, and a hash of its weights); the backbone itself is read from its folder."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from ttp.analysis.stats import within_pool_correlation
from ttp.files import write_bytes_atomic, write_json_atomic
from ttp.rewards.estimator import TunedTextModel, train_early_stopped
from ttp.rewards.lm_backbone import EMBEDDED, Backbone, PoolStates, backbone_folder
from ttp.rewards.models import SETTINGS, WEIGHTS, ModelFileError, RewardModel, TrainingDiverged, saved_settings
from ttp.rewards.objectives import ObjectiveName, TrainingData, within_pool_pairs
from ttp.typed import Settings

FORMAT = 1


class Reading(Settings):
    """Which language model reads the pools and how: fixed by the encoding, so a model is
    trained and used on states of the same backbone."""

    model: Optional[str] = None      # a model folder, ttp tune folder or GGUF (None: the embedded Gemma 3 270M)
    tuned_layers: int = Field(2, ge=1)            # top layers with adapters; the layers below run once per pool
    max_context_tokens: int = Field(320, ge=2)    # the context keeps its end (the query and the output label)
    max_candidate_tokens: int = Field(190, ge=1)  # context + candidate stays within Gemma's 512-token sliding window

    def backbone(self) -> Backbone:
        return _loaded(self)


@lru_cache(maxsize=2)
def _loaded(reading: Reading) -> Backbone:
    """The backbone a reading names, loaded once per process: resolving the embedded model's
    folder alone takes a fifth of a second, too much for every batch."""
    return Backbone(backbone_folder(reading.model), reading.tuned_layers, reading.max_context_tokens,
                    reading.max_candidate_tokens)


class LMConfig(Settings):
    """How one ``lm`` reward model is trained."""

    kind: ObjectiveName = "pointwise"                       # an objective of OBJECTIVES
    rank: int = Field(8, ge=1)                    # LoRA rank on every linear layer of the tuned layers
    alpha: float = Field(16.0, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_epochs: int = Field(3, ge=1)
    patience: int = Field(1, ge=1)                # epochs without a better validation ρ̄
    pools_per_batch: int = Field(4, ge=1)
    seed: int = 0
    variance_floor: float = Field(1e-3, gt=0)
    reading: Reading = Reading()


@dataclass
class PoolTexts:
    """What the ``lm`` model reads, one row per candidate: its pool's context and its text."""

    contexts: dict[str, str]          # pool id -> the personalized prompt
    candidates: list[str]             # as the policy generated them (a space, the text, end of line)
    pools: np.ndarray                 # pool id per row

    def __len__(self) -> int:
        return len(self.candidates)

    def __getitem__(self, rows) -> "PoolTexts":
        index = np.arange(len(self))[rows]
        return PoolTexts(self.contexts, [self.candidates[i] for i in index], self.pools[index])


@dataclass
class PoolEncoding:
    """The backbone's lower layers' output for pools: what the tuned layers read.  Rows index
    candidates; ``slots`` says where each sits in its pool's encoding."""

    reading: Reading
    states: dict[str, PoolStates]
    pools: np.ndarray
    slots: np.ndarray

    def __len__(self) -> int:
        return len(self.pools)

    def __getitem__(self, rows) -> "PoolEncoding":
        index = np.arange(len(self))[rows]
        return PoolEncoding(self.reading, self.states, self.pools[index], self.slots[index])

    def by_pool(self):
        """Each pool's rows and the states of those rows' candidates, in order of first row."""
        for pool in pd.unique(self.pools):
            rows = np.flatnonzero(self.pools == pool)
            states = self.states[pool]
            yield rows, PoolStates(states.context, [states.candidates[s] for s in self.slots[rows]])


def encode_pools(texts: PoolTexts, reading: Reading = Reading(),
           progress: Callable[[], None] | None = None) -> PoolEncoding:
    """Run the backbone's frozen lower layers once per pool; every head and epoch reuses it."""
    model = reading.backbone()
    states, slots = {}, np.zeros(len(texts), dtype=int)
    for pool in pd.unique(texts.pools):
        rows = np.flatnonzero(texts.pools == pool)
        states[pool] = model.encode_pool(texts.contexts[pool], [texts.candidates[i] for i in rows])
        slots[rows] = np.arange(len(rows))
        if progress is not None:
            progress()
    return PoolEncoding(reading, states, np.asarray(texts.pools), slots)


def _standardized(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Utilities as z-scores within each pool (0 where a pool's utilities are all equal)."""
    frame = pd.DataFrame({"y": y, "g": groups})
    grouped = frame.groupby("g", sort=False)["y"]
    sd = grouped.transform("std", ddof=0).to_numpy()
    return np.where(sd > 1e-9, (y - grouped.transform("mean").to_numpy()) / np.where(sd > 1e-9, sd, 1.0), 0.0)


class LMRewardModel(TunedTextModel):
    """``fit(X, y, groups, X_val, y_val, groups_val)`` and ``predict(X, return_std=False)``, where
    ``X`` is a ``PoolTexts`` or its ``PoolEncoding``.  ``progress`` is called after each batch."""

    what = "lm reward model"

    def __init__(self, config: LMConfig | None = None, progress: Callable[[], None] | None = None, **overrides):
        self.config = config or LMConfig(**overrides)
        self.progress = progress

    def encode(self, X) -> PoolEncoding:
        if isinstance(X, PoolEncoding):
            if X.reading != self.config.reading:
                raise ValueError(f"these pools were encoded with {X.reading}, the model reads with "
                                 f"{self.config.reading}")
            return X
        return encode_pools(X, self.config.reading)

    def _new_modules(self, model: Backbone) -> nn.ModuleDict:
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        top = get_peft_model(model.new_top(), LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0,
                                                         target_modules="all-linear"))
        head = nn.Linear(model.hidden_size, self.objective.outputs)
        nn.init.normal_(head.weight, std=1.0 / model.hidden_size)   # starts near 0 for any state scale
        nn.init.zeros_(head.bias)
        return nn.ModuleDict({"top": top, "head": head.to(model.device)})

    def _outputs(self, X: PoolEncoding) -> torch.Tensor:
        """The head's outputs, one row per row of ``X`` (with gradients when training)."""
        model, parts, order = self.config.reading.backbone(), [], []
        for rows, states in X.by_pool():
            parts.append(self.modules_["head"](model.run_top(self.modules_["top"], states)).float().cpu())
            order.append(rows)
        out = torch.cat(parts) if parts else torch.zeros((0, self.objective.outputs))
        return out[torch.as_tensor(np.argsort(np.concatenate(order)))] if order else out

    def fit(self, X, y, groups, X_val=None, y_val=None, groups_val=None) -> "LMRewardModel":
        cfg = self.config
        X, y, groups, X_val, y_val, groups_val = self._training_pools(X, y, groups, X_val, y_val, groups_val)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        model = cfg.reading.backbone()
        self.backbone_sha256_ = model.digest
        self.modules_ = self._new_modules(model)
        trained = [p for p in self.modules_.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
        z = _standardized(y, groups).astype(np.float32)
        pools = [np.flatnonzero(groups == g) for g in pd.unique(groups)]

        def run_epoch(epoch: int) -> None:
            order = rng.permutation(len(pools))
            for start in range(0, len(order), cfg.pools_per_batch):
                rows = np.concatenate([pools[i] for i in order[start:start + cfg.pools_per_batch]])
                pairs = within_pool_pairs(z[rows], groups[rows]) if self.objective.pairwise else None
                if pairs is None or len(pairs[0]):
                    loss = self.objective.loss(self._outputs(X[rows]), TrainingData(None, torch.as_tensor(z[rows]),
                                                                                    pairs),
                                               variance_floor=cfg.variance_floor)
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(f"lm {cfg.kind}: loss became {loss.item()} at epoch {epoch}; "
                                               f"lower lr (now {cfg.lr})")
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                if self.progress is not None:
                    self.progress()

        def validation_rho() -> float:
            return float(within_pool_correlation(self._predicted(X_val)[:, 0], y_val, groups=groups_val).mean())

        best = train_early_stopped(self.modules_, run_epoch, validation_rho, cfg.max_epochs, cfg.patience)
        self.validation_rho_ = float(best) if np.isfinite(best) else None
        return self

    def _predicted(self, X) -> np.ndarray:
        if not hasattr(self, "modules_"):
            raise RuntimeError("this reward model is not fitted yet; call fit() or load() first")
        self.modules_.eval()
        with torch.no_grad():
            return self._outputs(self.encode(X)).numpy()


    def save(self, path: str | Path, inputs: dict | None = None) -> None:
        from peft import get_peft_model_state_dict

        path = Path(path)
        adapters = get_peft_model_state_dict(self.modules_["top"], save_embedding_layers=False)
        tensors = {f"top.{k}": v for k, v in adapters.items()}
        tensors.update({f"head.{k}": v for k, v in self.modules_["head"].state_dict().items()})
        write_bytes_atomic(path / WEIGHTS, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))
        config = self.config.model_dump()
        config["reading"]["model"] = config["reading"]["model"] or EMBEDDED
        write_json_atomic(path / SETTINGS, {"format": FORMAT, "family": "lm", "config": config,
                                            "backbone_sha256": self.backbone_sha256_,
                                            "validation_rho": self.validation_rho_, "inputs": inputs or {}})

    is_saved = staticmethod(RewardModel.is_saved)   # the same two files mark a saved model

    @classmethod
    def load(cls, path: str | Path) -> "LMRewardModel":
        """Load adapters, head and settings onto the backbone; nothing in the folder is executed."""
        from peft import set_peft_model_state_dict

        path = Path(path)
        settings = saved_settings(path, "lm", FORMAT, "lm reward model")
        try:
            config = dict(settings["config"])
            reading = dict(config.pop("reading"))
            reading["model"] = None if reading["model"] == EMBEDDED else reading["model"]
            model = cls(LMConfig(**config, reading=Reading(**reading)))
            backbone_model = model.config.reading.backbone()
            if settings["backbone_sha256"] != backbone_model.digest:
                raise ValueError(f"it was trained on other weights than those in {backbone_model.folder}")
            model.backbone_sha256_, model.validation_rho_ = settings["backbone_sha256"], settings["validation_rho"]
            model.inputs_ = settings.get("inputs", {})
            model.modules_ = model._new_modules(backbone_model)
            tensors = load_file(str(path / WEIGHTS))
            set_peft_model_state_dict(model.modules_["top"], {k[4:]: v for k, v in tensors.items()
                                                              if k.startswith("top.")})
            model.modules_["head"].load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
            model.modules_.eval()
        except (KeyError, TypeError, ValueError, RuntimeError, FileNotFoundError, SafetensorError) as err:
            raise ModelFileError(f"{path}: not an lm reward model this version of ttp can load "
                                 f"({type(err).__name__}: {err}); retrain it (`ttp compare RUN --family lm`)") from None
        return model
