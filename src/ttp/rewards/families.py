"""Reward-model families, named in one registry: what a reward model reads.  Each family is
trained with every head (training objective) of ``ttp.rewards.objectives``.

=============  ==============================================================  ======================
family         reads                                                           estimator
=============  ==============================================================  ======================
features       hand-made features of (profile, query, candidate)               ``RewardModel`` (MLP)
history        the same features; also trained on every user's history pools   ``RewardModel`` (MLP)
history_user   the same, with a per-user affine of the score fitted on the      ``PerUserRewardModel``
               user's own pools (``ttp.rewards.per_user``)
hidden_state   the policy model's final hidden state of prompt + candidate     ``RewardModel`` (MLP)
               (the closest peer's ranker; ``ttp.rewards.hidden_states``)
cross_encoder  the text: candidate [SEP] the user's examples · the query       ``CrossEncoderRewardModel``
lm             the personalized prompt, then the candidate, read by a causal   ``LMRewardModel``
               language model with LoRA on its top layers (``ttp.rewards.lm``)
=============  ==============================================================  ======================

A ``Family`` is everything the pipeline and the server ask of one: the models it trains, how
to make, save and find them, and what they read, for a batch of pools (``batch_inputs``) and
for one query online (``query_inputs``).  A new family is one subclass and one
``register_family`` call; no other layer branches on a family's name.

A model's name in a run is its head for the ``features`` family (``pointwise``, ...), as it has
always been, and ``<family>.<head>`` for the others (``cross_encoder.probabilistic``)."""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ttp.policy import CAPABILITIES, HIDDEN_STATES, PolicyBackend
from ttp.policy.registry import backend_class, backends_that_can
from ttp.rewards.cross_encoder import PAIR_TEMPLATE, CrossEncoderConfig, CrossEncoderRewardModel, encode, pair_texts
from ttp.rewards.estimator import Estimator
from ttp.rewards.features import FEATURES, EmbeddingCache, candidate_features
from ttp.rewards.hidden_states import LAYER, POOLING, hidden_state_matrix, pool_states
from ttp.rewards.lm import LMConfig, LMRewardModel, PoolTexts, Reading, encode_pools
from ttp.rewards.models import REWARD_MODELS, RewardConfig, RewardModel
from ttp.rewards.per_user import USER, PerUserRewardModel
from ttp.rewards.zero_shot import ZERO_SHOT
from ttp.tasks.data import ProfileLayout, Query
from ttp.tasks.prompts import PromptBuilder, as_generated
from ttp.tasks.utility import PRIMARY

HEADS = ("pointwise", "bradley_terry", "probabilistic")


@dataclass(frozen=True)
class Inputs:
    """What a family may read beyond the candidates' table: the queries with their profiles,
    the prompt settings of the run, its caches, and the policy backend (made on first call)."""

    queries: dict[str, Query]
    layout: ProfileLayout
    shots: int
    convention: str
    backend: Callable[[], PolicyBackend]
    embeddings: EmbeddingCache
    policy_model: str                          # the policy's name, for the saved note
    hidden_states: Path | None = None          # the run's cache of states; None online
    # a progress display: track(description, total) -> a context giving advance(); total None: a spinner
    track: Callable[[str, int | None], AbstractContextManager[Callable[[], None]]] | None = None
    history: pd.DataFrame | None = None        # the history pools' candidates with their features
    rm_model: str | None = None                # the lm family's language model (None: the embedded Gemma)


