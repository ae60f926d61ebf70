"""The request bodies ``ttp serve`` reads, as typed models of the OpenAI API's shapes.

Fields TTP does not use (``stop``, ``logprobs``, ``tools``, ...) are accepted and ignored, as
clients send them; every optional field may be ``null``, as LangChain sends the ones it does not
set.  A body that does not validate becomes one ``APIError`` naming the first bad field.
"""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
)

from ttp.policy import MAX_POOL_SIZE, check_samples


class APIError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers or {}


def _whole(low: int, high: int):
    def check(value):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
            raise ValueError(f"must be a whole number between {low} and {high}, got {value!r}")
        return value
    return Annotated[int | None, BeforeValidator(check)]


def _number(low: float, high: float):
    def check(value):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not low <= value <= high):
            raise ValueError(f"must be a number between {low} and {high}, got {value!r}")
        return value
    return Annotated[float | None, BeforeValidator(check)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value


NonBlank = Annotated[str, AfterValidator(_not_blank)]
Samples = Annotated[int | None, BeforeValidator(lambda value: value if value is None else check_samples(value))]
Tokens = _whole(1, 2**31 - 1)      # the context bounds it further, once the input's length is known


class TTPOptions(BaseModel):
    """``extra_body={"ttp": {...}}``: what the OpenAI API has no field for."""
    model_config = ConfigDict(extra="forbid")
    budget: Samples = None
    return_profile: StrictBool | None = None    # list the profile items the prompt showed


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool | None = None


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    user: str | None = None
    safety_identifier: str | None = None
    n: Samples = None
    max_tokens: Tokens = None
    temperature: _number(0.0, 2.0) = None
    top_p: _number(1e-6, 1.0) = None
    seed: _whole(0, 2**31 - 1) = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    ttp: TTPOptions | None = None

    @property
    def asked_user(self) -> str | None:
        return self.user or self.safety_identifier or None


class CompletionRequest(_Request):
    prompt: Any
    best_of: Samples = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt):
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ValueError("must be one string")
        return prompt

    @property
    def text(self) -> str:
        return self.prompt

    @property
    def samples_asked(self) -> int | None:
        """The sample budget the OpenAI field gives: ``best_of`` (chat has none)."""
        return self.best_of

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Any = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, content):
        if isinstance(content, list):
            if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                       for part in content):
                raise ValueError("may hold only text parts ({\"type\": \"text\", \"text\": ...}); this server "
                                 "reads no images or audio")
            content = "".join(part["text"] for part in content)
        if content is not None and not isinstance(content, str):
            raise ValueError(f"must be a string or a list of text parts, got {content!r}")
        return content


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Tokens = None

    @field_validator("messages")
    @classmethod
    def _a_user_message(cls, messages):
        if not any(m.role == "user" and m.content is not None for m in messages):
            raise ValueError("hold no user message to answer")
        return messages

    @property
    def text(self) -> str:
        return [m.content for m in self.messages if m.role == "user" and m.content is not None][-1]

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def samples_asked(self) -> int | None:
        """Chat has no ``best_of``: only ``ttp.budget`` or the default caps the samples."""
        return None


class FeedbackRequest(BaseModel):
    """``POST /v1/ttp/feedback``: one (input, output) the user wrote or approved, added to their profile."""
    model_config = ConfigDict(extra="allow")
    user: NonBlank
    input: NonBlank
    output: NonBlank
    rating: _number(float("-inf"), float("inf")) = None


class ScoredCandidate(BaseModel):
    """One candidate to score: its text, and where it was sampled, the policy's log-probability
    of it (the sum over its ``n_tokens`` tokens), as a run's ``candidates.parquet`` holds them.
    Without them the server scores the text by teacher forcing on its own policy model."""
    model_config = ConfigDict(extra="forbid")
    text: str
    logprob: _number(float("-inf"), 0.0) = None
    n_tokens: _whole(0, 2**31 - 1) = None


def _candidate(value):
    return {"text": value} if isinstance(value, str) else value


class ScoreRequest(BaseModel):
    """``POST /v1/ttp/score``: the served reward model's score, predicted mean and sd of each
    candidate for one user's input."""
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    user: NonBlank
    input: NonBlank
    candidates: list[Annotated[ScoredCandidate, BeforeValidator(_candidate)]] = Field(min_length=1,
                                                                                     max_length=MAX_POOL_SIZE)

    @field_validator("candidates")
    @classmethod
    def _all_or_no_logprobs(cls, candidates):
        given = {c.logprob is not None and c.n_tokens is not None for c in candidates}
        if len(given) > 1 or any((c.logprob is None) != (c.n_tokens is None) for c in candidates):
            raise ValueError("give logprob and n_tokens for every candidate or for none")
        return candidates

    @property
    def has_logprobs(self) -> bool:
        return self.candidates[0].logprob is not None


def validated(model: type[BaseModel], body: Any) -> BaseModel:
    """``body`` as ``model``, or the ``APIError`` (400) that names its first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        param = ".".join(str(part) for part in first["loc"] if not isinstance(part, int)) or None
        if first["type"] == "value_error":
            said = str(first["ctx"]["error"])
        elif first["type"] == "missing":
            said = "is required"
        else:
            said = f"{first['msg'][0].lower()}{first['msg'][1:]}, got {first['input']!r}"
        raise APIError(400, f"{param} {said}" if param else said, param) from None
