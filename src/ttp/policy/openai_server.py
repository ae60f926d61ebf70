"""A policy backend for any server speaking the OpenAI completions API: ``vllm serve``, the
llama.cpp server, text-generation-inference, hosted endpoints.

Candidates must be independent draws.  Some servers return identical samples when a request
with ``n > 1`` carries one seed, and some ignore ``n`` altogether, so a pool is asked for as
one request with ``n`` and **no** seed, and whatever is missing is topped up by single requests
that each carry a distinct seed derived from the pool's seed.  A server that refuses ``n``
above its slot count is asked for smaller ``n`` from then on (said once), and the rest of each
pool comes in further requests of that ``n``.

Every request has an overall deadline (``request_timeout``), not only a per-read timeout, so a
server that trickles bytes cannot hold a run.  429, 502, 503, 504 and dropped connections are
retried with jittered exponential backoff, honouring ``Retry-After``; other answers are
deterministic and are not retried.  Errors say whether the server was unreachable, too slow,
or refused the request.
"""
from __future__ import annotations

import asyncio
import json
import math
import random
import warnings
import zlib
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import httpx

from ttp.policy import SCORE, Completion, PolicyBackend, SamplingParams, cut_at_stop

RETRYABLE_STATUS = {408, 425, 429, 502, 503, 504}
MAX_RETRY_AFTER = 60.0


class BackendError(RuntimeError):
    """The server could not give a usable answer; finished pools on disk are unaffected."""


