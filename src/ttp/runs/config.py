"""Small typed configuration objects for one run, saved as ``config.json`` in the run folder.
Every value is checked when the object is built, so a bad option or a hand-edited config file
stops before any work with a message naming the field."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pydantic import ValidationError

from ttp.files import DataFileError, check_name, read_json
from ttp.policy import SamplingParams
from ttp.policy.registry import EngineConfig
from ttp.rewards.families import FAMILIES, check_families, trained_models
from ttp.rewards.models import REWARD_MODELS
from ttp.rewards.selection import Selector
from ttp.tasks.prompts import PROMPT_STYLES
from ttp.tasks.utility import CONVENTIONS

MAX_POOL_SIZE = 64     # candidates per query; also the largest budget of `ttp generate`


def check_samples(value, what: str = "", error: type[Exception] = ValueError) -> int:
    """``value`` if it is a number of samples one query may draw (1 to ``MAX_POOL_SIZE``); else
    ``error``, naming ``what`` (each boundary raises its own kind: a CLI option, a request field)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_POOL_SIZE:
        said = f"must be a whole number between 1 and {MAX_POOL_SIZE}, got {value!r}"
        raise error(f"{what} {said}" if what else said)
    return value


class ConfigError(ValueError):
    """A run configuration is invalid; the message names the field."""


@dataclass(frozen=True)
class TaskSpec:
    """A task folder in the LaMP layout; ``max_queries_per_user`` draws a seeded subset."""

    path: str
    name: str | None = None
    layout: str | None = None
    max_queries_per_user: int | None = None
    max_users: int | None = None

    def __post_init__(self):
        if self.name is not None:
            check_name(self.name, "task name")
        for key in ("max_queries_per_user", "max_users"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{key} must be a whole number of at least 1, got {value!r}")


@dataclass(frozen=True)
class RunConfig:
    tasks: tuple[TaskSpec, ...]
    policies: tuple[str, ...] = PROMPT_STYLES
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(n=16, max_tokens=24))
    shots: int = 3                                   # retrieved profile items per prompt
    convention: str = "ttp"                          # utility and retrieval: ttp or lamp (tasks/utility.py)
    split: tuple[float, float, float] = (0.45, 0.15, 0.4)
    seed: int = 0
    engine: EngineConfig = field(default_factory=EngineConfig)   # the policy model's engine
    reward_models: tuple[str, ...] = ("pointwise", "bradley_terry", "probabilistic", "ensemble")
    families: tuple[str, ...] = ("features",)       # what the reward models read (rewards/families.py)
    rm_model: str | None = None                      # the lm family's language model (None: the embedded Gemma)
    lcb_kappa: float = 1.0                           # lcb selection: mean - kappa * sd
    collapse_tau: float = 0.1                        # collapse threshold, share of the median user's spread
    controller_selector: str = "probabilistic/mean"  # the selector whose scores drive allocation
    bootstrap: int = 1000
    history_items: int = 0                           # profile items per user sampled as history queries
    history_pool_size: int | None = None             # their pools' size (None: the run's pool size)

    def __post_init__(self):
        if not self.tasks:
            raise ConfigError("a run needs at least one task")
        unknown = set(self.policies) - set(PROMPT_STYLES)
        if unknown or not self.policies:
            raise ConfigError(f"policies must be some of {PROMPT_STYLES}, got {list(self.policies)}")
        check_samples(self.sampling.n, "the pool size", ConfigError)
        if len(self.split) != 3 or min(self.split) <= 0 or abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError(f"split must be three positive fractions (train, validation, test) summing "
                              f"to 1, got {tuple(self.split)}")
        if self.convention not in CONVENTIONS:
            raise ConfigError(f"convention must be one of {CONVENTIONS}, got {self.convention!r}")
        bad_models = [m for m in self.reward_models if m not in REWARD_MODELS or m == "constant"]
        if bad_models:
            raise ConfigError(f"unknown reward models {bad_models}; choose from "
                              f"{sorted(set(REWARD_MODELS) - {'constant'})}")
        try:
            for family in check_families(self.families):
                FAMILIES[family].check_backend(self.engine.backend)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.history_items < 0 or (self.history_pool_size is not None and self.history_pool_size < 1):
            raise ConfigError(f"history_items must be 0 or more and history_pool_size 1 or more, got "
                              f"{self.history_items!r} and {self.history_pool_size!r}")
        if self.history_pool_size is not None:
            check_samples(self.history_pool_size, "the history pool size", ConfigError)
        needs_history = [f for f in self.families if FAMILIES[f].trains_on_history]
        if needs_history and not self.history_items:
            raise ConfigError(f"the {', '.join(needs_history)} family trains on history pools, and history_items "
                              f"is 0; `ttp history RUN --items-per-user K` samples them")
        selector = Selector.parse(self.controller_selector)
        trained = trained_models(self.families, self.reward_models)
        if selector.model not in trained:
            raise ConfigError(f"controller_selector {self.controller_selector!r} names a reward model this "
                              f"run does not train; the controller and the server select with one of {trained}")
        checks = {"shots": self.shots >= 0, "collapse_tau": 0 <= self.collapse_tau < 1,
                  "bootstrap": self.bootstrap >= 10, "lcb_kappa": self.lcb_kappa >= 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"out of range: {', '.join(f'{k} = {getattr(self, k)!r}' for k in bad)}")

    def to_json(self) -> dict:
        return json.loads(json.dumps({**asdict(self), "engine": self.engine.model_dump()}))

    @classmethod
    def from_json(cls, data: dict) -> "RunConfig":
        if not isinstance(data, dict):
            raise ConfigError("expected a JSON object")
        data = dict(data)
        # a config file written before the engine's fields were grouped holds them at the top level
        flat = {k: data.pop(k) for k in EngineConfig.model_fields if k in data}
        known = {f.name for f in fields(cls)}
        extra = set(data) - known
        if extra:
            raise ConfigError(f"unknown fields {sorted(extra)}")
        try:
            engine = data.get("engine", {})
            if not isinstance(engine, dict):
                raise ConfigError(f"field 'engine' must be an object, got {engine!r}")
            try:
                data["engine"] = EngineConfig(**{**flat, **engine})
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(["engine", *map(str, first["loc"])]) if engine else ".".join(map(str, first["loc"]))
                raise ConfigError(f"field {where!r}: {first['msg']} (got {first.get('input')!r})") from None
            data["tasks"] = tuple(TaskSpec(**t) for t in data["tasks"])
            sampling = dict(data.get("sampling", {}))
            data["sampling"] = SamplingParams(**{**sampling, "stop": tuple(sampling.get("stop", ("\n",)))})
            for key in ("policies", "split", "reward_models", "families"):
                if key in data:
                    data[key] = tuple(data[key])
            return cls(**data)
        except (TypeError, KeyError, ValueError) as err:
            raise ConfigError(f"{type(err).__name__}: {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        try:
            return cls.from_json(read_json(path))
        except (ConfigError, DataFileError) as err:
            raise ConfigError(f"{path}: {err}") from None
