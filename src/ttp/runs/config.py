"""The typed configuration of one run, saved as ``config.json`` in the run folder.  Every value
is checked when the object is built, so a bad option or a hand-edited config file stops before
any work with a message naming the field."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field, ValidationError, field_validator, model_validator

from ttp.files import DataFileError, check_name, read_json
from ttp.policy import MAX_POOL_SIZE, SamplingParams
from ttp.policy.registry import EngineConfig
from ttp.rewards.families import FAMILIES, check_families, trained_models
from ttp.rewards.models import REWARD_MODELS
from ttp.rewards.selection import Selector
from ttp.tasks.prompts import PROMPT_STYLES, Prompting
from ttp.tasks.utility import Convention
from ttp.typed import Settings, Split, refusal


class ConfigError(ValueError):
    """A run configuration is invalid; the message names the field."""


class TaskSpec(Settings):
    """A task folder in the LaMP layout; ``max_queries_per_user`` draws a seeded subset."""

    path: str
    name: Optional[str] = None
    layout: Optional[str] = None
    max_queries_per_user: Optional[int] = Field(None, ge=1)
    max_users: Optional[int] = Field(None, ge=1)

    @field_validator("name")
    @classmethod
    def _a_name(cls, name):
        return name if name is None else check_name(name, "task name")


class RunConfig(Settings):
    """Everything one run is made with, saved as its ``config.json``."""

    tasks: tuple[TaskSpec, ...] = Field(min_length=1)
    policies: tuple[Prompting, ...] = Field(PROMPT_STYLES, min_length=1)
    sampling: SamplingParams = SamplingParams()
    shots: int = Field(3, ge=0, description="retrieved profile items per prompt")
    convention: Convention = Field("ttp", description="utility and retrieval: ttp (ROUGE with stemming, BM25 over "
                                   "the input) or lamp (LaMP's: no stemming, BM25 over the text after the instruction)")
    split: Split = Field((0.45, 0.15, 0.4), description="train, validation, test shares of users")
    seed: int = Field(0, description="seeds the user split, the subsets, sampling and training")
    engine: EngineConfig = EngineConfig()                 # the policy model's engine
    reward_models: tuple[str, ...] = ("pointwise", "bradley_terry", "probabilistic", "ensemble")
    families: tuple[str, ...] = ("features",)            # what the reward models read (rewards/families.py)
    rm_model: Optional[str] = None                        # the lm family's language model (None: the embedded Gemma)
    lcb_kappa: float = Field(1.0, ge=0, description="lcb selection: mean - kappa * sd")
    collapse_tau: float = Field(0.1, ge=0, lt=1, description="collapse threshold, share of the median user's spread")
    controller_selector: str = "probabilistic/mean"       # the selector whose scores drive allocation
    bootstrap: int = Field(1000, ge=10)
    history_items: int = Field(0, ge=0, description="profile items per user sampled as history queries")
    history_pool_size: Optional[int] = Field(None, ge=1, le=MAX_POOL_SIZE,
                                             description="their pools' size (None: the run's pool size)")

    @field_validator("reward_models")
    @classmethod
    def _known_models(cls, models):
        unknown = [m for m in models if m not in REWARD_MODELS or m == "constant"]
        if unknown:
            raise ValueError(f"unknown reward models {unknown}; choose from "
                             f"{sorted(set(REWARD_MODELS) - {'constant'})}")
        return models

    @model_validator(mode="after")
    def _consistent(self):
        for family in check_families(self.families):
            FAMILIES[family].check_backend(self.engine.backend)
        needs_history = [f for f in self.families if FAMILIES[f].trains_on_history]
        if needs_history and not self.history_items:
            raise ValueError(f"the {', '.join(needs_history)} family trains on history pools, and history_items "
                             f"is 0; `ttp history RUN --items-per-user K` samples them")
        selector = Selector.parse(self.controller_selector)
        trained = trained_models(self.families, self.reward_models)
        if selector.model not in trained:
            raise ValueError(f"controller_selector {self.controller_selector!r} names a reward model this "
                             f"run does not train; the controller and the server select with one of {trained}")
        return self

    def to_json(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: dict) -> "RunConfig":
        if not isinstance(data, dict):
            raise ConfigError("expected a JSON object")
        data = dict(data)
        # a config file written before the engine's fields were grouped holds them at the top level
        flat = {k: data.pop(k) for k in EngineConfig.model_fields if k in data}
        if flat:
            engine = data.get("engine", {})
            data["engine"] = {**flat, **engine} if isinstance(engine, dict) else engine
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            where, why = refusal(err)
            if where.partition(".")[2] in flat:        # named as the file names it
                where = where.partition(".")[2]
            raise ConfigError(f"field {where!r}: {why}" if where else why) from None

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        try:
            return cls.from_json(read_json(path))
        except (ConfigError, DataFileError) as err:
            raise ConfigError(f"{path}: {err}") from None
