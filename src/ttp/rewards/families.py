"""Reward-model families, named in one registry: what a reward model reads.  Each family is
trained with every head (training objective) of ``ttp.rewards.objectives``.

=============  ==============================================================  ======================
family         reads                                                           estimator
=============  ==============================================================  ======================
features       hand-made features of (profile, query, candidate)               ``RewardModel`` (MLP)
hidden_state   the policy model's final hidden state of prompt + candidate     ``RewardModel`` (MLP)
               (the closest peer's ranker; ``ttp.rewards.hidden_states``)
cross_encoder  the text: candidate [SEP] the user's examples · the query       ``CrossEncoderRewardModel``
=============  ==============================================================  ======================

A model's name in a run is its head for the ``features`` family (``pointwise``, ...), as it has
always been, and ``<family>.<head>`` for the others (``cross_encoder.probabilistic``)."""
from __future__ import annotations

from pathlib import Path

from ttp.rewards.cross_encoder import CrossEncoderConfig, CrossEncoderRewardModel
from ttp.rewards.models import REWARD_MODELS, RewardConfig, RewardModel
from ttp.rewards.zero_shot import ZERO_SHOT

FAMILIES = ("features", "hidden_state", "cross_encoder")
HEADS = ("pointwise", "bradley_terry", "probabilistic")


def check_families(families) -> tuple[str, ...]:
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or "features" not in families:
        raise ValueError(f"families must include 'features' and be some of {FAMILIES}, got {list(families)}")
    return tuple(families)


def heads(family: str, feature_models: tuple[str, ...]) -> tuple[str, ...]:
    """The models a run trains for ``family``: the run's own list (with the constant baseline)
    for ``features``, the three heads for the others."""
    return ("constant", *feature_models) if family == "features" else HEADS


def model_name(family: str, head: str) -> str:
    return head if family == "features" else f"{family}.{head}"


def trained_models(families, feature_models: tuple[str, ...]) -> list[str]:
    """The names of every model a run with these families trains (the constant baseline aside)."""
    return [model_name(f, h) for f in families for h in heads(f, feature_models) if h != "constant"]


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


def new_model(family: str, head: str, seed: int = 0):
    if family == "cross_encoder":
        return CrossEncoderRewardModel(CrossEncoderConfig(kind=head, seed=seed))
    return RewardModel(RewardConfig(kind=head, seed=seed, hidden=64 if family == "hidden_state" else 32))


def estimator(family: str):
    return CrossEncoderRewardModel if family == "cross_encoder" else RewardModel


def load_model(family: str, path: str | Path):
    return estimator(family).load(path)


def is_saved(family: str, path: str | Path) -> bool:
    return estimator(family).is_saved(path)
