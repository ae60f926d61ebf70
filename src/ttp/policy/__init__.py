"""Policy backends: one small interface, ``sample(prompt, params) -> list[Completion]`` for one
pool and ``sample_many(prompts, params)`` for a chunk of them.

What a backend can do beyond sampling it declares in ``capabilities`` (``CAPABILITIES`` names
them); a reward-model family or a scorer asks ``backend.require(capability, who)`` for what it
needs, never for a backend by name.

The embedded default runs Gemma 3 270M with llama.cpp on the CPU; larger engines plug in
behind the same interface.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import Field

from ttp.typed import Settings, flags

MAX_POOL_SIZE = 64     # candidates one query may draw; also the largest budget of `ttp generate`


def check_samples(value, what: str = "") -> int:
    """``value`` if it is a number of samples one query may draw (1 to ``MAX_POOL_SIZE``, and not
    a bool, which a JSON request may send for a number); else ``ValueError`` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_POOL_SIZE:
        said = f"must be a whole number between 1 and {MAX_POOL_SIZE}, got {value!r}"
        raise ValueError(f"{what} {said}" if what else said)
    return value


class SamplingParams(Settings):
    """How to draw one pool: ``n`` candidates per prompt (vLLM's name for it).  Each field but
    ``seed`` and ``stop`` is an option of ``ttp run`` with this help text."""

    n: int = Field(16, ge=1, le=MAX_POOL_SIZE, description="candidates per query (M, the largest N)",
                   json_schema_extra=flags("--pool-size"))
    max_tokens: int = Field(24, ge=1, le=2048, description="new tokens per candidate")
    temperature: float = Field(1.0, ge=0, description="sampling temperature of the policy")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling: the smallest set of tokens holding "
                         "this probability")
    seed: int = Field(0, description="seeds the draws")
    stop: tuple[str, ...] = ("\n",)

    def with_seed(self, seed: int) -> "SamplingParams":
        return self.model_copy(update={"seed": seed})


@dataclass(frozen=True)
class Completion:
    text: str
    logprob: float = math.nan   # sum of the sampled tokens' log-probabilities, if the backend gives it
    n_tokens: int = 0
    finish_reason: str | None = None   # "stop" or "length", where the engine says


class ContextOverflow(ValueError):
    """A prompt and its candidates do not fit the engine's context."""


# what a backend may do beyond sampling, each a method of the same name, and what it is
SCORE, HIDDEN_STATES = "score", "hidden_states"
NEXT_TOKEN_LOGPROBS, COUNT_TOKENS = "next_token_logprobs", "count_tokens"
CAPABILITIES = {
    SCORE: "score a given text (its log-probability after a prompt, teacher-forced)",
    HIDDEN_STATES: "give the final hidden state of a given text",
    NEXT_TOKEN_LOGPROBS: "give next-token log-probabilities after a given text",
    COUNT_TOKENS: "count a text's tokens",
}


class MissingCapability(TypeError):
    """A backend was asked for what it does not declare; the message names both."""


class PolicyBackend:
    """What every engine does.  ``chunk_size``: how many queries' pools the engine is best given
    at once (``sample_many``); the sampling stage hands it chunks of that size and appends each
    chunk's pools when the chunk is done.  ``capabilities``: which of ``CAPABILITIES`` it offers."""

    name: str = "policy"
    chunk_size: int = 1
    capabilities: frozenset[str] = frozenset()

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def require(self, capability: str, who: str) -> None:
        """Nothing where the backend offers ``capability``; else ``MissingCapability`` saying that
        ``who`` (a family, a scorer, an endpoint) needs it."""
        if capability not in self.capabilities:
            raise MissingCapability(f"{who} needs a backend that can {CAPABILITIES[capability]}, and the "
                                    f"{self.name} backend cannot")

    def sample(self, prompt: str, params: SamplingParams) -> list[Completion]:
        """Draw ``params.n`` independent completions of one prompt."""
        raise NotImplementedError

    def sample_many(self, prompts: list[str], params: list[SamplingParams]) -> list[list[Completion]]:
        """One pool per prompt, each with its own parameters (its seed), in the input order."""
        if len(prompts) != len(params):
            raise ValueError(f"need one SamplingParams per prompt, got {len(prompts)} prompts and {len(params)}")
        return self._draw_many(list(prompts), list(params))

    def _draw_many(self, prompts: list[str], params: list[SamplingParams]) -> list[list[Completion]]:
        """Engines that batch across prompts override this; the rest draw one pool after another."""
        return [self.sample(prompt, p) for prompt, p in zip(prompts, params)]


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text before the first stop string, stripped (engines that stop on a string may still
    return it, or a later one of several)."""
    for s in stop:
        if s and s in text:
            text = text[: text.index(s)]
    return text.strip()
