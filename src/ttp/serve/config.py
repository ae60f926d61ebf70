"""``ServeConfig``: how ``ttp serve`` answers, one typed object whose fields are the command's
options (``ttp.options``), kept apart from the app so the command line is built without
importing FastAPI."""
from __future__ import annotations

from pydantic import Field

from ttp.policy import MAX_POOL_SIZE
from ttp.typed import Settings, flags


class ServeConfig(Settings):
    model_name: str = Field("ttp", description="the model id clients send and /v1/models lists")
    default_budget: int = Field(8, ge=1, le=MAX_POOL_SIZE, json_schema_extra=flags("--budget"),
                                description="samples per request when it gives neither best_of nor ttp.budget")
    min_gain: float = Field(1e-3, ge=0, description="stop sampling when one more sample is predicted to gain less")
    concurrency: int = Field(1, ge=1, le=64, description="requests sampled at once (1 for the embedded model "
                             "on a CPU)")
    max_queue: int = Field(16, ge=0, le=10_000, description="requests that may wait; more are answered 503 "
                           "with Retry-After")
    max_feedback_chars: int = Field(4000, ge=1, description="characters of input and output per feedback item; "
                                    "more are answered 413")
    feedback_per_minute: int = Field(30, ge=1, description="feedback items a minute per user and per key, "
                                     "counted in the store (shared by the workers on it)")
    requests_per_minute: int = Field(120, ge=1, description="completions, chats and scores a minute per user "
                                     "and per key, counted in the store (shared by the workers on it)")