class _Refused(BackendError):
    """The server answered the request with a deterministic error."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        pass
    try:
        return min(max((parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds(), 0.0),
                   MAX_RETRY_AFTER)
    except (TypeError, ValueError):
        return None


def _token_logprobs(logprobs: dict | None) -> list[float | None]:
    """Each generated token's log-probability, from the completions API's ``token_logprobs``
    (OpenAI, vLLM, llama-cpp-python) or from the ``content`` list that llama.cpp's own server
    answers with."""
    logprobs = logprobs or {}
    if "token_logprobs" in logprobs:
        return logprobs["token_logprobs"] or []
    return [token.get("logprob") for token in logprobs.get("content") or []]


class OpenAICompatibleBackend(PolicyBackend):
    capabilities = frozenset({SCORE})      # where the server echoes the prompt's log-probabilities

    def __init__(self, base_url: str, model: str, api_key: str | None = None, max_concurrency: int = 8,
                 request_timeout: float = 300.0, connect_timeout: float = 10.0, retries: int = 4,
                 backoff: float = 0.5, use_n: bool = True, seed: int | None = None):
        if request_timeout <= 0:
            raise ValueError(f"request_timeout must be positive, got {request_timeout}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.retries, self.backoff, self.use_n = retries, backoff, use_n
        self.max_concurrency = self.chunk_size = max_concurrency
        self.request_timeout, self.connect_timeout = request_timeout, connect_timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_n: int | None = None     # learnt when the server refuses a larger n
        self._jitter = random.Random(seed)
        self.name = f"openai:{self.base_url}:{model}"

    def close(self) -> None:
        """Nothing to release: each pool opens and closes its own connections."""

    def _wait(self, attempt: int) -> float:
        return self.backoff * 2 ** (attempt - 1) * self._jitter.uniform(0.5, 1.5)

    async def _post(self, client: httpx.AsyncClient, body: dict) -> list[dict]:
        url = f"{self.base_url}/v1/completions"
        last, kind, pause = "no attempt made", "unreachable", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(pause or self._wait(attempt))
            pause = 0.0
            try:
                response = await asyncio.wait_for(client.post("/v1/completions", json=body), self.request_timeout)
            except (asyncio.TimeoutError, httpx.TimeoutException):
                last, kind = f"no complete answer within {self.request_timeout:g} s", "slow"
                continue
            except httpx.ConnectError as err:
                last, kind = f"cannot connect ({err})", "unreachable"
                continue
            except httpx.TransportError as err:
                last, kind = f"the connection broke ({type(err).__name__}: {err})", "unreachable"
                continue
            if response.status_code in RETRYABLE_STATUS:
                last, kind = f"HTTP {response.status_code}: {response.text[:200]}", "busy"
                pause = _retry_after(response) or 0.0
                continue
            if response.status_code != 200:
                raise _Refused(f"{url} refused the request with HTTP {response.status_code}: {response.text[:300]}")
            try:
                choices = response.json()["choices"]
                return [{"text": str(c["text"]), "logprobs": c.get("logprobs"), "finish_reason": c.get("finish_reason")}
                        for c in choices]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise BackendError(f"{url} answered something that is not a completions response "
                                   f"({type(err).__name__}: {err}); first bytes: {response.text[:200]!r}") from None
        advice = {"unreachable": "Is the server running at that address?",
                  "slow": "The server is up but too slow: raise --request-timeout or lower the load.",
                  "busy": "The server is overloaded: retry later or lower the concurrency."}[kind]
        raise BackendError(f"{url} gave no usable answer after {self.retries + 1} tries; last error: {last}. "
                           f"{advice} Rerun to resume the pools.")

    def _body(self, prompt: str, params: SamplingParams, n: int, seed: int | None) -> dict:
        body = {"model": self.model, "prompt": prompt, "n": n, "temperature": params.temperature,
                "top_p": params.top_p, "max_tokens": params.max_tokens, "stop": list(params.stop),
                "logprobs": 1}
        if seed is not None:
            body["seed"] = seed
        return body

    def _completion(self, choice: dict, stop) -> Completion:
        try:
            logprobs = _token_logprobs(choice.get("logprobs"))
            values = [float(lp) for lp in logprobs if lp is not None]
        except (AttributeError, TypeError, ValueError) as err:
            raise BackendError(f"{self.base_url} answered log-probabilities in neither the token_logprobs nor the "
                               f"content shape ({type(err).__name__}: {err}); first bytes: "
                               f"{str(choice.get('logprobs'))[:200]!r}") from None
        return Completion(cut_at_stop(choice["text"], stop),
                          float(sum(values)) if values else math.nan, len(logprobs), choice.get("finish_reason"))

    async def _batch(self, client, prompt: str, params: SamplingParams) -> list[dict]:
        """One request with ``n`` (and no seed); a refusal of a large ``n`` halves it, once said."""
        n = min(params.n, self.max_n or params.n)
        while True:
            try:
                return (await self._post(client, self._body(prompt, params, n, None)))[:n]
            except _Refused as err:
                if n == 1:
                    raise
                smaller = max(n // 2, 1)
                if self.max_n is None:
                    warnings.warn(f"{self.base_url} refused n = {n} ({err}); asking for at most {smaller} "
                                  f"candidates per request from now on", stacklevel=2)
                self.max_n, n = smaller, smaller

    async def _pool(self, client, gate: asyncio.Semaphore, prompt: str, params: SamplingParams) -> list[Completion]:
        choices = []
        if self.use_n:
            async with gate:
                choices = await self._batch(client, prompt, params)
            if 1 < len(choices) == min(params.n, self.max_n or params.n) < params.n:
                # n honoured up to a limit (llama-server's slots): the rest in requests of that many,
                # each of which evaluates the prompt once for all its candidates
                step = len(choices)

                async def group(size: int) -> list[dict]:
                    async with gate:
                        return await self._batch(client, prompt, params.model_copy(update={"n": size}))

                for extra in await asyncio.gather(*(group(min(step, params.n - k))
                                                    for k in range(step, params.n, step))):
                    choices += extra

        async def one(i: int) -> dict:
            seed = zlib.crc32(f"{params.seed}:{i}".encode())
            async with gate:
                extra = await self._post(client, self._body(prompt, params, 1, seed))
            if not extra:
                raise BackendError(f"{self.base_url} returned no choices for a completion request")
            return extra[0]

        choices += await asyncio.gather(*(one(i) for i in range(len(choices), params.n)))
        return [self._completion(c, params.stop) for c in choices]

    async def _many(self, prompts: list[str], params: list[SamplingParams]) -> list[list[Completion]]:
        """Every pool of the chunk at once, at most ``max_concurrency`` requests in flight across
        them, so the server batches several queries' candidates as it would several users'."""
        timeout = httpx.Timeout(self.request_timeout, connect=self.connect_timeout)
        limits = httpx.Limits(max_connections=self.max_concurrency)
        gate = asyncio.Semaphore(self.max_concurrency)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=timeout, limits=limits,
                                     headers=self.headers) as client:
            return list(await asyncio.gather(*(self._pool(client, gate, prompt, p)
                                               for prompt, p in zip(prompts, params))))

    def sample(self, prompt: str, params: SamplingParams) -> list[Completion]:
        return self.sample_many([prompt], [params])[0]

    def _draw_many(self, prompts: list[str], params: list[SamplingParams]) -> list[list[Completion]]:
        return asyncio.run(self._many(prompts, params))

    def _echoed(self, choice: dict, prompt: str, text: str) -> tuple[float, int]:
        """The continuation's share of an echoed prompt's log-probabilities: the tokens whose
        text starts inside it (the one token generated after it lies beyond its end)."""
        logprobs = choice.get("logprobs") or {}
        values, offsets = logprobs.get("token_logprobs"), logprobs.get("text_offset")
        if not values or not offsets or len(values) != len(offsets):
            raise BackendError(f"{self.base_url} does not return the prompt's log-probabilities (completions with "
                               f"echo and logprobs); the likelihood, pmi and judge scorers need a server that "
                               f"does, such as vLLM or the llama.cpp server started with --logits_all true")
        start, end = len(prompt), len(prompt) + len(text)
        picked = [v for v, o in zip(values, offsets) if start <= o < end]
        if any(v is None for v in picked):
            raise BackendError(f"{self.base_url} returned no log-probability for some echoed tokens")
        return float(sum(picked)), len(picked)

    async def _score(self, prompt: str, continuations: list[str]) -> list[tuple[float, int]]:
        timeout = httpx.Timeout(self.request_timeout, connect=self.connect_timeout)
        limits = httpx.Limits(max_connections=self.max_concurrency)
        gate = asyncio.Semaphore(self.max_concurrency)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=timeout, limits=limits,
                                     headers=self.headers) as client:
            async def one(text: str) -> tuple[float, int]:
                # max_tokens 1, not 0: some servers read 0 as "until the context is full"
                body = {"model": self.model, "prompt": prompt + text, "max_tokens": 1, "temperature": 0,
                        "echo": True, "logprobs": 1}
                async with gate:
                    [choice] = (await self._post(client, body))[:1]
                return self._echoed(choice, prompt, text)

            return list(await asyncio.gather(*(one(t) for t in continuations)))

    def score(self, prompt: str, continuations: list[str]) -> list[tuple[float, int]]:
        """Teacher-forced ``(sum of token log-probabilities, tokens)`` of each continuation after
        ``prompt``, from the server's echoed prompt log-probabilities (one request per
        continuation; a server with prefix caching shares the prompt's work)."""
        return asyncio.run(self._score(prompt, continuations))