class Family:
    """One family: ``name``, its ``estimator`` class, the backend capabilities it ``needs``, and
    its inputs.  Subclasses define ``batch_inputs`` and ``query_inputs``."""

    name: str
    estimator: type[Estimator] = RewardModel
    needs: tuple[str, ...] = ()          # the backend capabilities it reads (ttp.policy.CAPABILITIES)
    trains_on_history: bool = False      # learns from the history pools too (``training_set``)

    def heads(self, feature_models: tuple[str, ...]) -> tuple[str, ...]:
        """The heads a run trains for this family (``feature_models`` is the run's own list)."""
        return HEADS

    def model_name(self, head: str) -> str:
        return f"{self.name}.{head}"

    def new_model(self, head: str, seed: int = 0) -> Estimator:
        return RewardModel(RewardConfig(kind=head, seed=seed))

    def load(self, path: str | Path) -> Estimator:
        return self.estimator.load(path)

    def is_saved(self, path: str | Path) -> bool:
        return self.estimator.is_saved(path)

    def check_backend(self, backend: str) -> None:
        """Before a run starts: refuse a backend that lacks a capability the family ``needs``."""
        for capability in self.needs:
            if capability not in backend_class(backend).capabilities:
                raise ValueError(f"the {self.name} family needs a backend that can {CAPABILITIES[capability]} "
                                 f"({', '.join(backends_that_can(capability))}), and this run samples with "
                                 f"{backend}; leave it out")

    def training_set(self, X, y, groups, inputs: Inputs):
        """What the models learn from: the training users' pools ``(X, y, groups)``, and for a
        family that learns from history pools, those too."""
        return X, y, groups

    def fit(self, head: str, seed: int, X, y, groups, train, validation, inputs: Inputs) -> Estimator:
        """A new model of ``head``, trained on the ``train`` rows (and what ``training_set`` adds)
        and stopped early on the ``validation`` rows: the one way a run trains a reward model."""
        return self.new_model(head, seed).fit(*self.training_set(X[train], y[train], groups[train], inputs),
                                              X[validation], y[validation], groups[validation])

    def batch_inputs(self, table: pd.DataFrame, inputs: Inputs):
        """``(X, note)``: what the models read, one row per row of ``table`` (candidates with
        their features), and a note of it saved beside each model."""
        raise NotImplementedError

    def query_inputs(self, query: Query, candidates: pd.DataFrame, inputs: Inputs):
        """What the models read for the candidates of one query, drawn online."""
        raise NotImplementedError


class FeaturesFamily(Family):
    name = "features"

    def heads(self, feature_models):
        return ("constant", *feature_models)

    def model_name(self, head):
        return head

    def new_model(self, head, seed=0):
        return RewardModel(RewardConfig(kind=head, seed=seed, hidden=32))

    def batch_inputs(self, table, inputs):
        return table[list(FEATURES)], {"family": self.name}

    def query_inputs(self, query, candidates, inputs):
        return candidate_features(candidates, {query.id: query}, inputs.embeddings, k=inputs.shots,
                                  convention=inputs.convention)


class HistoryFamily(FeaturesFamily):
    """The feature MLPs, trained on every user's history pools as well as the training users'
    pools (``ttp.tasks.history``): held-out users' own past outputs become training examples."""

    name = "history"
    trains_on_history = True
    columns = FEATURES

    def heads(self, feature_models):
        return HEADS

    def model_name(self, head):
        return f"{self.name}.{head}"

    def batch_inputs(self, table, inputs):
        return table[list(self.columns)], {"family": self.name}

    def training_set(self, X, y, groups, inputs):
        history = inputs.history
        return (pd.concat([X, history[list(self.columns)]], ignore_index=True),
                np.concatenate([y, history[PRIMARY].to_numpy()]),
                np.concatenate([groups, history["query_id"].to_numpy()]))


class PerUserHistoryFamily(HistoryFamily):
    """The history family's model with a per-user affine of its output, fitted on each user's
    own pools (``ttp.rewards.per_user``): it reads the user beside the features."""

    name = "history_user"
    estimator = PerUserRewardModel
    columns = (*FEATURES, USER)

    def new_model(self, head, seed=0):
        return PerUserRewardModel(RewardConfig(kind=head, seed=seed, hidden=32))

    def query_inputs(self, query, candidates, inputs):
        return super().query_inputs(query, candidates, inputs).assign(**{USER: query.user})


class HiddenStateFamily(Family):
    name = "hidden_state"
    needs = (HIDDEN_STATES,)

    def new_model(self, head, seed=0):
        return RewardModel(RewardConfig(kind=head, seed=seed, hidden=64))

    def batch_inputs(self, table, inputs):
        with inputs.track(f"hidden states of {table.query_id.nunique()} pools", table.query_id.nunique()) as advance:
            states = hidden_state_matrix(table, inputs.queries, inputs.layout, inputs.backend, inputs.hidden_states,
                                         inputs.shots, inputs.convention, progress=advance)
        return (pd.DataFrame(states, columns=[f"h{i}" for i in range(states.shape[1])], index=table.index),
                {"family": self.name, "policy_model": inputs.policy_model, "layer": LAYER, "pooling": POOLING,
                 "prompt": "personalized", "shots": inputs.shots, "convention": inputs.convention})

    def query_inputs(self, query, candidates, inputs):
        # the personalized prompt whatever the policy, as the states were read in training
        prompt = PromptBuilder(inputs.layout, "personalized", inputs.shots, inputs.convention)
        return pool_states(inputs.backend(), prompt(query), candidates["text"])


