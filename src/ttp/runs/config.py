"""Small typed configuration objects for one run, saved as ``config.json`` in the run folder."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ttp.policy import SamplingParams
from ttp.tasks.prompts import POLICIES


@dataclass(frozen=True)
class TaskSpec:
    """A task folder in the LaMP layout; ``max_queries_per_user`` draws a seeded subset."""

    path: str
    name: str | None = None
    layout: str | None = None
    max_queries_per_user: int | None = None
    max_users: int | None = None


@dataclass(frozen=True)
class RunConfig:
    tasks: tuple[TaskSpec, ...]
    policies: tuple[str, ...] = POLICIES
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(n=16, max_tokens=24))
    shots: int = 3                                   # retrieved profile items per prompt
    split: tuple[float, float, float] = (0.45, 0.15, 0.4)
    seed: int = 0
    backend: str = "llama-cpp"                       # llama-cpp | openai
    model_path: str | None = None                    # llama-cpp: GGUF file (default: embedded Gemma)
    server_url: str | None = None                    # openai: e.g. http://127.0.0.1:8000
    server_model: str | None = None                  # openai: the served model's name
    ray_workers: int = 0                             # > 0: sample with that many Ray actors
    ray_address: str | None = None                   # an existing Ray cluster (default: start one locally)
    reward_models: tuple[str, ...] = ("pointwise", "bradley_terry", "probabilistic", "ensemble")
    lcb_kappa: float = 1.0                           # lcb selection: mean - kappa * sd
    collapse_tau: float = 0.1
    controller_selector: str = "probabilistic/mean"  # the RM whose scores drive allocation
    bootstrap: int = 1000

    def __post_init__(self):
        unknown = set(self.policies) - set(POLICIES)
        if unknown:
            raise ValueError(f"unknown policies {sorted(unknown)}; choose from {POLICIES}")
        if not self.tasks:
            raise ValueError("a run needs at least one task")

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        extra = set(data) - known
        if extra:
            raise ValueError(f"config.json: unknown fields {sorted(extra)}")
        data = dict(data)
        data["tasks"] = tuple(TaskSpec(**t) for t in data["tasks"])
        data["sampling"] = SamplingParams(**{**data.get("sampling", {}),
                                             "stop": tuple(data.get("sampling", {}).get("stop", ("\n",)))})
        for key in ("policies", "split", "reward_models"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        return cls.from_json(json.loads(Path(path).read_text()))