class CrossEncoderFamily(Family):
    name = "cross_encoder"
    estimator = CrossEncoderRewardModel

    def new_model(self, head, seed=0):
        return CrossEncoderRewardModel(CrossEncoderConfig(kind=head, seed=seed))

    def batch_inputs(self, table, inputs):
        pairs = pair_texts(table, inputs.queries, inputs.shots, inputs.convention)
        with inputs.track(f"encoding {len(pairs)} candidates for the cross-encoder", None):
            encoded = encode(pairs, CrossEncoderConfig())
        return encoded, {"family": self.name, "text": PAIR_TEMPLATE, "shots": inputs.shots,
                         "convention": inputs.convention}

    def query_inputs(self, query, candidates, inputs):
        return pair_texts(candidates, {query.id: query}, inputs.shots, inputs.convention)


class LMFamily(Family):
    """A language model reading the personalized prompt and the candidate, with each head of
    ``OBJECTIVES`` (the Thurstone one included, the pairwise form of the probabilistic head)."""

    name = "lm"
    estimator = LMRewardModel

    def heads(self, feature_models):
        return (*HEADS, "thurstone")

    def new_model(self, head, seed=0, reading: Reading = Reading()):
        return LMRewardModel(LMConfig(kind=head, seed=seed, reading=reading))

    def fit(self, head, seed, X, y, groups, train, validation, inputs):
        model = self.new_model(head, seed, X.reading)
        with inputs.track(f"training lm.{head} (batches, at most {model.config.max_epochs} epochs)", None) as advance:
            model.progress = advance
            return model.fit(X[train], y[train], groups[train], X[validation], y[validation], groups[validation])

    @staticmethod
    def texts(table: pd.DataFrame, queries: dict[str, Query], inputs: Inputs) -> PoolTexts:
        # the personalized prompt whatever the policy, so the model reads the user's examples
        prompt = PromptBuilder(inputs.layout, "personalized", inputs.shots, inputs.convention)
        return PoolTexts({q: prompt(queries[q]) for q in table["query_id"].unique()},
                         [as_generated(str(t)) for t in table["text"]], table["query_id"].to_numpy())

    def batch_inputs(self, table, inputs):
        texts, reading = self.texts(table, inputs.queries, inputs), Reading(model=inputs.rm_model)
        with inputs.track(f"lm reward model: reading {len(texts.contexts)} pools", len(texts.contexts)) as advance:
            encoded = encode_pools(texts, reading, progress=advance)
        return encoded, {"family": self.name, "model": inputs.rm_model or "embedded", "prompt": "personalized",
                         "shots": inputs.shots, "convention": inputs.convention}

    def query_inputs(self, query, candidates, inputs):
        return self.texts(candidates, {query.id: query}, inputs)


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make ``family`` known to every layer by its name (config checks, pipeline, server, tables)."""
    if not family.name.isidentifier() or family.name in ZERO_SHOT or family.name in REWARD_MODELS:
        raise ValueError(f"a family's name must be an identifier unlike a model or scorer name, got {family.name!r}")
    FAMILIES[family.name] = family
    return family


for _family in (FeaturesFamily(), HistoryFamily(), PerUserHistoryFamily(), HiddenStateFamily(), CrossEncoderFamily(),
                LMFamily()):
    register_family(_family)


def check_families(families) -> tuple[str, ...]:
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or "features" not in families:
        raise ValueError(f"families must include 'features' and be some of {tuple(FAMILIES)}, got {list(families)}")
    return tuple(families)


def trained_models(families, feature_models: tuple[str, ...]) -> list[str]:
    """The names of every model a run with these families trains (the constant baseline aside)."""
    return [FAMILIES[f].model_name(h) for f in families for h in FAMILIES[f].heads(feature_models)
            if h != "constant"]


def family_of(model: str) -> str:
    """The family of a selector's model; ``baseline`` for random selection, ``zero-shot`` and
    ``external`` for scores not trained here."""
    prefix = model.split(".", 1)[0]
    if prefix in FAMILIES and "." in model:
        return prefix
    if model in ZERO_SHOT:
        return "zero-shot"
    if model == "random":
        return "baseline"
    if model in REWARD_MODELS:
        return "features"
    return "external"


def servable(model: str) -> bool:
    """Whether ``ttp serve`` can pick with this selector's model: a trained family's, or scores
    made outside the run (the endpoint that made them picks, ``--reward-url``)."""
    return family_of(model) in (*FAMILIES, "external")


def head_of(model: str) -> str:
    """The head of a trained model's name (the name itself for the features family and for
    scores not trained here)."""
    return model.split(".", 1)[1] if "." in model and family_of(model) in FAMILIES else model
